"""IP protocols: names, numbers and which have ports. The one home of these facts for the data
model's validation (`resources`), rule rendering (`felix.dataplane.rendering`) and the Neutron
translation (`openstack.translation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Every protocol name the project accepts anywhere, with its IANA number. These are Neutron's
# names (neutron_lib.constants.IP_PROTOCOL_MAP; a unit test checks that the two agree), which
# include Felix's own six.
IP_PROTOCOL_NUMBERS: Final[Mapping[str, int]] = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ip": 0,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "sctp": 132,
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "vrrp": 112,
}

ICMP: Final = 1
ICMPV6: Final = 58

# The names a Felix rule may use for `protocol` (felix.md §2.6); any other protocol is given by
# its number, 1-255.
FELIX_PROTOCOL_NAMES: Final[Mapping[int, str]] = {
    6: "tcp",
    17: "udp",
    1: "icmp",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
}

# Protocols with ports (what xt_multiport and Neutron's SG_PORT_PROTO_NUMS accept): tcp, udp,
# udplite, sctp and dccp.
PORT_PROTOCOL_NUMBERS: Final = frozenset({6, 17, 136, 132, 33})

# How iptables-save lists a protocol, whatever /etc/protocols says (xtables' built-in names);
# a protocol without one is listed by number.
IPTABLES_NAMES: Final[Mapping[int, str]] = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    58: "ipv6-icmp",
    132: "sctp",
    136: "udplite",
}


def number(protocol: str) -> int | None:
    """The number of a protocol given by name or decimal text; None if it is neither."""
    if protocol.isascii() and protocol.isdigit():
        return int(protocol)
    return IP_PROTOCOL_NUMBERS.get(protocol)


def has_ports(protocol: str) -> bool:
    """Whether a protocol (name or number text) carries ports."""
    return number(protocol) in PORT_PROTOCOL_NUMBERS


def iptables_name(protocol: str) -> str:
    """How iptables-save spells a protocol given by Felix name or number text."""
    found = number(protocol)
    if found is None:
        return protocol
    return IPTABLES_NAMES.get(found, str(found))
