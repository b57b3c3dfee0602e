"""DHCP for routed TAP interfaces (reference: openstack.md §6).

* `calico-dhcp-agent` (`calico.dhcp.agent`): watches this host's workload endpoints and the DHCP
  subnets in etcd and runs one dnsmasq that serves every local TAP through a per-network `ns-`
  interface holding the subnet gateway addresses.
* `RoutedInterfaceDriver` (`calico.dhcp.interface`): the same idea for Neutron's stock DHCP
  agent; it needs the `openstack` extra (Neutron), the rest of this package does not.

Modules: `model` (etcd values, validated), `dnsmasq` (pure: endpoints and subnets -> dnsmasq's
command line, hosts and options files), `dnsmasq_process` (running that one dnsmasq, and stopping
what an earlier run left), `keeper` (the process between the agent and dnsmasq that makes dnsmasq
die with the agent), `links` (the `ns-` devices), `agent` (the etcd syncer's listener and the
main loop) and `interface` (the stock agent's driver).
"""
