"""IP protocols: names, numbers and which have ports. The one home of these facts for the data
model's validation (`resources`), rule rendering (`felix.dataplane.rendering`), the Neutron
translation (`openstack.translation`) and reading back what iptables-save lists
(`felix.kernel.iptables_text`): no module asks the host's /etc/protocols.
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


# The names iptables-save may list a protocol by, with their numbers. iptables-save names a
# protocol number by the host's /etc/protocols (Debian's and Ubuntu's netbase, the IANA keywords
# in lower case: "-p 4" is listed as "-p ipencap") or, failing that, by xtables' built-in names;
# Felix writes the six names of IPTABLES_NAMES and numbers, and compares what it reads back by
# number (`felix.kernel.iptables_text.same_rules`). Note "ipip" here is 94, as /etc/protocols
# says, where Neutron's "ipip" (IP_PROTOCOL_NUMBERS) is 4. A name missing here (a host whose
# /etc/protocols lists more) is looked up in that file by the kernel side
# (`felix.kernel.iptables.host_protocol_number`).
LISTED_NAMES: Final[Mapping[str, int]] = {
    # netbase's /etc/protocols
    "ip": 0,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ggp": 3,
    "ipencap": 4,
    "st": 5,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "pup": 12,
    "udp": 17,
    "hmp": 20,
    "xns-idp": 22,
    "rdp": 27,
    "iso-tp4": 29,
    "dccp": 33,
    "xtp": 36,
    "ddp": 37,
    "idpr-cmtp": 38,
    "ipv6": 41,
    "ipv6-route": 43,
    "ipv6-frag": 44,
    "idrp": 45,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "skip": 57,
    "ipv6-icmp": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "rspf": 73,
    "vmtp": 81,
    "eigrp": 88,
    "ospf": 89,
    "ax.25": 93,
    "ipip": 94,
    "etherip": 97,
    "encap": 98,
    "pim": 103,
    "ipcomp": 108,
    "vrrp": 112,
    "l2tp": 115,
    "isis": 124,
    "sctp": 132,
    "fc": 133,
    "mobility-header": 135,
    "udplite": 136,
    "mpls-in-ip": 137,
    "manet": 138,
    "hip": 139,
    "shim6": 140,
    "wesp": 141,
    "rohc": 142,
    "ethernet": 143,
    # xtables' built-in names (used where /etc/protocols has none), and the IANA keyword of 4
    # that other distributions' /etc/protocols use
    "icmpv6": 58,
    "ipv6-mh": 135,
    "mh": 135,
    "ipv4": 4,
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


def listed_number(name: str) -> str:
    """The number (as text) of a protocol as iptables-save lists it, by name or number; a name
    it does not know is returned as it is."""
    if name.isascii() and name.isdigit():
        return name
    found = LISTED_NAMES.get(name)
    return name if found is None else str(found)
