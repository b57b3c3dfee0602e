"""Rendering's configuration and the small builders every chain uses: marks, comments (only
safe characters), drops (honouring DropActionOverride). Pure. The configuration's defaults are
the parameter table's (config/params.py)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calico.common import protocols
from calico.felix.config.params import choices, default_value

Chains = dict[str, list[str]]

DROP_ACTIONS = choices("DropActionOverride")
ENDPOINT_TO_HOST_ACTIONS = choices("DefaultEndpointToHostAction")
SECURITY_DISABLED_COMMENT = "!SECURITY DISABLED! DROP overridden to ACCEPT"
DROP_LOG_PREFIX = "calico-drop: "
DEFAULT_LOG_PREFIX = "calico-packet"
RULE_LOG_LEVEL = 5  # notice, for the log action and rule log prefixes
MAX_COMMENT_LEN = 255
_COMMENT_UNSAFE_RE = re.compile(r"[^A-Za-z0-9 _.,:/()=+@!-]")
MAX_MULTIPORT_ENTRIES = 15  # kernel limit of xt_multiport; a range takes two entries
METADATA_IP = "169.254.169.254"
# ICMPv6 the host must accept from workloads: MLD (130-132), router and neighbour
# solicitation (133, 135) and neighbour advertisement (136).
ICMPV6_HOST_TYPES = (130, 131, 132, 133, 135, 136)
DHCP_PORTS = {4: (68, 67), 6: (546, 547)}  # (client sport, server dport)

# iptables-save's names for ICMP and ICMPv6
ICMP_PROTOCOL = {
    4: protocols.IPTABLES_NAMES[protocols.ICMP],
    6: protocols.IPTABLES_NAMES[protocols.ICMPV6],
}


class UnrenderableRule(ValueError):
    """A rule the kernel could not load (e.g. ports without a port protocol): fail closed."""


# --- configuration -------------------------------------------------------------------------------


def marks_from_mask(mask: int) -> tuple[int, int, int]:
    """(accept, next-tier, endpoint) marks: the mask's set bits, least significant first (§5.2)."""
    bits = [1 << i for i in range(32) if mask & (1 << i)]
    if len(bits) < 3:
        raise ValueError(f"IptablesMarkMask {mask:#x} has {len(bits)} bits set; Felix needs 3")
    return bits[0], bits[1], bits[2]


_DEFAULT_MARKS = marks_from_mask(default_value("IptablesMarkMask"))


@dataclass(frozen=True)
class RenderConfig:
    """Everything the renderer needs from Felix's configuration, already parsed. The defaults
    are the parameters' defaults (config/params.py), as `from_config` would take them."""

    interface_prefixes: tuple[str, ...] = tuple(default_value("InterfacePrefix"))
    mark_accept: int = _DEFAULT_MARKS[0]
    mark_next_tier: int = _DEFAULT_MARKS[1]
    mark_endpoint: int = _DEFAULT_MARKS[2]
    drop_action_override: str = default_value("DropActionOverride")
    default_endpoint_to_host_action: str = default_value("DefaultEndpointToHostAction")
    # An IP address; None = no metadata rules.
    metadata_addr: str | None = default_value("MetadataAddr")
    metadata_port: int = default_value("MetadataPort")
    failsafe_inbound_ports: tuple[int, ...] = tuple(default_value("FailsafeInboundHostPorts"))
    failsafe_outbound_ports: tuple[int, ...] = tuple(default_value("FailsafeOutboundHostPorts"))

    def __post_init__(self) -> None:
        if self.drop_action_override not in DROP_ACTIONS:
            raise ValueError(f"bad DropActionOverride {self.drop_action_override!r}")
        if self.default_endpoint_to_host_action not in ENDPOINT_TO_HOST_ACTIONS:
            raise ValueError(
                f"bad DefaultEndpointToHostAction {self.default_endpoint_to_host_action!r}"
            )
        if self.metadata_addr is not None:
            # A host name must be resolved by the caller; the DNAT lives in the IPv4 nat table.
            ipaddress.IPv4Address(self.metadata_addr)

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> RenderConfig:
        """From parsed parameters (config/params.py names). MetadataAddr must be an IPv4
        address or None here: a host name is resolved by the driver (driver/resolver.py)."""
        accept, next_tier, endpoint = marks_from_mask(values["IptablesMarkMask"])
        return cls(
            interface_prefixes=tuple(values["InterfacePrefix"]),
            mark_accept=accept,
            mark_next_tier=next_tier,
            mark_endpoint=endpoint,
            drop_action_override=values["DropActionOverride"],
            default_endpoint_to_host_action=values["DefaultEndpointToHostAction"],
            metadata_addr=values["MetadataAddr"],
            metadata_port=values["MetadataPort"],
            failsafe_inbound_ports=tuple(values["FailsafeInboundHostPorts"]),
            failsafe_outbound_ports=tuple(values["FailsafeOutboundHostPorts"]),
        )


def net_version(net: str) -> int:
    """4 or 6, for a canonical address or CIDR."""
    return 6 if ":" in net else 4


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- small rule builders ---------------------------------------------------------------------


def join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def comment(text: str) -> str:
    """A comment match. Comments quote IDs from the datastore, so every character outside a
    small safe set (quotes, backslashes, newlines and other control characters, non-ASCII)
    becomes "_": whatever the text, the comment stays one argument of one rule."""
    clean = _COMMENT_UNSAFE_RE.sub("_", text)[:MAX_COMMENT_LEN]
    return f'-m comment --comment "{clean}"'


def mark_is_set(mark: int) -> str:
    return f"-m mark --mark {mark:#x}/{mark:#x}"


def mark_is_clear(mark: int) -> str:
    return f"-m mark --mark 0x0/{mark:#x}"


def set_mark(mark: int) -> str:
    return f"-j MARK --set-xmark {mark:#x}/{mark:#x}"


def clear_mark(mark: int) -> str:
    return f"-j MARK --set-xmark 0x0/{mark:#x}"


def log_target(prefix: str, level: int = RULE_LOG_LEVEL) -> str:
    # iptables-save omits LOG's default level (4), so we do too.
    level_part = "" if level == 4 else f" --log-level {level}"
    return f'-j LOG --log-prefix "{prefix}"{level_part}'


def drop_rules(config: RenderConfig, match: str = "", comment_text: str | None = None) -> list[str]:
    """The rules for "drop `match`", honouring DropActionOverride (§5.6.1). Every drop Felix
    generates goes through here, so the override covers them all."""
    override = config.drop_action_override
    note = comment(comment_text) if comment_text else ""
    rules = []
    if override.startswith("LOG-"):
        rules.append(join(match, note, log_target(DROP_LOG_PREFIX, level=4)))
    if override.endswith("ACCEPT"):
        rules.append(join(match, comment(SECURITY_DISABLED_COMMENT), "-j ACCEPT"))
    else:
        rules.append(join(match, note, "-j DROP"))
    return rules
