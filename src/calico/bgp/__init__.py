"""calico-bgp: BIRD's configuration from etcd, one daemon per compute host (docs/multihost.md).

Modules: `model` (the etcd keys and values of /calico/bgp/v1 and the IP pools, validated),
`peers` (which BGP sessions this host has), `render` (the BIRD 2 configuration text), `status`
(BIRD's answers parsed, the status table) -- these four are pure; `birdctl` (BIRD's control
socket), `config_file` (the checked, atomic write), `check` (the `bird -p` helper process),
`detect` (this host's addresses), `registration`, `metrics`, `daemon` (the loop) and `cli`.
"""
