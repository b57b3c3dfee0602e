"""`calicoctl`: the operator's tool for the v1 data model in etcd (docs/calicoctl.md).

One module per resource (`workload_endpoints`, `host_endpoints`, `profiles`, `tiers`,
`policies`, `ip_pools`, `bgp_peers`, `bgp_config`) on a shared frame: `kinds` (what a resource
kind is), `documents` (reading YAML/JSON documents), `store` (validated compare-and-swap writes),
`output` (tables, JSON, YAML). Commands: `resource_commands` (get/create/apply/replace/delete),
`felix_config` (`config get|set|unset`), `node` (`node status`), `endpoint_show`, `explain` (the
policy trace, computed with Felix's own calc graph and rule renderer), `diags`. `cli` is the
argparse front end; `docs` keeps the help text in docs/calicoctl.md in sync.
"""
