"""The only code in Felix that touches the kernel: runs commands (iptables-restore, ipset,
conntrack, ip, sysctl), opens netlink sockets or writes /proc/sys. One module per subsystem:

* `commands`: the command runner (here, or in a named namespace for tests);
* `iptables` (+ `iptables_plan` and `iptables_text`, pure): the reconciling table driver;
* `ipsets` (+ `ipset_text`, pure parsing of ipset save/list): the set driver;
* `nft` (+ `nft_plan` and `nft_text`, pure): the nftables table driver (NFTablesMode), through
  `libnftables` (the library, or ``nft -f``); `nft_switch`: choosing and switching backends;
* `routes` (+ `ip_listing`, `conntrack`): workload routes, static ARP entries, conntrack flushes;
* `neighbours`: proxy NDP entries for workloads' IPv6 gateways;
* `sysctls`: global and per-interface kernel settings;
* `watcher`: the netlink interface watcher; `nftables`: nf_tables' ruleset generation.

Everything above this package (the dataplane manager, rendering, the calc graph) is pure and
tested without a kernel, and so are the pure text modules here; a boundary test
(tests/unit/test_boundaries.py) keeps them so.
"""
