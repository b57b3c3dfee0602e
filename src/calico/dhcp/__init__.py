"""DHCP for routed TAP interfaces (reference: openstack.md §6).

* `calico-dhcp-agent` (`calico.dhcp.agent`): watches this host's workload endpoints and the DHCP
  subnets in etcd and runs one dnsmasq that serves every local TAP through a per-network `ns-`
  interface holding the subnet gateway addresses.
* `RoutedInterfaceDriver` (`calico.dhcp.interface`): the same idea for Neutron's stock DHCP
  agent; it needs the `openstack` extra (Neutron), the rest of this package does not.

The pure part (etcd values -> dnsmasq command line, hosts and options files) is in
`calico.dhcp.model` and `calico.dhcp.dnsmasq`.
"""
