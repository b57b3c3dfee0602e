"""A small iptables evaluator for the rules Felix renders, so that `explain` decides each match
exactly as the kernel does with exactly the text Felix programs.

It understands the matches and targets Felix's renderer writes into the per-endpoint, policy and
profile chains (`-s -d -p` with `!`, `-m mark|comment|set|multiport|icmp|icmp6|iprange|mac|
conntrack`, `-j MARK --set-xmark|RETURN|DROP|ACCEPT|LOG|NOTRACK|<chain>`, `-g <chain>`) and
refuses anything else (`Unsupported`): a rule it cannot read is never guessed at. Marks behave
as in the kernel: `--set-xmark V/M` clears M then XORs V; `--mark V/M` tests `mark & M == V`.

`Machine.run` walks a chain with jumps and gotos and records every rule it tries (`Event`),
matched or not, with the first match that failed, for the report.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from calico.common import protocols

ACCEPT, DROP, RETURN = "ACCEPT", "DROP", "RETURN"
ICMP_MODULES = {"icmp": (4, protocols.ICMP), "icmp6": (6, protocols.ICMPV6)}
MAX_DEPTH = 64


class Unsupported(ValueError):
    """A rule this evaluator does not understand (a bug: explain refuses to guess)."""


class NeedsField(ValueError):
    """The verdict depends on a packet field that was not given (e.g. the source port)."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"the verdict depends on the {field_name}, which was not given")
        self.field_name = field_name
        self.rule = rule


@dataclass(frozen=True)
class Packet:
    """The first packet of a flow, as a rule sees it."""

    ip_version: int
    protocol: int  # IP protocol number
    src: str
    dst: str
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    src_mac: str | None = None  # None: whatever MAC the rule wants (not checked)


@dataclass
class Event:
    """One rule tried: `matched`, the target taken if it did, or the first failed match."""

    chain: str
    index: int
    matched: bool
    target: str | None = None
    failed: str | None = None
    log_prefix: str | None = None


@dataclass
class Machine:
    """The chains of one table as lists of rule texts, the IP sets by kernel name, a packet."""

    chains: Mapping[str, Sequence[str]]
    ipsets: Mapping[str, frozenset[str]]
    packet: Packet
    set_labels: Mapping[str, str] = field(default_factory=dict)  # kernel name -> "tag web"
    mark: int = 0
    events: list[Event] = field(default_factory=list)

    def run(self, chain: str, depth: int = 0) -> str:
        """ACCEPT, DROP or RETURN (the chain returned or fell off its end)."""
        if depth > MAX_DEPTH:
            raise Unsupported(f"chains nested more than {MAX_DEPTH} deep at {chain}")
        if chain not in self.chains:
            raise Unsupported(f"jump to unknown chain {chain}")
        for index, text in enumerate(self.chains[chain]):
            rule = parse_rule(text)
            failed = self._first_failed(rule.matches)
            event = Event(chain, index, failed is None, failed=failed)
            self.events.append(event)
            if failed is not None:
                continue
            event.target = rule.target
            outcome = self._target(rule, depth)
            if rule.target == "LOG":
                event.log_prefix = rule.options.get("--log-prefix")
            if outcome is not None:
                return outcome
        return RETURN

    def _target(self, rule: Rule, depth: int) -> str | None:
        """The chain's outcome if the target ends it, else None (go on)."""
        target = rule.target
        if target in (ACCEPT, DROP):
            return target
        if target == RETURN:
            return RETURN
        if target == "MARK":
            value, mask = _value_mask(rule.options["--set-xmark"])
            self.mark = (self.mark & ~mask) ^ value
            return None
        if target in ("LOG", "NOTRACK"):
            return None
        if target is None:
            return None
        outcome = self.run(target, depth + 1)
        if rule.goto:
            return outcome  # back to this chain's caller, whatever the outcome
        return outcome if outcome in (ACCEPT, DROP) else None

    def _first_failed(self, matches: Sequence[Match]) -> str | None:
        """None if every match holds, else what made the first one fail (a fact about the
        packet, e.g. "destination port 81 is not in 80")."""
        for match in matches:
            ok, subject, relation = self._evaluate(match)
            if ok == match.negated:
                return f"{subject} is {relation}" if ok else f"{subject} is not {relation}"
        return None

    def _evaluate(self, match: Match) -> tuple[bool, str, str]:
        """Whether the match holds before negation, as (result, subject, relation)."""
        p, option, args = self.packet, match.option, match.args
        if option in ("-s", "-d"):
            addr = p.src if option == "-s" else p.dst
            side = "source" if option == "-s" else "destination"
            return _in_net(addr, args[0]), f"{side} {addr}", f"in {args[0]}"
        if option == "-p":
            wanted = protocols.number(args[0])
            if wanted is None:
                raise Unsupported(f"unknown protocol {args[0]}")
            return p.protocol == wanted, f"protocol {_proto_name(p.protocol)}", args[0]
        if option == "--mark":
            value, mask = _value_mask(args[0])
            return self.mark & mask == value, f"mark {self.mark:#x}", f"{args[0]}"
        if option == "--comment":
            return True, "comment", "present"
        if option == "--match-set":
            name, side = args
            addr = p.src if side == "src" else p.dst
            if name not in self.ipsets:
                raise Unsupported(f"unknown IP set {name}")
            who = "source" if side == "src" else "destination"
            label = self.set_labels.get(name, f"IP set {name}")
            return addr in self.ipsets[name], f"{who} {addr}", f"in {label}"
        if option in ("--sports", "--dports"):
            port = p.src_port if option == "--sports" else p.dst_port
            which = "source port" if option == "--sports" else "destination port"
            if port is None:
                raise NeedsField(which, args[0])
            return _in_ports(port, args[0]), f"{which} {port}", f"in {args[0]}"
        if option in ("--icmp-type", "--icmpv6-type"):
            return self._icmp(match)
        if option in ("--src-range", "--dst-range"):
            addr = p.src if option == "--src-range" else p.dst
            lo, hi = (int(ipaddress.ip_address(a)) for a in args[0].split("-"))
            ip = ipaddress.ip_address(addr)
            family = ipaddress.ip_address(args[0].split("-")[0]).version
            ok = ip.version == family and lo <= int(ip) <= hi
            side = "source" if option == "--src-range" else "destination"
            return ok, f"{side} {addr}", f"in {args[0]}"
        if option == "--mac-source":
            mac = p.src_mac
            return mac is None or mac.lower() == args[0].lower(), "source MAC", args[0]
        if option == "--ctstate":
            return "NEW" in args[0].split(","), "connection state NEW", f"in {args[0]}"
        raise Unsupported(f"unknown match option {option}")

    def _icmp(self, match: Match) -> tuple[bool, str, str]:
        p = self.packet
        version, number = ICMP_MODULES[match.module]
        if p.protocol != number or p.ip_version != version:
            return False, "the packet", match.module  # the module matches ICMP packets only
        type_text, _, code_text = match.args[0].partition("/")
        if p.icmp_type is None:
            raise NeedsField("ICMP type", match.args[0])
        if code_text and p.icmp_code is None:
            raise NeedsField("ICMP code", match.args[0])
        ok = p.icmp_type == int(type_text) and (not code_text or p.icmp_code == int(code_text))
        shown = f"{p.icmp_type}" if not code_text else f"{p.icmp_type}/{p.icmp_code}"
        return ok, f"ICMP type {shown}", match.args[0]


@dataclass(frozen=True)
class Match:
    module: str  # "" for the basic matches
    option: str
    args: tuple[str, ...]
    negated: bool


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    target: str | None
    goto: bool
    options: dict[str, str]


_BASIC = {"-s": "-s", "-d": "-d", "-p": "-p", "--source": "-s", "--destination": "-d"}
_ARITY = {"--match-set": 2}
_MODULES = {
    "mark",
    "comment",
    "set",
    "multiport",
    "icmp",
    "icmp6",
    "iprange",
    "mac",
    "conntrack",
}


def parse_rule(text: str) -> Rule:
    """One rule's matches and target; Unsupported for anything Felix does not write."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise Unsupported(f"unreadable rule {text!r}: {e}") from None
    matches: list[Match] = []
    module = ""
    negate = False
    i = 0
    while i < len(words):
        word = words[i]
        if word == "!":
            negate = True
            i += 1
            continue
        if word in _BASIC:
            matches.append(Match("", _BASIC[word], (words[i + 1],), negate))
            module, negate, i = "", False, i + 2
        elif word == "-m":
            module = words[i + 1]
            if module not in _MODULES:
                raise Unsupported(f"unknown match module {module} in {text!r}")
            i += 2
        elif word.startswith("--") and module:
            n = _ARITY.get(word, 1)
            matches.append(Match(module, word, tuple(words[i + 1 : i + 1 + n]), negate))
            negate, i = False, i + 1 + n
        elif word in ("-j", "-g"):
            target = words[i + 1]
            options = _target_options(words[i + 2 :], text)
            return Rule(tuple(matches), target, word == "-g", options)
        else:
            raise Unsupported(f"unknown option {word} in {text!r}")
    return Rule(tuple(matches), None, False, {})


def _target_options(words: Sequence[str], text: str) -> dict[str, str]:
    if len(words) % 2:
        raise Unsupported(f"unreadable target options in {text!r}")
    return {words[i]: words[i + 1] for i in range(0, len(words), 2)}


def _value_mask(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask or "0xffffffff", 0)


def _in_net(addr: str, net: str) -> bool:
    ip = ipaddress.ip_address(addr)
    network = ipaddress.ip_network(net, strict=False)
    return ip.version == network.version and ip in network


def _in_ports(port: int, listed: str) -> bool:
    for entry in listed.split(","):
        lo, _, hi = entry.partition(":")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


def _proto_name(number: int) -> str:
    return protocols.IPTABLES_NAMES.get(number, str(number))
