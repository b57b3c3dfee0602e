"""The Neutron side's fixed names and values, in one place, without importing Neutron.

What Calico tells Neutron about itself (the agent row, the VIF type and details, the network
types it binds), how it names what it writes (orchestrator, profile prefix, TAP names) and the
few Neutron field names and values the Neutron-free modules (translation, resync, port status)
read from port dicts. The Neutron spellings are copied so that those modules import without
Neutron; tests/unit/test_openstack_layout.py checks them against neutron_lib.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# --- What Calico is to Neutron -----------------------------------------------------------------

# The agent row the status worker keeps alive for each host with a live Felix; ML2 binds a port
# only to a host with a live agent of this type.
AGENT_TYPE_FELIX: Final = "Calico per-host agent (felix)"
AGENT_BINARY_FELIX: Final = "calico-felix"
VIF_TYPE_TAP: Final = "tap"
# port_filter: Felix enforces security groups; mac_address: the MAC Nova gives the host side.
VIF_DETAILS: Final[Mapping[str, object]] = MappingProxyType(
    {"port_filter": True, "mac_address": "00:61:fe:ed:ca:fe"}
)
# Calico routes, it bridges nothing: only segments without a VLAN or tunnel ID can be bound.
ALLOWED_NETWORK_TYPES: Final = ("local", "flat")

# --- How the driver names what it writes -------------------------------------------------------

ORCHESTRATOR: Final = "openstack"  # the orchestrator segment of every endpoint key it writes
PROFILE_PREFIX: Final = "openstack-sg-"  # profile ID = prefix + security group ID
# Nova names a VM's TAP "tap" + the first 11 characters of the Neutron port ID.
TAP_PREFIX: Final = "tap"
TAP_ID_CHARS: Final = 11
# Only these ports are VM (or container) interfaces; router, DHCP and floating-IP ports are not.
ENDPOINT_OWNER_PREFIXES: Final = ("compute:", "kuryr:container")

# --- Neutron's spellings (neutron_lib.api.definitions.portbindings, neutron_lib.constants) -----

BINDING_HOST: Final = "binding:host_id"
BINDING_VIF_TYPE: Final = "binding:vif_type"
VIF_TYPE_UNBOUND: Final = "unbound"
VIF_TYPE_BINDING_FAILED: Final = "binding_failed"
PORT_STATUS_ACTIVE: Final = "ACTIVE"
PORT_STATUS_DOWN: Final = "DOWN"
PORT_STATUS_ERROR: Final = "ERROR"
