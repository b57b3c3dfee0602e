"""Pure text handling for iptables (no I/O): the tools' names, the restore transaction's text
(`Plan`), tokenising rules as iptables-restore does,
splitting and parsing ``iptables-save`` output, the targets of a rule spec, the safety check every
rule passes before it is written, and the comparison that tells another spelling of our rules
from someone else's edit. The driver that runs the commands is `calico.felix.kernel.iptables`.
"""

from __future__ import annotations

import io
import itertools
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from calico.common import protocols
from calico.felix.dataplane import names

Rule = tuple[str, ...]  # one rule as shlex tokens, without "-A <chain>"
Spec = str  # one rule as iptables-save prints it (or as asked for), without "-A <chain> "

# The kernel's built-in chains (all tables), in the order iptables-save prints them: the only
# non-Felix chains Felix puts rules in.
BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
BUILTIN_CHAINS = frozenset(BUILTIN_ORDER)
JUMP_FLAGS = frozenset({"-j", "--jump", "-g", "--goto"})
BACKENDS = (None, "nft", "legacy")  # the default iptables, or iptables-nft / -legacy

# "Error occurred at line: 7" (parse errors), "iptables-restore: line 7 failed" (legacy commit
# errors) or "line 7: RULE_INSERT failed (...)" (nft kernel errors).
# One token without backslashes or single quotes: non-blanks and "quoted strings", adjacent.
_TOKEN_RE = re.compile(r'(?:[^ \t\r\n"]+|"[^"]*")+')  # shlex's blanks
# What no rule may contain: anything but printable ASCII (a newline would end the rule and start
# another line of restore input), backslashes and single quotes (iptables-restore and shlex
# disagree about them). Double quotes must pair up.
_UNSAFE_RULE_CHAR_RE = re.compile(r"[^\x20-\x7e]|[\\']")
_QUOTED_RE = re.compile(r'"[^"]*"')
_ERROR_LINE_RE = re.compile(r"Error occurred at line: (\d+)|\bline (\d+)(?: failed|:)")


def tokens(rule: str) -> Rule:
    """A rule's shell-like tokens, exactly as ``shlex.split`` gives them.

    shlex is about 20x slower than the fast paths and a table holds tens of thousands of rules,
    so it is used only for single quotes and backslashes, which iptables-save and the renderer
    never print. Without them, the only quoting is double quotes (``--comment "a b"``), and a
    token is a run of non-blanks and double-quoted strings with the quotes removed.

    Tokens are interned: a table's 124,000 rules (1,000 endpoints) are about 1.9 million
    tokens but only tens of thousands of distinct ones ("-m", "set", "--match-set", set and
    chain names), and the driver keeps every rule's tokens."""
    if "'" in rule or "\\" in rule:
        return tuple(map(sys.intern, shlex.split(rule)))
    if '"' not in rule:
        return tuple(map(sys.intern, rule.split()))  # (splits on rarer blanks too, e.g. \f)
    if rule.count('"') % 2:
        raise ValueError("No closing quotation")  # what shlex says
    return tuple(sys.intern(token.replace('"', "")) for token in _TOKEN_RE.findall(rule))


def unsafe_rule(rule: str) -> str | None:
    """Why `rule` is not safe as one line of ``iptables-restore`` input, or None if it is.

    The renderer escapes and validates everything it writes; this is the last check before the
    kernel, so that a renderer bug can never let one rule's text become several."""
    bad = _UNSAFE_RULE_CHAR_RE.search(rule)
    if bad is not None:
        return f"character {bad.group()!r} at offset {bad.start()}"
    if rule.count('"') % 2:
        return "unbalanced double quote"
    if rule.lstrip().startswith(("*", ":", "COMMIT", "#")) or not rule.strip():
        return "not a rule"
    return None


# Matches iptables-save adds by itself: "-p tcp --dport 22" is listed as "-p tcp -m tcp --dport 22".
_IMPLICIT_MATCHES = frozenset({"tcp", "udp", "udplite", "sctp", "dccp", "icmp", "icmp6"})


ProtocolNumber = Callable[[str], str]


def _canonical_tokens(
    rule: Rule, protocol_number: ProtocolNumber = protocols.listed_number
) -> Counter[str]:
    """A rule's tokens as a multiset, without the spelling differences iptables-save makes: the
    implicit protocol match, "/32" or "/128" on a single address, and a protocol's name (its
    number, by `protocol_number`)."""
    out: Counter[str] = Counter()
    skip = False
    previous = ""
    for word, following in itertools.zip_longest(rule, rule[1:]):
        if skip:
            skip = False
        elif word == "-m" and following in _IMPLICIT_MATCHES:
            skip = True
        elif previous in ("-p", "--protocol"):
            out[protocol_number(word)] += 1  # "-p 4" is listed as "-p ipencap"
        else:
            out[word.removesuffix("/32").removesuffix("/128")] += 1
        previous = word
    return out


def same_rules(
    ours: Sequence[Rule],
    printed: Sequence[Rule],
    protocol_number: ProtocolNumber = protocols.listed_number,
) -> bool:
    """Whether `printed` (what iptables-save listed) is only another spelling of `ours`: as many
    rules, each with the same tokens up to the differences iptables-save makes and the order of
    its matches. Never true for a rule more or less, or any other token. `protocol_number`:
    a protocol's number as text, given its name or number (the kernel side adds the host's
    /etc/protocols to the built-in table)."""
    if len(ours) != len(printed):
        return False
    pairs = zip(ours, printed, strict=True)
    return all(
        _canonical_tokens(a, protocol_number) == _canonical_tokens(b, protocol_number)
        for a, b in pairs
    )


def targets(rule: Sequence[str]) -> Iterator[str]:
    """The chains/targets a rule jumps or goes to (``-j X``, ``-g X``)."""
    for flag, value in itertools.pairwise(rule):
        if flag in JUMP_FLAGS:
            yield value


def spec_targets(spec: Spec) -> Iterator[str]:
    """The targets of one rule spec. Without single quotes or backslashes (which the renderer
    never writes), blanks split it as tokens would once each double-quoted string (a comment,
    in half the rules) is blanked out, and that is far faster than tokenising."""
    if "'" in spec or "\\" in spec:
        return targets(split_host_line(spec))
    if '"' in spec:
        spec = _QUOTED_RE.sub('""', spec)
    return targets(spec.split())


def is_hook_spec(spec: Spec, felix_chain: str | None = None) -> bool:
    """`is_hook_rule` of a rule spec."""
    return is_hook_rule(split_host_line(spec), felix_chain)


def is_hook_rule(rule: Rule, felix_chain: str | None = None) -> bool:
    """A plain, unconditional jump to a Felix chain: the only shape Felix puts in other chains."""
    if len(rule) != 2 or rule[0] not in ("-j", "--jump"):
        return False
    return rule[1] == felix_chain if felix_chain else names.is_felix_name(rule[1])


def parse_save(text: str, table: str) -> dict[str, list[Rule]]:
    """Chains of `table` in iptables-save output, each with its rules in order, tokenised."""
    return {
        chain: [split_host_line(line)[2:] for line in lines]
        for chain, lines in split_save(text, table).items()
    }


def save_specs(
    text: str | Iterable[str],
    table: str,
    finish: Callable[[str, list[Spec]], Sequence[Spec]] | None = None,
) -> dict[str, Sequence[Spec]]:
    """Chains of `table` in iptables-save output, each with its rules as printed, without the
    ``-A <chain>`` (no tokenising: a table's rules compare as text first).

    `finish` is given each chain's rules as soon as they are read (iptables-save prints a
    chain's rules together) and what it returns is kept instead: the driver keeps its own tuple
    for a chain that reads as expected, so a big table is never all held as new strings (50 MB
    at 1,000 endpoints, where the driver's peak memory is a refresh)."""
    chains: dict[str, Sequence[Spec]] = {}
    current: str | None = None
    specs: list[Spec] = []
    for chain, line in _table_lines(text, table):
        if line is None:
            chains.setdefault(chain, [])
            continue
        if chain != current:
            _finish(chains, current, specs, finish)
            current, specs = chain, []
        parts = line.split(None, 2)
        specs.append(parts[2] if len(parts) > 2 else "")  # ("-A X": no match, no target)
    _finish(chains, current, specs, finish)
    return chains


def _finish(
    chains: dict[str, Sequence[Spec]],
    chain: str | None,
    specs: list[Spec],
    finish: Callable[[str, list[Spec]], Sequence[Spec]] | None,
) -> None:
    if chain is None:
        return
    earlier = chains.get(chain)
    if earlier:  # (the chain's rules were not all together: all of them, in order)
        specs = [*earlier, *specs]
    chains[chain] = finish(chain, specs) if finish is not None else specs


def split_save(text: str, table: str) -> dict[str, list[str]]:
    """Chains of `table` in iptables-save output, each with its ``-A`` lines as printed."""
    chains: dict[str, list[str]] = {}
    for chain, line in _table_lines(text, table):
        lines = chains.setdefault(chain, [])
        if line is not None:
            lines.append(line)
    return chains


def _table_lines(text: str | Iterable[str], table: str) -> Iterator[tuple[str, str | None]]:
    """(chain, its ``-A`` line) for each rule of `table` in iptables-save output (a text, or its
    lines), and (chain, None) for each chain it declares; a line at a time (a big table's lines
    are never all held at once), finding each line's chain without tokenising it."""
    in_table = False
    for raw in io.StringIO(text) if isinstance(text, str) else text:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_table = line[1:] == table
        elif not in_table:
            continue
        elif line == "COMMIT":
            in_table = False
        elif line.startswith(":"):
            yield line[1:].split()[0], None
        elif line.startswith("-A "):
            # Chain names never contain blanks or quotes, so the second word is the chain.
            yield line.split(None, 2)[1], line


def split_host_line(line: str) -> Rule:
    # Host rules may hold quoting shlex rejects; we only need their targets, so fall back.
    try:
        return tokens(line)
    except ValueError:
        return tuple(line.split())


def failed_line(stderr: str, text: str) -> str | None:
    """The input line restore's error message points at, if it names one."""
    match = _ERROR_LINE_RE.search(stderr)
    if not match:
        return None
    number = int(match.group(1) or match.group(2))
    lines = text.splitlines()
    return lines[number - 1].strip() if 0 < number <= len(lines) else None


def binary(ip_version: int, tool: str, backend: str | None = None) -> str:
    """``iptables-restore``, ``ip6tables-nft-save``, ...; tool is "restore" or "save"."""
    if ip_version not in (4, 6) or backend not in BACKENDS or tool not in ("restore", "save"):
        raise ValueError(f"bad iptables binary request: v{ip_version} {backend} {tool}")
    base = "iptables" if ip_version == 4 else "ip6tables"
    return f"{base}-{backend}-{tool}" if backend else f"{base}-{tool}"


@dataclass
class Plan:
    """One restore transaction and what it does."""

    writes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # chain -> rule specs
    # Chains of `writes` changed in place, not rewritten: their -D and -I lines (edit_lines).
    edits: dict[str, list[str]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    hook_lines: list[str] = field(default_factory=list)  # -D/-I lines on kernel chains
    unhook_lines: list[str] = field(default_factory=list)  # -D lines that must precede -X

    def empty(self) -> bool:
        return not (self.writes or self.deletes or self.hook_lines or self.unhook_lines)

    def pieces(self, table: str) -> Iterator[str]:
        """The restore input, a chain's rules at a time (each line ending in a newline).

        Under --noflush, declaring a chain creates it or, if it exists, flushes it (both
        backends), so no "-F" lines: on iptables-nft each one costs as much as several rules
        (a cold start at 1,000 endpoints took 7x longer with them). Declaring every doomed
        chain first also empties them all before any is deleted, so references among them
        do not block the "-X".

        The text is made a chain at a time as the runner writes it, never held whole: a cold
        start's is 12 MB per IP version at 1,000 endpoints, and both were the driver's memory
        peak while the two filter tables were written together.
        """
        declared = [chain for chain in self.writes if chain not in self.edits]
        declares = [f":{chain} - [0:0]" for chain in [*declared, *self.deletes]]
        yield "".join(f"{line}\n" for line in [f"*{table}", *declares, *self.unhook_lines])
        for chain, rules in self.writes.items():
            edit = self.edits.get(chain)
            if edit is not None:
                yield "".join(f"{line}\n" for line in edit)
            elif rules:
                yield "".join([f"-A {chain} {rule}\n" for rule in rules])
        deletes = [f"-X {chain}" for chain in self.deletes]
        yield "".join(f"{line}\n" for line in [*self.hook_lines, *deletes, "COMMIT"])

    def render(self, table: str) -> str:
        """The same as one text."""
        return "".join(self.pieces(table))
