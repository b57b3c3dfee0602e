"""`calicoctl explain SRC DST`: why a flow is allowed or denied, computed with Felix's own code.

`model` (the snapshot and, per host, the calc graph's output and the host's configuration),
`chains` (the renderer's chains for one endpoint, annotated), `iptables` (an evaluator for the
rules Felix writes), `trace` (one leg through one endpoint's chains, read back as tiers,
policies, profiles and rules), `flow` (finding SRC and DST, the packet, the legs), `report`
(text and JSON), `command` (the CLI glue).
"""
