"""BIRD's answers parsed (the reply lines of its control socket, `show protocols all`), and the
peer table `calico-bgp status` prints (as `calicoctl node status` did, bgp.md §4.3). Pure.

A row is `name proto table state since info` (code 1002), followed by its details (1006):
`Neighbor address:`, `Neighbor AS:` and, per channel, `Routes: N imported, ... M exported`.
"since" is two tokens with the `timeformat protocol "%F %T"` calico-bgp writes, one with BIRD's
default format; both are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from calico.bgp.peers import KIND_DESCRIPTIONS, peer_address

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ROUTES_RE = re.compile(r"Routes:\s+(\d+) imported,.*?(\d+) exported")


@dataclass(frozen=True, slots=True)
class ReplyLine:
    code: int
    text: str


def parse_reply(data: bytes) -> tuple[list[ReplyLine], bool]:
    """The lines of `data` and whether the last complete one ends the reply."""
    lines: list[ReplyLine] = []
    code = 0
    complete = False
    for raw in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        line = raw.decode("utf-8", errors="replace")
        if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
            code = int(line[:4])
            lines.append(ReplyLine(code, line[5:]))
            if line[4] == " ":
                complete = True
                break
        elif line.startswith(" "):
            lines.append(ReplyLine(code, line[1:]))
        # "+...": a spontaneous printout, not part of the reply
    return lines, complete


@dataclass(slots=True)
class Protocol:
    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str
    neighbor: str | None = None
    neighbor_as: str | None = None
    imported: int = 0
    exported: int = 0

    @property
    def established(self) -> bool:
        return self.proto == "BGP" and self.info.split()[:1] == ["Established"]

    @property
    def peer_type(self) -> str:
        found = peer_address(self.name)
        return KIND_DESCRIPTIONS[found[0]] if found else "other"

    @property
    def address(self) -> str:
        if self.neighbor:
            return self.neighbor
        found = peer_address(self.name)
        return found[1] if found else self.name


def parse_protocols(reply: list[ReplyLine]) -> list[Protocol]:
    protocols: list[Protocol] = []
    for line in reply:
        if line.code == 1002:
            tokens = line.text.split()
            if len(tokens) < 4:
                continue
            rest = tokens[4:]
            since_len = 2 if rest and _DATE_RE.fullmatch(rest[0]) and len(rest) > 1 else 1
            since = " ".join(rest[:since_len])
            info = " ".join(rest[since_len:])
            name, proto, table, state = tokens[:4]
            protocols.append(Protocol(name, proto, table, state, since, info))
        elif line.code == 1006 and protocols:
            _detail(protocols[-1], line.text.strip())
    return protocols


def _detail(protocol: Protocol, text: str) -> None:
    if text.startswith("Neighbor address:"):
        protocol.neighbor = text.split(":", 1)[1].strip()
    elif text.startswith("Neighbor AS:"):
        protocol.neighbor_as = text.split(":", 1)[1].strip()
    elif match := _ROUTES_RE.match(text):
        protocol.imported += int(match.group(1))
        protocol.exported += int(match.group(2))


def bgp_sessions(protocols: list[Protocol]) -> list[Protocol]:
    return [p for p in protocols if p.proto == "BGP"]


def format_status(protocols: list[Protocol], version_line: str = "") -> str:
    """The peer tables, IPv4 then IPv6."""
    out = [f"BIRD is running ({version_line})." if version_line else "BIRD is running."]
    sessions = bgp_sessions(protocols)
    for version in (4, 6):
        rows = [p for p in sessions if (":" in p.address) == (version == 6)]
        out += ["", f"IPv{version} BGP status"]
        if not rows:
            out.append(f"No IPv{version} peers found.")
            continue
        headings = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")
        table = [headings] + [(p.address, p.peer_type, p.state, p.since, p.info) for p in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(headings))]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        out.append(rule)
        for i, row in enumerate(table):
            cells = (f" {cell.ljust(width)} " for cell, width in zip(row, widths, strict=True))
            out.append("|" + "|".join(cells) + "|")
            if i == 0:
                out.append(rule)
        out.append(rule)
    return "\n".join(out) + "\n"
