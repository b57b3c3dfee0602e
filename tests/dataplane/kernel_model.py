"""A fake kernel that keeps a model, for driving the real table drivers without root.

:class:`FakeKernel` is a :class:`~calico.felix.kernel.commands.CommandRunner` that *parses* what
the drivers give it, as old Felix's iptables stub did, and answers their reads from its model:

* ``iptables-restore`` / ``ip6tables-restore`` (any backend name): tables, ``:chain``
  declarations (create, or flush an existing chain under ``--noflush``), ``-A``, ``-I``, ``-D``,
  ``-F``, ``-N``, ``-X``, ``-P``, ``COMMIT``. It refuses what iptables-restore refuses (checked
  against the real tool by tests/dataplane/test_kernel_model.py): a rule in or jumping to a
  chain that does not exist, a deleted rule that is not there, ``-X`` of a built-in, non-empty
  or referenced chain, a set in ``--match-set`` that does not exist or is of the other family,
  a match module the kernel lacks (:attr:`FakeKernel.missing_modules`), a line outside a table,
  a chain name over 28 characters, input ending without ``COMMIT``. A table is committed at its
  ``COMMIT`` and not before, so a refused line leaves it as it was; the error message names the
  line in the formats iptables-restore uses.
* ``iptables-save -t <table>``: the model, printed as iptables-save prints it.
* ``ipset restore``: ``create``, ``add``, ``del``, ``flush``, ``swap``, ``destroy``, ``COMMIT``,
  not transactional: line by line, except that consecutive add/del lines of one set go to the
  kernel together when another line comes, as libipset sends them (so a line refused before it
  reaches the kernel drops the add/del lines still waiting). It refuses an add to or del from a
  missing set, a member of the other family, a duplicate add or a missing del without
  ``-exist``, a full set, a second create with other parameters, a swap of sets of different
  types and a destroy of a set some rule references (references are counted from the iptables
  model, as the kernel counts them).
* ``ipset list [-t]`` and ``ipset save``: the model, printed as ipset prints it.
* ``ip -6 neigh add|replace|del proxy <address> dev <interface>`` and ``ip -6 -j neigh show
  proxy``: proxy NDP entries, on the links of the model.

:attr:`FakeKernel.netlink` stands in for pyroute2's IPRoute (what RouteTable uses: links,
routes, permanent neighbours) and :attr:`FakeKernel.sysctls` for a SysctlWriter, on the same
links: an interface that does not exist has no sysctls, and one that goes down loses its routes,
neighbour and proxy entries, as in the kernel. :attr:`FakeKernel.refuse` makes chosen commands
fail. Any command the fake does not model fails the test.
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import itertools
import json
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from calico.felix.kernel.iptables_text import tokens

BUILTINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}
MAX_CHAIN_NAME = 28
MAX_SET_NAME = 31
SET_TYPES = ("hash:ip", "hash:net")
# A target that is not a chain must be a built-in verdict or an extension (all upper case:
# ACCEPT, DROP, RETURN, MARK, DNAT, SNAT, MASQUERADE, LOG, REJECT, CT, ...).
_EXTENSION_TARGET = re.compile(r"[A-Z][A-Z0-9_]*")
_JUMPS = ("-j", "--jump", "-g", "--goto")
_RESTORE = re.compile(r"(ip6?tables)(-nft|-legacy)?-restore")
_SAVE = re.compile(r"(ip6?tables)(-nft|-legacy)?-save")

Rule = tuple[str, ...]


class Refused(Exception):
    """One line of restore input refused; `parse`: refused while parsing (the error formats
    differ: see _ipt_error and _ipset_restore)."""

    def __init__(self, message: str, parse: bool = False) -> None:
        super().__init__(message)
        self.parse = parse
        self.line: int | None = None  # the input line, when not the one being read


def rule_text(rule: Rule) -> str:
    """A rule's tokens as iptables-save prints them (double quotes around blanks)."""
    return " ".join(f'"{t}"' if not t or re.search(r"\s", t) else t for t in rule)


def _rule_tokens(text: str) -> Rule:
    """Tokens as iptables-restore reads them: a double quote left open runs to the line's end."""
    return tokens(text + '"' if text.count('"') % 2 else text)


@dataclass
class Table:
    chains: dict[str, list[Rule]]
    policies: dict[str, str]

    @classmethod
    def empty(cls, name: str) -> Table:
        return cls({c: [] for c in BUILTINS[name]}, dict.fromkeys(BUILTINS[name], "ACCEPT"))

    def references(self, chain: str) -> int:
        return sum(1 for rules in self.chains.values() for r in rules if _target(r) == chain)


def _target(rule: Rule) -> str | None:
    for flag, value in itertools.pairwise(rule):
        if flag in _JUMPS:
            return value
    return None


def _match_sets(rule: Rule) -> list[str]:
    return [value for flag, value in itertools.pairwise(rule) if flag == "--match-set"]


@dataclass
class IpSet:
    set_type: str
    family: str
    maxelem: int
    members: list[str] = field(default_factory=list)  # in insertion order

    def params(self) -> tuple[str, str, int]:
        return (self.set_type, self.family, self.maxelem)


@dataclass
class Link:
    index: int
    up: bool


class FakeNetlink:
    """The slice of pyroute2's IPRoute that RouteTable uses, on the FakeKernel's links."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel
        self.requests: list[str] = []  # "get_links", "link get", "route replace", ...

    def get_links(self, *argv: Any, **kwarg: Any) -> list[dict[str, Any]]:
        self.requests.append("get_links")
        return [
            {"ifname": name, "index": link.index, "flags": IFF_UP if link.up else 0}
            for name, link in self._kernel.links.items()
        ]

    def link(self, command: str, **kwarg: Any) -> list[dict[str, Any]]:
        self.requests.append(f"link {command}")
        assert command == "get", command
        link = self._kernel.links.get(kwarg["ifname"])
        if link is None:
            raise NetlinkError(errno.ENODEV, "No such device")
        flags = IFF_UP if link.up else 0
        return [{"ifname": kwarg["ifname"], "index": link.index, "flags": flags}]

    def get_routes(self, family: int = socket.AF_INET, match: Any = None, **kwarg: Any) -> Any:
        self.requests.append("get_routes")
        version = 4 if family == socket.AF_INET else 6
        return [
            {"oif": oif, "proto": proto, "dst": str(net.network_address), "dst_len": net.prefixlen}
            for net, (oif, proto) in self._kernel.routes.items()
            if net.version == version
        ]

    def get_neighbours(self, family: int = socket.AF_INET, match: Any = None, **kwarg: Any) -> Any:
        self.requests.append("get_neighbours")
        return [
            {"ifindex": index, "dst": ip, "lladdr": mac, "state": NUD_PERMANENT}
            for (index, ip), mac in self._kernel.neighbours.items()
        ]

    def route(self, command: str, **kwarg: Any) -> None:
        self.requests.append(f"route {command}")
        net = ipaddress.ip_network(kwarg["dst"])
        if command == "del":
            # The kernel deletes only a route that matches what the request names.
            oif, proto = self._kernel.routes.get(net, (None, None))
            if oif is None or kwarg.get("oif", oif) != oif or kwarg.get("proto", proto) != proto:
                raise NetlinkError(errno.ESRCH, "No such process")
            del self._kernel.routes[net]
            return
        assert command == "replace", command
        link = self._kernel.link_by_index(kwarg["oif"])
        if link is None:
            raise NetlinkError(errno.ENODEV, "No such device")
        if not link.up:
            raise NetlinkError(errno.ENETDOWN, "Network is down")
        self._kernel.routes[net] = (kwarg["oif"], kwarg.get("proto", 3))

    def neigh(self, command: str, **kwarg: Any) -> None:
        self.requests.append(f"neigh {command}")
        key = (kwarg["ifindex"], kwarg["dst"])
        if command == "del":
            if key not in self._kernel.neighbours:
                raise NetlinkError(errno.ENOENT, "No such file or directory")
            del self._kernel.neighbours[key]
            return
        assert command == "replace", command
        if self._kernel.link_by_index(kwarg["ifindex"]) is None:
            raise NetlinkError(errno.ENODEV, "No such device")
        self._kernel.neighbours[key] = kwarg["lladdr"]


class FakeSysctls:
    """A SysctlWriter over the FakeKernel's links: ``net/ipv<N>/conf|neigh/<link>/<key>``."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel
        self.values: dict[str, str] = {}

    def _check(self, path: str) -> None:
        parts = path.split("/")
        if len(parts) == 5 and parts[3] not in ("all", "default"):
            if parts[3] not in self._kernel.links:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    def write(self, path: str, value: str) -> None:
        self._check(path)
        self.values[path] = value

    def read(self, path: str) -> str:
        self._check(path)
        return self.values.get(path, "0")


class FakeKernel:
    """A CommandRunner over a model of iptables, ipsets, links, routes and neighbours."""

    def __init__(self) -> None:
        self.tables: dict[tuple[int, str], Table] = {
            (v, t): Table.empty(t) for v in (4, 6) for t in BUILTINS
        }
        self.sets: dict[str, IpSet] = {}
        self.links: dict[str, Link] = {}
        self.routes: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, tuple[int, int]] = {}
        self.neighbours: dict[tuple[int, str], str] = {}  # (ifindex, ip) -> MAC (permanent)
        self.proxies: set[tuple[str, str]] = set()  # (interface, IPv6 address)
        self.missing_modules: set[str] = set()  # `-m X` modules this kernel cannot load
        # Injected failures: a command for which this returns a message fails with it (exit 2).
        self.refuse: Callable[[list[str]], str | None] = lambda argv: None
        self.commands: list[tuple[list[str], str | None]] = []
        self.netlink = FakeNetlink(self)
        self.sysctls = FakeSysctls(self)
        self._next_index = 2  # 1 is lo

    # -- looking at the model -------------------------------------------------------------------

    def chains(self, table: str, version: int = 4) -> dict[str, list[str]]:
        """Every chain of a table with its rules as iptables-save prints them."""
        model = self.tables[(version, table)]
        return {chain: [rule_text(r) for r in rules] for chain, rules in model.chains.items()}

    def members(self, name: str) -> set[str]:
        return set(self.sets[name].members)

    def snapshot(self) -> dict[str, object]:
        """Everything in the model, to compare before and after."""
        return {
            "chains": {(v, t): self.chains(t, v) for (v, t) in self.tables},
            "sets": {name: (s.params(), self.members(name)) for name, s in self.sets.items()},
            "routes": dict(self.routes),
            "neighbours": dict(self.neighbours),
            "proxies": set(self.proxies),
        }

    def restores(self, tool: str = "iptables") -> list[str]:
        """The inputs given to iptables-restore (tool "iptables"), ip6tables or ipset restore."""
        out = []
        for argv, text in self.commands:
            if tool == "ipset" and argv[:2] == ["ipset", "restore"]:
                out.append(text or "")
            elif tool != "ipset" and (m := _RESTORE.fullmatch(argv[0])) and m[1] == tool:
                out.append(text or "")
        return out

    def references(self, set_name: str) -> int:
        return sum(
            _match_sets(rule).count(set_name)
            for table in self.tables.values()
            for rules in table.chains.values()
            for rule in rules
        )

    # -- links ----------------------------------------------------------------------------------

    def add_link(self, name: str, up: bool = True) -> int:
        assert name not in self.links, name
        self.links[name] = Link(self._next_index, up)
        self._next_index += 1
        return self.links[name].index

    def set_link_up(self, name: str, up: bool) -> None:
        link = self.links[name]
        if link.up and not up:
            self._forget_link(name, link.index)  # NETDEV_DOWN flushes them
        link.up = up

    def del_link(self, name: str) -> None:
        link = self.links.pop(name)
        self._forget_link(name, link.index)
        self.sysctls.values = {
            path: value for path, value in self.sysctls.values.items()
            if path.split("/")[3:4] != [name]
        }  # fmt: skip

    def link_by_index(self, index: int) -> Link | None:
        return next((link for link in self.links.values() if link.index == index), None)

    def _forget_link(self, name: str, index: int) -> None:
        self.routes = {net: r for net, r in self.routes.items() if r[0] != index}
        self.neighbours = {k: mac for k, mac in self.neighbours.items() if k[0] != index}
        self.proxies = {p for p in self.proxies if p[0] != name}

    # -- the CommandRunner ----------------------------------------------------------------------

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append((list(argv), input))
        refused = self.refuse(argv)
        if refused is not None:
            return subprocess.CompletedProcess(argv, 2, "", refused)
        rc, out, err = self._dispatch(argv, input)
        return subprocess.CompletedProcess(argv, rc, out, err)

    def _dispatch(self, argv: list[str], input: str | None) -> tuple[int, str, str]:
        tool = argv[0]
        if match := _RESTORE.fullmatch(tool):
            version = 6 if match[1] == "ip6tables" else 4
            return self._iptables_restore(tool, version, input or "", "--noflush" in argv)
        if match := _SAVE.fullmatch(tool):
            version = 6 if match[1] == "ip6tables" else 4
            table = argv[argv.index("-t") + 1]
            if (version, table) not in self.tables:
                return 1, "", f"{tool}: Table does not exist (do you need to insmod?)\n"
            return 0, self._iptables_save(version, table), ""
        if argv == ["ipset", "restore"]:
            return self._ipset_restore(input or "")
        if argv in (["ipset", "list"], ["ipset", "list", "-t"]):
            return 0, self._ipset_list(terse="-t" in argv), ""
        if argv == ["ipset", "save"]:
            return 0, self._ipset_save(), ""
        if argv == ["ip", "-6", "-j", "neigh", "show", "proxy"]:
            entries = [{"dst": dst, "dev": dev, "proxy": None} for dev, dst in sorted(self.proxies)]
            return 0, json.dumps(entries) + "\n", ""
        if argv[:3] == ["ip", "-6", "neigh"] and len(argv) == 8 and argv[4] == "proxy":
            return self._proxy(argv[3], argv[5], argv[7])
        raise AssertionError(f"the fake kernel does not model {argv}")

    # -- iptables ---------------------------------------------------------------------------------

    def _iptables_restore(
        self, tool: str, version: int, text: str, noflush: bool
    ) -> tuple[int, str, str]:
        lines = text.splitlines()
        name: str | None = None
        work: Table | None = None
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("*"):
                    if work is not None:
                        raise Refused(f"Bad argument `{line}'", parse=True)
                    name = line[1:]
                    if name not in BUILTINS:
                        raise Refused(f"table name '{name}' invalid", parse=True)
                    work = copy.deepcopy(self.tables[(version, name)])
                    if not noflush:
                        work = Table.empty(name)
                elif work is None or name is None:
                    raise Refused("")
                elif line == "COMMIT":
                    self.tables[(version, name)] = work
                    name, work = None, None
                elif line.startswith(":"):
                    self._declare(work, name, line[1:].split())
                else:
                    self._command(work, name, version, _rule_tokens(line))
            except Refused as refused:
                return 1, "", _ipt_error(tool, number, str(refused), refused.parse)
        if work is not None:
            return 1, "", f"{tool}: COMMIT expected at line {len(lines) + 1}\n"
        return 0, "", ""

    @staticmethod
    def _declare(work: Table, table: str, words: list[str]) -> None:
        chain, policy = words[0], words[1] if len(words) > 1 else "-"
        if chain in BUILTINS[table]:
            if policy not in ("-", "ACCEPT", "DROP"):
                raise Refused(f"Bad policy name `{policy}'", parse=True)
            if policy != "-":
                work.policies[chain] = policy
            return
        if len(chain) > MAX_CHAIN_NAME:
            raise Refused(f"Invalid chain name `{chain}' (28 chars max)", parse=True)
        if policy != "-":
            raise Refused(f"Can't set policy `{policy}' on user chain `{chain}'", parse=True)
        work.chains[chain] = []  # created, or flushed (under --noflush, declaring flushes)

    def _command(self, work: Table, table: str, version: int, words: Rule) -> None:
        if len(words) < 2:
            raise Refused(f"Bad argument `{' '.join(words)}'", parse=True)
        command, chain, rest = words[0], words[1], words[2:]
        if command == "-N":
            if chain in work.chains:
                raise Refused("Chain already exists.")
            self._declare(work, table, [chain])
            return
        if chain not in work.chains:
            raise Refused("No chain/target/match by that name.")
        rules = work.chains[chain]
        if command == "-A":
            rules.append(self._checked_rule(work, table, version, rest))
        elif command == "-I":
            position = 1
            if rest and rest[0].isdigit():
                position, rest = int(rest[0]), rest[1:]
            if not 1 <= position <= len(rules) + 1:
                raise Refused("Index of insertion too big.")
            rules.insert(position - 1, self._checked_rule(work, table, version, rest))
        elif command == "-D":
            if rest and rest[0].isdigit() and len(rest) == 1:
                if not 1 <= int(rest[0]) <= len(rules):
                    raise Refused("Index of deletion too big.")
                del rules[int(rest[0]) - 1]
                return
            rule = self._checked_rule(work, table, version, rest)
            if rule not in rules:
                raise Refused("Bad rule (does a matching rule exist in that chain?).")
            rules.remove(rule)
        elif command == "-F":
            rules.clear()
        elif command == "-X":
            if chain in BUILTINS[table] or rules or work.references(chain):
                raise Refused("CHAIN_DEL failed (Device or resource busy)")
            del work.chains[chain]
        elif command == "-P":
            self._declare(work, table, [chain, *rest[:1]])
        else:
            raise Refused(f'unknown option "{command}"', parse=True)

    def _checked_rule(self, work: Table, table: str, version: int, rule: Rule) -> Rule:
        """`rule`, if iptables would load it: its modules, target and sets exist."""
        for flag, value in itertools.pairwise(rule):
            if flag in ("-m", "--match") and value in self.missing_modules:
                raise Refused(f"Couldn't load match `{value}':No such file or directory", True)
        target = _target(rule)
        if target is not None and target not in work.chains:
            if not _EXTENSION_TARGET.fullmatch(target):
                raise Refused(f"Couldn't load target `{target}':No such file or directory", True)
        if target is not None and target in BUILTINS[table]:
            raise Refused("RULE_APPEND failed (Operation not supported)")
        for set_name in _match_sets(rule):
            found = self.sets.get(set_name)
            if found is None:
                raise Refused(f"Set {set_name} doesn't exist.", parse=True)
            if found.family != ("inet" if version == 4 else "inet6"):
                raise Refused(
                    f"The protocol family of set {set_name} is IPv{10 - version}, which is not "
                    "applicable.",
                    parse=True,
                )
        return rule

    def _iptables_save(self, version: int, table: str) -> str:
        model = self.tables[(version, table)]
        builtins = [c for c in BUILTINS[table] if c in model.chains]
        others = sorted(c for c in model.chains if c not in BUILTINS[table])
        lines = ["# Generated by the fake kernel", f"*{table}"]
        lines += [f":{c} {model.policies[c]} [0:0]" for c in builtins]
        lines += [f":{c} - [0:0]" for c in others]
        for chain in builtins + others:
            lines += [f"-A {chain} {rule_text(rule)}" for rule in model.chains[chain]]
        lines += ["COMMIT", "# Completed"]
        return "\n".join(lines) + "\n"

    # -- ipset ------------------------------------------------------------------------------------

    def _ipset_restore(self, text: str) -> tuple[int, str, str]:
        """ipset restore as libipset runs it: line by line, except that consecutive add/del lines
        of one set wait, to go to the kernel as one batch when a line of another kind or set
        comes (or COMMIT, or the end). So a line refused before it reaches the kernel (a member
        that does not parse, an add/del naming a missing set) also drops the batch waiting, and
        in a batch the kernel keeps the elements before a refused one."""
        batch: list[tuple[int, str, list[str], bool]] = []  # (line, command, members, -exist)
        batch_set: str | None = None
        number = 0
        try:
            for number, line in enumerate(text.splitlines(), 1):
                words = line.split()
                if not words:
                    continue
                if words[0] in ("add", "del") and len(words) > 2:
                    found = self.sets.get(words[1])
                    if found is None:
                        raise Refused("The set with the given name does not exist")
                    members = _members(words[2], found)
                    if words[1] != batch_set:
                        self._send(batch_set, batch)
                        batch, batch_set = [], words[1]
                    batch.append((number, words[0], members, "-exist" in words))
                    continue
                self._send(batch_set, batch)
                batch, batch_set = [], None
                if words[0] != "COMMIT":
                    self._ipset_line(words)
            self._send(batch_set, batch)
        except Refused as refused:
            if refused.parse:  # no line number: ipset did not get as far as running it
                help_line = "Try `ipset help' for more information.\n"
                return 2, "", f"ipset v7.17: {refused}\n{help_line}"
            at = refused.line or number
            return 1, "", f"ipset v7.17: Error in line {at}: {refused}\n"
        return 0, "", ""

    def _send(self, name: str | None, batch: list[tuple[int, str, list[str], bool]]) -> None:
        """One batch of add/del lines of set `name`, applied by the kernel up to a refused one."""
        for number, command, members, exist in batch:
            assert name is not None
            for member in members:
                try:
                    self._ipset_member(command, self.sets[name], member, exist)
                except Refused as refused:
                    refused.line = number
                    raise

    def _ipset_line(self, words: list[str]) -> None:
        """One line other than a well-formed add or del."""
        command, args = words[0], [w for w in words[1:] if w != "-exist"]
        exist = "-exist" in words
        if command in ("flush", "destroy") and not args:
            for name in list(self.sets):
                self._ipset_line([command, name])
            return
        if command not in ("create", "add", "del", "flush", "destroy", "swap") or not args:
            raise Refused(f"No command specified: unknown argument {command}", parse=True)
        name = args[0]
        if command == "create":
            self._ipset_create(name, args[1:], exist)
            return
        found = self.sets.get(name)
        if found is None:
            raise Refused("The set with the given name does not exist")
        if command in ("add", "del"):
            raise Refused("Syntax error: missing element")
        if command == "flush":
            found.members.clear()
        elif command == "destroy":
            if self.references(name):
                raise Refused("Set cannot be destroyed: it is in use by a kernel component")
            del self.sets[name]
        else:  # swap
            other = self.sets.get(args[1]) if len(args) > 1 else None
            if other is None:
                raise Refused("Sets cannot be swapped: the second set does not exist")
            if (found.set_type, found.family) != (other.set_type, other.family):
                raise Refused("The sets cannot be swapped: their type does not match")
            self.sets[name], self.sets[args[1]] = other, found  # references stay with names

    def _ipset_create(self, name: str, args: list[str], exist: bool) -> None:
        if len(name) > MAX_SET_NAME:
            raise Refused(f"Syntax error: setname '{name}' is longer than 31 characters")
        if not args or args[0] not in SET_TYPES:
            raise Refused("Syntax error: typename is not supported by the fake kernel")
        options = dict(zip(args[1::2], args[2::2], strict=False))
        new = IpSet(args[0], options.get("family", "inet"), int(options.get("maxelem", 65536)))
        old = self.sets.get(name)
        if old is not None:
            if not exist or old.params() != new.params():
                raise Refused("Set cannot be created: set with the same name already exists")
            return
        self.sets[name] = new

    @staticmethod
    def _ipset_member(command: str, found: IpSet, member: str, exist: bool) -> None:
        if command == "add":
            if member in found.members:
                if exist:
                    return
                raise Refused("Element cannot be added to the set: it's already added")
            if len(found.members) >= found.maxelem:
                raise Refused("Hash is full, cannot add more elements")
            found.members.append(member)
        elif member in found.members:
            found.members.remove(member)
        elif not exist:
            raise Refused("Element cannot be deleted from the set: it's not added")

    def _ipset_list(self, terse: bool) -> str:
        blocks = []
        for name, s in self.sets.items():
            block = (
                f"Name: {name}\nType: {s.set_type}\nRevision: 6\n"
                f"Header: family {s.family} hashsize 1024 maxelem {s.maxelem} bucketsize 12 "
                f"initval 0x5e7a11ed\nSize in memory: 216\nReferences: {self.references(name)}\n"
                f"Number of entries: {len(s.members)}\n"
            )
            if not terse:
                block += "Members:\n" + "".join(f"{m}\n" for m in s.members)
            blocks.append(block)
        return "\n".join(blocks)

    def _ipset_save(self) -> str:
        lines = []
        for name, s in self.sets.items():
            header = f"family {s.family} hashsize 1024 maxelem {s.maxelem} bucketsize 12"
            lines.append(f"create {name} {s.set_type} {header} initval 0x5e7a11ed")
            lines += [f"add {name} {m}" for m in s.members]
        return "".join(f"{line}\n" for line in lines)

    # -- proxy NDP --------------------------------------------------------------------------------

    def _proxy(self, command: str, address: str, interface: str) -> tuple[int, str, str]:
        if interface not in self.links:
            return 1, "", f'Cannot find device "{interface}"\n'
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return 1, "", f'Error: inet6 prefix is expected rather than "{address}".\n'
        if ip.version != 6:
            return 1, "", f'Error: inet6 address is expected rather than "{address}".\n'
        entry = (interface, str(ip))
        if command == "del":
            if entry not in self.proxies:
                return 2, "", "RTNETLINK answers: No such file or directory\n"
            self.proxies.discard(entry)
        elif command in ("add", "replace"):
            if command == "add" and entry in self.proxies:
                return 2, "", "RTNETLINK answers: File exists\n"
            self.proxies.add(entry)
        else:
            raise AssertionError(f"the fake kernel does not model ip neigh {command}")
        return 0, "", ""


def _members(text: str, found: IpSet) -> list[str]:
    """The entries one add/del line means, spelled as ipset lists them."""
    family = 4 if found.family == "inet" else 6
    refused = Refused(f"Syntax error: cannot parse {text}: resolving to IPv{family} address failed")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise refused from None
    if net.version != family:
        raise refused
    if net.prefixlen == net.max_prefixlen:
        return [str(net.network_address)]
    if found.set_type == "hash:ip":
        assert net.num_addresses <= 1 << 16, text  # ipset adds every address of the range
        return [str(ip) for ip in net]
    if net.prefixlen == 0:
        raise Refused("The value of the CIDR parameter of the IP address is invalid")
    return [str(net)]


def _ipt_error(tool: str, number: int, message: str, parse: bool) -> str:
    """Restore's error text: parse problems name the line as legacy and nft both do; kernel
    problems as iptables-nft-restore does ("line N failed: ...")."""
    base = re.sub(r"-(nft|legacy)", "", tool)
    if parse:
        return (
            f"{base} v1.8.9 (nf_tables): {message}\nError occurred at line: {number}\n"
            f"Try `{base} -h' or '{base} --help' for more information.\n"
        )
    return f"{base}: line {number} failed" + (f": {message}\n" if message else "\n")


def declared_chains(restore_input: str) -> set[str]:
    """The chains one iptables-restore input declares (creates or rewrites)."""
    return {line[1:].split()[0] for line in restore_input.splitlines() if line.startswith(":")}


def hook_targets(kernel: FakeKernel, table: str, version: int = 4) -> dict[str, list[str]]:
    """Built-in chain -> the chains its plain jumps go to, in order."""
    model = kernel.tables[(version, table)]
    return {
        chain: [r[1] for r in model.chains[chain] if len(r) == 2 and r[0] == "-j"]
        for chain in BUILTINS[table]
    }
