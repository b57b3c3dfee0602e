"""Pure text handling for ipsets (no I/O): parsing ``ipset list`` and ``ipset save`` output,
normalising members the way the kernel lists them (refusing anything that is not one address or
network of the set's family), and the ``ipset restore`` input: each set's operation (a delta, a
replace through a temporary set, a destroy), the input of several, and which of them an error
names. The driver that runs ``ipset`` is `calico.felix.kernel.ipsets`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import ipaddress
import itertools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from calico.common.quoting import quoted

log = logging.getLogger(__name__)

HASH_IP: Final = "hash:ip"
HASH_NET: Final = "hash:net"
SET_TYPES: Final = (HASH_IP, HASH_NET)
# Distinct (member, set type, IP version) normalisations remembered (about 100 bytes each).
NORMALIZE_CACHE_SIZE: Final = 1 << 17


@dataclass(frozen=True)
class KernelSet:
    """One set as listed by ``ipset list``; `members` is None for a terse (``-t``) listing."""

    name: str
    set_type: str
    family: str
    maxelem: int | None = None
    references: int | None = None
    members: frozenset[str] | None = None


def parse_ipset_list(text: str) -> dict[str, KernelSet]:
    """Parse ``ipset list`` / ``ipset list -t`` output into sets by name."""
    sets: dict[str, KernelSet] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        if block.strip():
            kset = _parse_block(block.splitlines())
            sets[kset.name] = kset
    return sets


@dataclass(frozen=True)
class SavedSet:
    """One set's part of ``ipset save`` output: its create line's facts and its raw text."""

    kset: KernelSet
    # The create line (without its "create ") and the set's add lines, exactly as printed.
    text: str

    def digest(self) -> bytes:
        return hashlib.blake2b(self.text.encode(), digest_size=16).digest()

    def members(self) -> list[str]:
        """The members, as printed ("add <set> <member> [extras]")."""
        return [line.split()[2] for line in self.text.splitlines()[1:] if line.startswith("add ")]


def parse_ipset_save(text: str | Iterable[str]) -> dict[str, SavedSet]:
    """:func:`iter_ipset_save`'s sets by name."""
    return {saved.kset.name: saved for saved in iter_ipset_save(text)}


def iter_ipset_save(text: str | Iterable[str]) -> Iterator[SavedSet]:
    """Split ``ipset save`` output (a text, or its lines) into sets, one at a time, without
    looking at the members.

    ``ipset save`` prints each set as its ``create`` line followed by all of its ``add`` lines,
    so the lines from one create line to the next are one set's. Each set keeps its lines as
    one text (its create line without the word ``create``). The driver reads the output a line
    at a time from the command's memory file and compares each set before it reads the next:
    the whole output, or all of its sets' texts (13 MB at 1,000 endpoints), is never held."""
    lines = io.StringIO(text) if isinstance(text, str) else text
    current: list[str] = []  # the set being read: its create line's rest, then its lines
    for line in lines:
        if line.startswith("create "):
            if saved := _saved(current):
                yield saved
            current = [line[len("create ") :]]
        elif current:  # (whatever precedes the first create line is not a set's)
            current.append(line)
    if saved := _saved(current):
        yield saved


def _saved(lines: list[str]) -> SavedSet | None:
    create = lines[0].split() if lines else []
    if len(create) < 2:
        return None
    options = dict(zip(create[2::2], create[3::2], strict=False))
    maxelem = options.get("maxelem")
    kset = KernelSet(
        name=create[0],
        set_type=create[1],
        family=options.get("family", ""),
        maxelem=int(maxelem) if maxelem and maxelem.isdigit() else None,
    )
    return SavedSet(kset, "".join(lines).rstrip("\n"))


def _parse_block(lines: list[str]) -> KernelSet:
    fields: dict[str, str] = {}
    members: list[str] | None = None
    for line in lines:
        if members is not None:
            if line.strip():
                members.append(line.split()[0])  # ignore per-entry extras (timeout, comment)
        elif line.startswith("Members:"):
            members = []
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    header = fields.get("Header", "").split()
    # The header is "key value" pairs: "family inet hashsize 1024 maxelem 65536 ...".
    options = dict(zip(header[::2], header[1::2], strict=False))
    maxelem = options.get("maxelem")
    refs = fields.get("References")
    return KernelSet(
        name=fields["Name"],
        set_type=fields.get("Type", ""),
        family=options.get("family", ""),
        maxelem=int(maxelem) if maxelem else None,
        references=int(refs) if refs else None,
        members=frozenset(members) if members is not None else None,
    )


@functools.lru_cache(maxsize=NORMALIZE_CACHE_SIZE)
def normalize(member: str, set_type: str, ip_version: int) -> str | None:
    """The member as the kernel lists it, or None if it does not belong in a table of this IP
    version.

    Cached: a cold start normalises every (set, member) pair, about 280,000 at 1,000 selectors
    and 10,000 endpoints, for each IP version's table, but only ~10,000 distinct addresses; the
    ipaddress parse is the expensive part. (An invalid member is therefore warned about once.)
    """
    try:
        if "%" in member:  # an IPv6 scope: ipaddress would keep any text after the "%"
            raise ValueError("scoped address")
        net = ipaddress.ip_network(member.strip(), strict=False)
    except ValueError:
        log.warning("Ignoring invalid ipset member %s", quoted(member))
        return None
    if net.version != ip_version:
        return None  # the other family's table takes it
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)  # the kernel lists /32 and /128 as bare addresses
    if set_type == HASH_IP:
        log.warning("Ignoring CIDR %s: a hash:ip set holds single addresses", quoted(member))
        return None
    if net.prefixlen == 0:
        log.warning("Ignoring %s: hash:net sets cannot hold a /0", quoted(member))
        return None
    return str(net)


# -- ipset restore input ---------------------------------------------------------------------

# How ipset reports which restore line failed, e.g. "ipset v7.17: Error in line 3: ...".
_ERROR_LINE_RE = re.compile(r"Error in line (\d+):")


@dataclass(frozen=True)
class RestoreOp:
    """One unit of an ``ipset restore`` input: a set's delta or replace, or one destroy.

    Its lines are `head`, then ``<member_verb><member>`` for each of `members`, then `tail`.
    The member lines are made only as the input is written (:meth:`pieces`): a cold start's
    replaces hold 307,000 members at 1,000 endpoints, and their text (15 MB) was the driver's
    memory peak while it waited for the restore."""

    kind: Literal["delta", "replace", "destroy"]
    name: str
    head: tuple[str, ...]
    members: Sequence[str] = ()
    member_verb: str = ""
    tail: tuple[str, ...] = ()

    @property
    def line_count(self) -> int:
        return len(self.head) + len(self.members) + len(self.tail)

    def pieces(self) -> Iterator[str]:
        """The op's text, a few thousand lines at a time, each line ending in a newline."""
        if self.head:
            yield "".join(line + "\n" for line in self.head)
        verb = self.member_verb
        for start in range(0, len(self.members), _PIECE_LINES):
            yield "".join([f"{verb}{m}\n" for m in self.members[start : start + _PIECE_LINES]])
        if self.tail:
            yield "".join(line + "\n" for line in self.tail)

    @property
    def lines(self) -> list[str]:
        return "".join(self.pieces()).splitlines()


_PIECE_LINES = 4096  # member lines made at a time (about 150 KB of text)


def delta_op(name: str, adds: list[str], dels: list[str]) -> RestoreOp | None:
    """Set `name`'s members changed in place; None if nothing changes. Deletes go first, so a
    set near maxelem has room for the adds."""
    if not adds and not dels:
        return None
    head = tuple(f"del {name} {m}" for m in dels)
    return RestoreOp("delta", name, head, adds, f"add {name} ")


def replace_op(
    name: str,
    temp: str,
    params: tuple[str, str, int],
    members: Iterable[str],
    existing: KernelSet | None,
    old_temp: KernelSet | None,
) -> RestoreOp:
    """Set `name` rewritten whole: filled as `temp` and swapped in, so that it is never briefly
    empty or missing. `params`: the set's (type, family, maxelem); `existing` and `old_temp`:
    what the kernel holds under the two names (None: nothing)."""
    set_type, family, max_size = params
    create = f"{set_type} family {family} maxelem {max_size}"
    want = (set_type, family)
    lines = []
    if existing is not None and (existing.set_type, existing.family) != want:
        # swap needs matching type and family; if it is referenced this fails and is retried.
        lines.append(f"destroy {name}")
        existing = None
    if existing is None:
        # Never "create -exist" over an existing main set: with different parameters (e.g. an
        # old maxelem) that fails. The swap below gives it our parameters anyway.
        lines.append(f"create {name} {create} -exist")
    if old_temp and (old_temp.set_type, old_temp.family, old_temp.maxelem) != params:
        # A leftover temp with other parameters would make "create -exist" fail.
        lines.append(f"destroy {temp}")
    lines.append(f"create {temp} {create} -exist")
    lines.append(f"flush {temp}")
    tail = (f"swap {temp} {name}", f"destroy {temp}")
    return RestoreOp("replace", name, tuple(lines), sorted(members), f"add {temp} ", tail)


def destroy_op(name: str) -> RestoreOp:
    return RestoreOp("destroy", name, (f"destroy {name}",))


def restore_pieces(ops: Sequence[RestoreOp]) -> Iterator[str]:
    """One ``ipset restore`` input running `ops` in order, a piece at a time."""
    for op in ops:
        yield from op.pieces()
    yield "COMMIT\n"


def restore_input(ops: Sequence[RestoreOp]) -> str:
    """The same as one text."""
    return "".join(restore_pieces(ops))


def failed_op(stderr: str, ops: Sequence[RestoreOp]) -> int:
    """The index of the op whose line the ``ipset restore`` of `restore_input(ops)` failed at,
    from its error message; -1 if the message names no op's line (none, or COMMIT)."""
    match = _ERROR_LINE_RE.search(stderr)
    line_no = int(match.group(1)) if match else 0
    if not 0 < line_no <= sum(op.line_count for op in ops):
        return -1
    starts = list(itertools.accumulate((op.line_count for op in ops), initial=1))  # 1-based
    return bisect.bisect_right(starts, line_no) - 1
