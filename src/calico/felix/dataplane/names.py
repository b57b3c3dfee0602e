"""Every name Felix gives to a kernel object (felix.md §5.1, §5.7). The one home for them.

Felix owns every iptables chain and ipset whose name starts with ``felix-``: it rewrites them
whole, and after a restart it sweeps the ones it no longer wants. Anything else in the kernel is
the host's, and Felix only ever inserts single jump rules into the kernel's built-in chains.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final

PREFIX: Final = "felix-"

# Kernel limits: iptables chain names are at most 28 characters, ipset names at most 31.
MAX_CHAIN_NAME_LEN: Final = 28
MAX_IPSET_NAME_LEN: Final = 31

# --- Tables ----------------------------------------------------------------------------------
FILTER: Final = "filter"
NAT: Final = "nat"
RAW: Final = "raw"

# --- Top-level chains (hooked from the kernel's built-in chains) ---------------------------------
CHAIN_INPUT: Final = "felix-INPUT"
CHAIN_OUTPUT: Final = "felix-OUTPUT"
CHAIN_FORWARD: Final = "felix-FORWARD"
CHAIN_PREROUTING: Final = "felix-PREROUTING"
CHAIN_POSTROUTING: Final = "felix-POSTROUTING"

# --- Filter-table helpers ----------------------------------------------------------------------
CHAIN_FAILSAFE_IN: Final = "felix-FAILSAFE-IN"
CHAIN_FAILSAFE_OUT: Final = "felix-FAILSAFE-OUT"
CHAIN_FROM_ENDPOINT: Final = "felix-FROM-ENDPOINT"
CHAIN_TO_ENDPOINT: Final = "felix-TO-ENDPOINT"
CHAIN_FROM_HOST_IF: Final = "felix-FROM-HOST-IF"
CHAIN_TO_HOST_IF: Final = "felix-TO-HOST-IF"
CHAIN_FROM_EP_LEAF_PREFIX: Final = "felix-FROM-EP-PFX-"
CHAIN_TO_EP_LEAF_PREFIX: Final = "felix-TO-EP-PFX-"
CHAIN_FROM_IF_LEAF_PREFIX: Final = "felix-FROM-IF-PFX-"
CHAIN_TO_IF_LEAF_PREFIX: Final = "felix-TO-IF-PFX-"

# --- NAT and raw ---------------------------------------------------------------------------------
CHAIN_FIP_DNAT: Final = "felix-FIP-DNAT"
CHAIN_FIP_SNAT: Final = "felix-FIP-SNAT"
CHAIN_RPFILTER: Final = "felix-RPFILTER"

# Where each top-level chain is hooked: (table, kernel chain) -> Felix chain. Felix inserts one
# jump at position 1 of each kernel chain and nothing else.
HOOKS: Final[dict[tuple[str, str], str]] = {
    (FILTER, "INPUT"): CHAIN_INPUT,
    (FILTER, "OUTPUT"): CHAIN_OUTPUT,
    (FILTER, "FORWARD"): CHAIN_FORWARD,
    (NAT, "PREROUTING"): CHAIN_PREROUTING,
    (NAT, "POSTROUTING"): CHAIN_POSTROUTING,
    (NAT, "OUTPUT"): CHAIN_OUTPUT,
    (RAW, "PREROUTING"): CHAIN_PREROUTING,
    (RAW, "OUTPUT"): CHAIN_OUTPUT,
}

# --- Ipsets ------------------------------------------------------------------------------------
IPSET_ALL_POOLS: Final = "felix-all-ipam-pools"
IPSET_MASQ_POOLS: Final = "felix-masq-ipam-pools"


# Interface names Felix writes into rules (``-i``, ``-o``, chain names). The kernel allows far
# more (anything but "/", ":", blanks and NUL), but a quote would break the rule and a "+" is
# iptables' wildcard. Host interfaces are named by the kernel; VLANs need the ".".
_USABLE_INTERFACE_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]{1,15}")
INTERFACE_NAME_RULE: Final = "1-15 characters of [a-zA-Z0-9_.-]"


def usable_interface_name(name: str) -> bool:
    return _USABLE_INTERFACE_NAME_RE.fullmatch(name) is not None


def check_interface_name(name: str) -> str:
    """`name`, if usable in a rule; else ValueError (the caller filters first: this is the
    renderer's last check)."""
    if not usable_interface_name(name):
        raise ValueError(f"unusable interface name {name[:32]!r} (need {INTERFACE_NAME_RULE})")
    return name


def uniquely_shorten(text: str, length: int) -> str:
    """`text` if it fits in `length` characters, else ``_`` + a hash prefix of the right length.

    A name of exactly `length` characters starting with ``_`` is hashed too, so a shortened name
    can never collide with a name that was short enough to keep.
    """
    if len(text) < length or (len(text) == length and not text.startswith("_")):
        return text
    digest = hashlib.sha256(f"{length} {text}".encode()).hexdigest()
    return "_" + digest[: length - 1]


def endpoint_suffix(interface: str, prefixes: tuple[str, ...]) -> str:
    """The per-endpoint chain suffix: the interface name without its workload prefix (longest
    matching prefix in reverse lexicographic order), shortened to 16 characters."""
    for prefix in sorted(prefixes, reverse=True):
        if interface.startswith(prefix):
            interface = interface[len(prefix) :]
            break
    return uniquely_shorten(interface, 16)


# Every endpoint's chains are named by the dispatch trees and the endpoint's own rendering.
# Bounded: TAP names are unique per port, so a host with churn would otherwise keep every name
# it ever saw.
@functools.lru_cache(maxsize=8192)
def endpoint_chain(direction: str, interface: str, prefixes: tuple[str, ...]) -> str:
    """``felix-to-<suffix>`` or ``felix-from-<suffix>``; `direction` is "to" or "from"."""
    assert direction in ("to", "from")
    check_interface_name(interface)
    return f"{PREFIX}{direction}-{endpoint_suffix(interface, prefixes)}"


def profile_chain(profile_id: str, inbound: bool) -> str:
    """``felix-p-<id>-i`` / ``-o`` for a profile."""
    return f"{PREFIX}p-{uniquely_shorten(profile_id, 16)}-{'i' if inbound else 'o'}"


def policy_chain(tier: str, policy: str, inbound: bool) -> str:
    """``felix-p-<tier/policy>-i`` / ``-o`` for a policy (the ID is shortened with the tier)."""
    return profile_chain(f"{tier}/{policy}", inbound)


def ipset_name(set_id: str, ip_version: int) -> str:
    """The kernel name of a calc-graph IP set (tag ``t:`` / selector ``s:`` ID) for one family."""
    return f"{PREFIX}v{ip_version}-{uniquely_shorten(set_id, 16)}"


def ipset_temp_name(set_id: str, ip_version: int) -> str:
    """The temporary set used to replace `ipset_name(set_id, ip_version)` atomically (swap)."""
    return f"{PREFIX}tmp-v{ip_version}-{uniquely_shorten(set_id, 16)}"


def is_felix_name(name: str) -> bool:
    return name.startswith(PREFIX)


def named_ipset_temp_name(name: str) -> str:
    """The temporary set used to replace a fixed-name set (e.g. IPSET_ALL_POOLS) by swap."""
    temp = f"{name}-tmp"
    assert len(temp) <= MAX_IPSET_NAME_LEN, temp
    return temp


def ipset_sweep_prefixes(ip_version: int) -> tuple[str, str]:
    """Prefixes of the calc-graph sets (main and temp) of one family, for startup cleanup."""
    return f"{PREFIX}v{ip_version}-", f"{PREFIX}tmp-v{ip_version}-"


def dispatch_leaf_chain(leaf_prefix: str, char: str) -> str:
    """A dispatch leaf chain, e.g. ``felix-FROM-EP-PFX-a``: `leaf_prefix` is one of the
    ``CHAIN_*_LEAF_PREFIX`` constants, `char` the interface-name character the leaf covers."""
    assert len(char) == 1, char
    return f"{leaf_prefix}{char}"


def host_endpoint_chain(direction: str, interface: str) -> str:
    """``felix-to-<iface>`` / ``felix-from-<iface>`` for a host endpoint (no prefix to strip)."""
    return endpoint_chain(direction, interface, ())
