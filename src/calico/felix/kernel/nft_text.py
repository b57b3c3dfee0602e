"""Pure text handling for the nftables driver (no I/O): the safety check every rule passes, the
hash that marks a rule as Felix's, references between chains and sets, the transaction script,
error attribution, and reading ``nft -j list table`` back into what the driver compares.

Identity: the driver appends ``comment "<hash> ..."`` to every rule, the hash of the chain's name
and the rule's text. Read back, a chain is as Felix wrote it if and only if its rules carry the
expected hashes in the expected order: a rule inserted, deleted, replaced or moved by another
tool has no hash, or the wrong one, so the chain is rewritten. (JSON rule expressions cannot
be turned back into nft text, so rules are recognised by their comments, as knftables and
Calico do.)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from calico.felix.dataplane.nft_rendering.base import NAME_RE, BaseChain, SetSpec

FAMILY = "inet"
HASH_LEN = 13
MAX_COMMENT = 128
ELEMENTS_PER_COMMAND = 2000
_QUOTED_RE = re.compile(r'"([^"]*)"')
_SAFE_QUOTED_RE = re.compile(r"[A-Za-z0-9 _.,:/()=+@!*-]*")
# Outside quotes: no ";" (a second command), "#" (a comment), "$" (a variable), "\\" or "'".
_SAFE_BARE_RE = re.compile(r"[A-Za-z0-9 _.,:/!=<>&|{}@*-]*")
_COMMENT_RE = re.compile(r' comment "([^"]*)"$')
_TARGET_RE = re.compile(r"\b(?:jump|goto) (\S+)")
_SET_REF_RE = re.compile(r"@(\S+)")
_ERROR_RE = re.compile(r"Error: [^\n]*\n([^\n]*)\n")
_ERROR_LINE_RE = re.compile(r"^\S+:(\d+):\d+(?:-\d+)?: Error: ", re.MULTILINE)


def unsafe_rule(rule: str) -> str | None:
    """Why `rule` is not one safe nft rule (None if it is): printable ASCII on one line, quoted
    strings paired and of safe characters, nothing outside them that could end the rule or
    start another command."""
    if not rule or not rule.isascii() or not rule.isprintable():
        return "not one line of printable ASCII"
    if rule.count('"') % 2:
        return "unpaired double quote"
    for quoted in _QUOTED_RE.findall(rule):
        if _SAFE_QUOTED_RE.fullmatch(quoted) is None:
            return "unsafe character in a quoted string"
    bare = _QUOTED_RE.sub("", rule)
    if _SAFE_BARE_RE.fullmatch(bare) is None:
        return "unsafe character"
    if bare.count("{") != bare.count("}"):
        return "unbalanced braces"
    for name in (*_TARGET_RE.findall(bare), *_SET_REF_RE.findall(bare)):
        if NAME_RE.fullmatch(name) is None:
            return f"reference to a name Felix does not own: {name[:40]!r}"
    return None


def rule_hash(rule: str) -> str:
    digest = hashlib.blake2b(rule.encode(), digest_size=8).digest()
    return base64.b32encode(digest).decode("ascii")[:HASH_LEN].lower()


@dataclass(frozen=True)
class Analysed:
    """One rule as the driver writes it: its hash, the line (hash in the comment), the chains
    and sets it references, and why it is unsafe (None if it is not)."""

    hash: str
    line: str
    chains: frozenset[str]
    sets: frozenset[str]
    unsafe: str | None


@functools.lru_cache(maxsize=1 << 16)
def analyse(rule: str) -> Analysed:
    """Cached: most rules recur across endpoints (mark handling, returns, drops), and a cold
    start at 1,000 endpoints writes 60,000 of them."""
    digest = rule_hash(rule)
    bare = _QUOTED_RE.sub("", rule)
    return Analysed(
        digest,
        with_hash(rule, digest),
        frozenset(_TARGET_RE.findall(bare)),
        frozenset(_SET_REF_RE.findall(bare)),
        unsafe_rule(rule),
    )


def with_hash(rule: str, digest: str) -> str:
    """`rule` with `digest` first in its comment (added if it has none)."""
    match = _COMMENT_RE.search(rule)
    if match is None:
        return f'{rule} comment "{digest}"'
    text = f"{digest} {match.group(1)}"[:MAX_COMMENT]
    return f'{rule[: match.start()]} comment "{text}"'


def chain_refs(rules: Iterable[str]) -> frozenset[str]:
    """The chains the rules jump or go to."""
    return frozenset(t for rule in rules for t in _TARGET_RE.findall(_QUOTED_RE.sub("", rule)))


def set_refs(rules: Iterable[str]) -> frozenset[str]:
    """The named sets and maps the rules look up."""
    return frozenset(s for rule in rules for s in _SET_REF_RE.findall(_QUOTED_RE.sub("", rule)))


_SAFE_ELEMENT_RE = re.compile(
    r'[0-9A-Fa-f.:]{2,39}(/[0-9]{1,3})?|"[A-Za-z0-9_.-]{1,15}" : goto felix-[A-Za-z0-9/_.-]{1,240}'
)


def unsafe_element(element: str) -> bool:
    """Whether a set or map element is anything but an address, a network or an interface
    name's verdict (the only elements Felix writes)."""
    return _SAFE_ELEMENT_RE.fullmatch(element) is None


def element_targets(elements: Iterable[str]) -> frozenset[str]:
    """The chains verdict-map elements go to."""
    return frozenset(t for e in elements for t in _TARGET_RE.findall(e.rpartition('"')[2]))


# --- the transaction ---------------------------------------------------------------------------


@dataclass
class Script:
    """One transaction: a command per line, and what each line is about (for errors)."""

    table: str
    lines: list[str] = field(default_factory=list)
    about: list[tuple[str, str]] = field(default_factory=list)  # (kind, chain or set name)

    def add(self, kind: str, name: str, command: str) -> None:
        self.lines.append(command)
        self.about.append((kind, name))

    def obj(self, verb: str, kind: str, name: str, tail: str = "") -> None:
        """``<verb> <kind> inet <table> <name> [tail]``, e.g. add chain, flush set (a map is
        about as a set)."""
        text = f"{verb} {kind} {FAMILY} {self.table} {name}"
        about = f"{verb} {'set' if kind == 'map' else kind}"
        self.add(about, name, f"{text} {tail}" if tail else text)

    def elements(self, verb: str, name: str, elements: Iterable[str]) -> None:
        ordered = sorted(elements)
        for start in range(0, len(ordered), ELEMENTS_PER_COMMAND):
            chunk = ", ".join(ordered[start : start + ELEMENTS_PER_COMMAND])
            self.obj(verb, "element", name, f"{{ {chunk} }}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n" if self.lines else ""

    def empty(self) -> bool:
        return not self.lines


def failed_commands(error: str, script: Script) -> list[tuple[str, str]]:
    """What the commands nft reported errors for are about: nft prints each failing command's
    text after its ``Error:`` line (a parse error and a kernel refusal alike)."""
    numbered = [int(n) - 1 for n in _ERROR_LINE_RE.findall(error)]
    if numbered:  # "/dev/stdin:3:1-20: Error: ..." (the nft command)
        return [script.about[n] for n in numbered if 0 <= n < len(script.about)]
    index: dict[str, int] = {}
    for i, line in enumerate(script.lines):
        index.setdefault(line, i)
    found = []
    for text in _ERROR_RE.findall(error + "\n"):
        position = index.get(text)
        if position is not None:
            found.append(script.about[position])
    return found


# --- reading the kernel back -------------------------------------------------------------------


@dataclass
class KernelChain:
    base: BaseChain | None
    hashes: tuple[str, ...]
    refs: frozenset[str] = frozenset()  # chains and sets its rules name


@dataclass
class KernelSet:
    spec: SetSpec
    elements: set[str]


@dataclass
class KernelTable:
    chains: dict[str, KernelChain] = field(default_factory=dict)
    sets: dict[str, KernelSet] = field(default_factory=dict)


def parse_table(text: str) -> KernelTable:
    """``nft -j list table inet <table>`` as chains (hooks, rule hashes, references) and sets."""
    result = KernelTable()
    hashes: dict[str, list[str]] = {}
    refs: dict[str, set[str]] = {}
    for item in _objects(text):
        if "chain" in item:
            chain = item["chain"]
            name = str(chain["name"])
            result.chains[name] = KernelChain(_base(chain), ())
            hashes[name], refs[name] = [], set()
        elif "rule" in item:
            rule = item["rule"]
            name = str(rule.get("chain"))
            if name in hashes:
                words = str(rule.get("comment", "")).split(" ", 1)
                hashes[name].append(words[0] if words[0] else "?")
                refs[name].update(_references(rule.get("expr", [])))
        elif "set" in item or "map" in item:
            entry = item.get("set") or item.get("map") or {}
            elems = entry.get("elem", [])
            if all(isinstance(e, str) for e in elems):
                elements = set(elems)  # addresses: listed as we write them
            else:
                elements = {element_text(e) for e in elems}
            result.sets[str(entry["name"])] = KernelSet(_spec(entry, "map" in item), elements)
    for name, chain in result.chains.items():
        chain.hashes = tuple(hashes[name])
        chain.refs = frozenset(refs[name])
    return result


def _references(expr: Any) -> Iterator[str]:
    """Jump and goto targets and set names (``@name``) anywhere in a rule's JSON."""
    if isinstance(expr, dict):
        for key, value in expr.items():
            if key in ("jump", "goto") and isinstance(value, dict) and "target" in value:
                yield str(value["target"])
            else:
                yield from _references(value)
    elif isinstance(expr, list):
        for value in expr:
            yield from _references(value)
    elif isinstance(expr, str) and expr.startswith("@"):
        yield expr[1:]


def _objects(text: str) -> Iterator[dict[str, Any]]:
    data = json.loads(text) if text.strip() else {"nftables": []}
    for item in data.get("nftables", []):
        if isinstance(item, dict):
            yield item


def _base(chain: dict[str, Any]) -> BaseChain | None:
    if "hook" not in chain:
        return None
    if chain.get("policy", "accept") != "accept":
        return BaseChain("?", str(chain["hook"]), 0)  # never equal to one of ours
    return BaseChain(str(chain.get("type")), str(chain["hook"]), int(chain.get("prio", 0)))


def _spec(entry: dict[str, Any], is_map: bool) -> SetSpec:
    kind = entry.get("type")
    if not isinstance(kind, str):
        return SetSpec("?")  # a concatenation: not one of ours
    value = entry.get("map") if is_map else None
    return SetSpec(kind, str(value) if value else None, "interval" in entry.get("flags", ()))


def element_text(elem: Any) -> str:
    """One listed element as Felix writes it: ``10.0.0.1``, ``10.65.0.0/16``,
    ``"tap1" : goto felix-from-1``; anything else as text that never equals ours."""
    if isinstance(elem, str):
        return elem
    if isinstance(elem, list) and len(elem) == 2:
        key, value = elem
        if isinstance(value, dict) and len(value) == 1:
            ((verdict, arg),) = value.items()
            if isinstance(arg, dict) and "target" in arg:
                return f'"{element_text(key)}" : {verdict} {arg["target"]}'
        return f"{element_text(key)} : {element_text(value)}"
    if isinstance(elem, dict):
        if "prefix" in elem:
            return f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
        if "elem" in elem:
            return element_text(elem["elem"].get("val"))
    return "?" + json.dumps(elem, sort_keys=True)
