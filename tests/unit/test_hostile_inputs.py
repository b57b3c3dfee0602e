"""Hostile strings through every key segment and every string field, into the kernel's input.

Issue 12: whatever a tenant (through Neutron) or anyone with etcd access writes, nothing may
reach ``iptables-restore`` or ``ipset restore`` except the rules Felix meant to write. One
complete data model (endpoints local and remote, a host endpoint, a profile with every kind of
rule, a tier and policy, a pool, bird_ip) is fed through the calculation graph and the
dataplane manager into the real IptablesTable and IpsetTable drivers, whose commands a fake
runner records. Then, for every hostile string in every slot (each ID segment of each key,
each string in each value, each label name, an interface name from the kernel):

* nothing raises (the object is refused or handled; the rest is programmed);
* no chain is refused as unsafe: the renderers never produced text the last check stops;
* the restore input is exactly the intended rules: one table header and one COMMIT, every
  ``-A`` line in a chain Felix declared or a built-in hook, as many ``-A`` lines per chain as
  the rules Felix asked for, every jump to a known target, every line one safe line;
* every ``ipset restore`` line is one command on a ``felix-`` set with a valid address.

The cases are enumerated, not sampled: every slot meets every hostile string, every run.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import create_autospec

import pytest

from calico.common.etcd.syncer import SyncStatus
from calico.felix.calc.graph import CalcGraph
from calico.felix.dataplane import names
from calico.felix.dataplane.backends import TABLES
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import IptablesTable
from calico.felix.kernel.iptables_text import BUILTIN_CHAINS, tokens, unsafe_rule
from calico.felix.kernel.routes import RouteTable

HOST = "h1"
HOSTILE = [
    "a\nb",
    "x\n-A felix-FORWARD -j ACCEPT",
    "\nCOMMIT\n*filter\n:felix-X - [0:0]\n",
    '"',
    'a" -j ACCEPT -m comment --comment "',
    "'",
    "\\",
    "-A",
    "-j ACCEPT",
    "COMMIT",
    "*filter",
    "\x00",
    "\r",
    "\t",
    "x" * 5000,
    "\u00e9\u4e2d\U0001f600",
    "..",
    "eth+",
    "a b",
    "#x",
    "add felix-v4-x 1.2.3.4",
    "",
    # ipaddress accepts an IPv6 scope of almost any text after "%" and prints it back.
    "fd00:65::2%x\n-A felix-FORWARD -j ACCEPT",
    "fd00:65::2%x -j ACCEPT/128",
    "fd00:65::/64%x",
]

# A complete model: key -> value (JSON-able, or a plain string for bird_ip and Ready).
LOCAL = f"/calico/v1/host/{HOST}/workload/openstack/vm1/endpoint/port1"
REMOTE = "/calico/v1/host/h2/workload/openstack/vm2/endpoint/port2"
HEP = f"/calico/v1/host/{HOST}/endpoint/hep1"
BASE: dict[str, Any] = {
    "/calico/v1/Ready": "true",
    LOCAL: {
        "state": "active",
        "name": "tap1",
        "mac": "02:00:00:00:00:01",
        "profile_ids": ["prof1"],
        "ipv4_nets": ["10.65.0.2/32"],
        "ipv6_nets": ["fd00:65::2/128"],
        "ipv4_gateway": "10.65.0.1",
        "ipv6_gateway": "fd00:65::1",
        "ipv4_nat": [{"int_ip": "10.65.0.2", "ext_ip": "198.18.5.2"}],
        "labels": {"app": "web"},
    },
    REMOTE: {
        "state": "active",
        "name": "cali2",
        "profile_ids": ["prof1"],
        "ipv4_nets": ["10.65.1.2/32"],
        "labels": {"app": "db"},
    },
    HEP: {
        "expected_ipv4_addrs": ["198.18.0.1"],
        "profile_ids": ["prof1"],
        "labels": {"role": "uplink"},
    },
    "/calico/v1/policy/profile/prof1/rules": {
        "inbound_rules": [
            {
                "action": "allow",
                "protocol": "tcp",
                "src_tag": "prof1",
                "dst_ports": [80, "1000:2000"],
            },
            {"action": "log", "log_prefix": "seen", "src_net": "10.65.0.0/16"},
            {"src_selector": "app == 'web'", "!dst_selector": "has(app)", "protocol": "udp"},
            {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0, "ip_version": 4},
            {"action": "deny", "!protocol": "tcp", "dst_net": "fd00:65::/64"},
        ],
        "outbound_rules": [{"action": "next-tier"}, {}],
    },
    "/calico/v1/policy/profile/prof1/tags": ["prof1"],
    "/calico/v1/policy/profile/prof1/labels": {"env": "prod"},
    "/calico/v1/policy/tier/t1/metadata": {"order": 10},
    "/calico/v1/policy/tier/t1/policy/pol1": {
        "selector": "app == 'web' || role == 'uplink'",
        "order": 1,
        "inbound_rules": [{"action": "deny", "src_selector": "env == 'prod'"}],
        "outbound_rules": [{"action": "next-tier", "dst_tag": "prof1"}],
    },
    "/calico/v1/ipam/v4/pool/10.65.0.0-16": {"cidr": "10.65.0.0/16", "masquerade": True},
    f"/calico/v1/host/{HOST}/bird_ip": "198.18.0.1",
}

# Jump targets the renderer may use; anything else in a -j would be an injected target.
TARGETS = {"ACCEPT", "DROP", "RETURN", "MARK", "LOG", "NOTRACK", "DNAT", "SNAT", "MASQUERADE"}
_IPSET_LINE_RE = re.compile(r"(create|add|del|swap|destroy|flush) (felix-[A-Za-z0-9_.:-]+)(.*)")


# --- the slots ------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], str], None]


FIXED_SEGMENTS = set(
    "calico v1 host workload endpoint policy profile tier rules tags labels metadata ipam "
    "v4 v6 pool bird_ip Ready config".split()
) | {""}


def _key_slots(
    model: dict[str, Any] = BASE, fixed: set[str] = FIXED_SEGMENTS
) -> Iterator[tuple[str, Mutation]]:
    """Each variable ID segment of each key."""
    for key in model:
        for position, segment in enumerate(key.split("/")):
            if segment in fixed and not (segment == HOST and position == 4):
                continue

            def mutate(
                model: dict[str, Any], hostile: str, key: str = key, i: int = position
            ) -> None:
                parts = key.split("/")
                parts[i] = hostile
                model["/".join(parts)] = model.pop(key)

            yield f"key {key} segment {position}", mutate


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], bool]]:
    """(path to a string leaf, False) and (path to a dict whose keys are names, True)."""
    if isinstance(value, str):
        yield path, False
    elif isinstance(value, dict):
        if path and path[-1] == "labels":
            yield path, True
        for k, v in value.items():
            yield from _leaf_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaf_paths(v, (*path, i))


def _value_slots(model: dict[str, Any] = BASE) -> Iterator[tuple[str, Mutation]]:
    """Each string in each value, and each label name."""
    for key, value in model.items():
        if isinstance(value, str):

            def set_plain(model: dict[str, Any], hostile: str, key: str = key) -> None:
                model[key] = hostile

            yield f"value of {key}", set_plain
            continue
        for path, is_names in _leaf_paths(value):

            def mutate(
                model: dict[str, Any],
                hostile: str,
                key: str = key,
                path: tuple[Any, ...] = path,
                is_names: bool = is_names,
            ) -> None:
                parent = model[key]
                for step in path[:-1]:
                    parent = parent[step]
                if is_names:
                    labels = parent[path[-1]]
                    labels[hostile] = labels.pop(next(iter(labels)))
                else:
                    parent[path[-1]] = hostile

            yield f"{key} {'/'.join(map(str, path))}{' (name)' if is_names else ''}", mutate


SLOTS = dict([*_key_slots(), *_value_slots()])


# --- running the model ----------------------------------------------------------------------


class KernelRecorder:
    """The kernel as the table drivers see it, for exactly the commands they run here: answers
    iptables-save and ipset list with an empty kernel and records every restore input (checked
    by check_kernel_input). Any other command, or other arguments, fails the test."""

    def __init__(self) -> None:
        self.restores: list[tuple[str, str]] = []  # (command, input)

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        command, args = argv[0], argv[1:]
        if command in ("iptables-restore", "ip6tables-restore"):
            assert args == ["--noflush", "--verbose", "--wait", "10"], argv
            assert input is not None, argv
            self.restores.append((command, input))
            return subprocess.CompletedProcess(argv, 0, "", "")
        if argv == ["ipset", "restore"]:
            assert input is not None, argv
            self.restores.append((command, input))
            return subprocess.CompletedProcess(argv, 0, "", "")
        if command in ("iptables-save", "ip6tables-save"):
            assert len(args) == 2 and args[0] == "-t" and args[1] in TABLES, argv
            builtins = "".join(f":{c} ACCEPT [0:0]\n" for c in sorted(BUILTIN_CHAINS))
            return subprocess.CompletedProcess(argv, 0, f"*{args[1]}\n{builtins}COMMIT\n", "")
        if argv == ["ipset", "list", "-t"]:
            return subprocess.CompletedProcess(argv, 0, "", "")  # no sets
        raise AssertionError(f"a command the table drivers do not run: {argv}")


def no_routes(version: int) -> Any:
    """A route table with exactly RouteTable's interface (a call of any other method fails)
    that programs nothing."""
    return create_autospec(RouteTable, instance=True)


def program(model: dict[str, Any], interface: str = "eth0") -> tuple[KernelRecorder, KernelTables]:
    graph = CalcGraph(HOST, ("tap",))
    for key, value in model.items():
        graph.on_update(key, value if isinstance(value, str) else json.dumps(value))
    graph.on_status(SyncStatus.IN_SYNC)
    messages = graph.flush()
    runner = KernelRecorder()
    kernel = KernelTables(
        (4, 6),
        lambda v, t: IptablesTable(v, t, runner),
        lambda v: IpsetTable(v, runner),
        no_routes,
    )
    manager = DataplaneManager(RenderConfig(interface_prefixes=("tap",)), kernel, None)
    for message in messages:
        manager.on_message(message)
    manager.on_interface_update("tap1", True)
    manager.on_interface_addrs(interface, frozenset({"198.18.0.1/24"}))
    manager.apply()
    return runner, kernel


def check_kernel_input(runner: KernelRecorder, kernel: KernelTables) -> None:
    for table in kernel.iptables.values():
        assert not table.failed_chains, table.failed_chains
    by_table = {(t.ip_version, t.table): t for t in kernel.iptables.values()}
    for command, text in runner.restores:
        if command == "ipset":
            _check_ipset_input(text)
            continue
        version = 6 if command.startswith("ip6") else 4
        lines = text.split("\n")
        assert lines[-1] == "" and lines[-2] == "COMMIT", lines[-3:]
        assert lines[0].startswith("*") and sum(1 for x in lines if x.startswith("*")) == 1
        assert sum(1 for x in lines if x == "COMMIT") == 1
        table = by_table[(version, lines[0][1:])]
        declared = {x[1:].split()[0] for x in lines if x.startswith(":")}
        written: dict[str, int] = {}
        for line in lines[1:-2]:
            assert unsafe_rule(line) is None or line.startswith(":"), line
            if line.startswith(":"):
                assert re.fullmatch(r":felix-[A-Za-z0-9_.:/-]+ - \[0:0\]", line), line
                continue
            words = tokens(line)
            op, chain = words[0], words[1]
            if op in ("-I", "-D"):
                assert chain in BUILTIN_CHAINS and names.is_felix_name(words[-1]), line
                continue
            if op == "-X":
                continue
            assert op == "-A" and chain in declared, line
            written[chain] = written.get(chain, 0) + 1
            for flag, target in itertools.pairwise(words):
                if flag in ("-j", "-g"):
                    assert target in TARGETS or names.is_felix_name(target), line
        for chain, count in written.items():
            # Exactly as many rules as Felix asked for (or its stub): no rule became two.
            wanted = table.chains.get(chain)
            assert wanted is None or count == len(wanted), (chain, count, wanted)


def _check_ipset_input(text: str) -> None:
    for line in text.splitlines():
        if line == "COMMIT":
            continue
        match = _IPSET_LINE_RE.fullmatch(line)
        assert match is not None, line
        rest = match.group(3).split()
        if match.group(1) in ("add", "del"):
            ipaddress.ip_network(rest[0], strict=False)  # a valid address, nothing more
            assert len(rest) == 1, line


# --- the tests ------------------------------------------------------------------------------


def test_the_base_model_programs_every_feature() -> None:
    """The positive control: unmutated, the model renders endpoints, profiles, the policy,
    host endpoints, NAT and sets, so the hostile cases below exercise all of them."""
    runner, kernel = program(copy.deepcopy(BASE))
    check_kernel_input(runner, kernel)
    chains = set().union(*(t.chains for t in kernel.iptables.values()))
    assert {"felix-to-1", "felix-from-1", "felix-p-prof1-i", "felix-p-t1/pol1-i"} <= chains
    assert {"felix-to-eth0", names.CHAIN_FIP_DNAT} <= chains
    ipsets = "".join(text for cmd, text in runner.restores if cmd == "ipset")
    assert "create felix-v4-" in ipsets and "add felix-tmp-v4-" in ipsets, ipsets
    assert len(SLOTS) > 60  # every segment and string of the model above


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_hostile_strings_in_every_slot(slot: str) -> None:
    for hostile in HOSTILE:
        model = copy.deepcopy(BASE)
        SLOTS[slot](model, hostile)
        try:
            runner, kernel = program(model)
            check_kernel_input(runner, kernel)
        except AssertionError as e:
            raise AssertionError(f"{slot} = {hostile[:40]!r}: {e}") from None


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_interface_names_from_the_kernel(hostile: str) -> None:
    model = copy.deepcopy(BASE)
    runner, kernel = program(model, interface=hostile)
    check_kernel_input(runner, kernel)
