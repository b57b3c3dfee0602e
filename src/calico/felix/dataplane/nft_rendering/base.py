"""What the nftables rendering produces (chains, sets and maps of one table) and the small
builders every chain uses: marks, comments (only safe characters), drops (honouring
DropActionOverride). Pure.

Every rule is one line of ``nft`` input without its ``add rule inet felix <chain>`` head. The
kernel driver (`calico.felix.kernel.nft`) adds a hash of the rule to its comment, which is how it
recognises its own rules when it reads the kernel back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from calico.felix.dataplane.rendering.base import (
    DEFAULT_LOG_PREFIX,
    DROP_LOG_PREFIX,
    SECURITY_DISABLED_COMMENT,
    RenderConfig,
)

TABLE = "felix"
FAMILY = "inet"
# Rule comments: at most 128 characters in all (nft's limit); the driver puts a 13-character
# hash and a space in front of what the renderer writes.
MAX_COMMENT_LEN = 100
_COMMENT_UNSAFE_RE = re.compile(r"[^A-Za-z0-9 _.,:/()=+@!-]")
# nft 1.0.6's identifiers: a letter, "_" or "." first, then letters, digits and "/\_.-". We never
# use a backslash; Felix's names also start with "felix-" (no keyword, no number).
NAME_RE = re.compile(r"felix-[A-Za-z0-9/_.-]{1,249}")
RULE_LOG_LEVEL = "notice"  # iptables' --log-level 5
DROP_LOG_LEVEL = "warn"  # iptables' LOG default (4), which the iptables rendering uses for drops
LOG_PREFIX = DEFAULT_LOG_PREFIX


@dataclass(frozen=True)
class BaseChain:
    """A base chain's hook: always ``policy accept`` (Felix's drops are rules)."""

    type: str  # "filter" or "nat"
    hook: str  # "prerouting", "input", "forward", "output", "postrouting"
    priority: int

    def declaration(self) -> str:
        return f"{{ type {self.type} hook {self.hook} priority {self.priority}; policy accept; }}"


@dataclass(frozen=True)
class Chain:
    rules: tuple[str, ...]
    base: BaseChain | None = None


@dataclass(frozen=True)
class SetSpec:
    """A named set (``map`` None) or map of the table."""

    type: str  # "ipv4_addr", "ipv6_addr", "ifname"
    map: str | None = None  # "verdict" for a verdict map
    interval: bool = False

    def declaration(self) -> str:
        kind = f"{self.type} : {self.map}" if self.map else self.type
        flags = " flags interval;" if self.interval else ""
        return f"{{ type {kind};{flags} }}"

    @property
    def keyword(self) -> str:
        return "map" if self.map else "set"


@dataclass
class Rendered:
    """Chains and sets (with their elements, as nft writes them) that one owner wants."""

    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, tuple[SetSpec, frozenset[str]]] = field(default_factory=dict)

    def update(self, other: Rendered) -> None:
        self.chains.update(other.chains)
        self.sets.update(other.sets)


ADDR_SET = {4: SetSpec("ipv4_addr"), 6: SetSpec("ipv6_addr")}
NET_SET = SetSpec("ipv4_addr", interval=True)
VERDICT_MAP = SetSpec("ifname", map="verdict")
FAMILY_MATCH = {4: "meta nfproto ipv4", 6: "meta nfproto ipv6"}
ADDR_KEYWORD = {4: "ip", 6: "ip6"}


def check_name(name: str) -> str:
    """`name` if nft reads it as one identifier that Felix owns; else ValueError."""
    if NAME_RE.fullmatch(name) is None:
        raise ValueError(f"not a usable nftables name: {name[:64]!r}")
    return name


# --- small rule builders -------------------------------------------------------------------------


def join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def comment(text: str) -> str:
    """A comment statement; everything outside a small safe set becomes "_" (so no quote,
    backslash, semicolon, hash or newline ever reaches nft from an ID)."""
    clean = _COMMENT_UNSAFE_RE.sub("_", text)[:MAX_COMMENT_LEN]
    return f'comment "{clean}"'


def mark_is_set(mark: int) -> str:
    return f"meta mark & {mark:#010x} == {mark:#010x}"


def mark_is_clear(mark: int) -> str:
    return f"meta mark & {mark:#010x} == 0x00000000"


def set_mark(mark: int) -> str:
    return f"meta mark set meta mark | {mark:#010x}"


def clear_mark(mark: int) -> str:
    return f"meta mark set meta mark & {~mark & 0xFFFFFFFF:#010x}"


def log(prefix: str, level: str = RULE_LOG_LEVEL) -> str:
    # Log prefixes are validated to [a-zA-Z0-9_:-] (resources.checks); the default is ours.
    return f'log prefix "{prefix}" level {level}'


def drop_rules(config: RenderConfig, match: str = "", comment_text: str | None = None) -> list[str]:
    """The rule for "drop `match`", honouring DropActionOverride (§5.6.1): every drop Felix
    generates goes through here. The LOG- forms log and decide in one rule."""
    override = config.drop_action_override
    logged = log(DROP_LOG_PREFIX, DROP_LOG_LEVEL) if override.startswith("LOG-") else ""
    if override.endswith("ACCEPT"):
        return [join(match, logged, "accept", comment(SECURITY_DISABLED_COMMENT))]
    note = comment(comment_text) if comment_text else ""
    return [join(match, logged, "drop", note)]
