"""Hostile strings through every key segment and every string field, into the nft input.

The nftables counterpart of tests/unit/test_hostile_inputs.py (issue 12), whose complete data
model, hostile strings and slots it reuses: the model goes through the calculation graph and the
dataplane manager into the real NftTable driver, whose transactions a recording executor keeps.
For every hostile string in every slot (each ID segment of each key, each string in each value,
each label name, an interface name from the kernel):

* nothing raises, and no chain is refused as unsafe: the renderer never produced text the
  driver's last check stops;
* the nft input is exactly the intended commands: one command per line, each of the forms the
  driver writes, on ``inet felix`` only, every name one nft identifier Felix owns, every rule
  safe text ending in its hash comment, as many ``add rule`` lines per chain as rules asked for,
  every jump and goto to a Felix chain, every set element an address, a network or an
  interface's verdict.

The cases are enumerated, not sampled: every slot meets every hostile string, every run.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import test_hostile_inputs as base

from calico.common.etcd.syncer import SyncStatus
from calico.felix.calc.graph import CalcGraph
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.nft_rendering.base import ADDR_SET, NAME_RE, Chain
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.nft import NftTable
from calico.felix.kernel.nft_text import unsafe_element, unsafe_rule

NAME = r"felix-[A-Za-z0-9/_.-]+"
HEAD = rf"(add|flush|delete) (chain|set|map|element|rule) inet felix ({NAME})"
BASE_CHAIN = (
    r"\{ type (filter|nat) hook (prerouting|input|forward|output|postrouting) "
    r"priority -?\d+; policy accept; \}"
)
SET_SPEC = r"\{ type (ipv4_addr|ipv6_addr|ifname : verdict);( flags interval;)? \}"
_LINE_RE = re.compile(rf"{HEAD}(?: (.*))?")
_HASH_COMMENT_RE = re.compile(r' comment "[a-z2-7]{13}( [A-Za-z0-9 _.,:/()=+@!-]*)?"$')
_TARGET_RE = re.compile(r"\b(?:jump|goto) (\S+)")


class Recorder:
    """An executor with an empty kernel that records every transaction."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def run(self, script: str) -> tuple[int, str]:
        self.scripts.append(script)
        return 0, ""

    def list_json(self, family: str, table: str) -> tuple[int, str, str]:
        return 1, "", "Error: No such file or directory"

    def check(self, script: str) -> tuple[int, str]:
        return 0, ""


def program(model: dict[str, Any], interface: str = "eth0") -> tuple[Recorder, NftTable]:
    graph = CalcGraph(base.HOST, ("tap",))
    for key, value in model.items():
        graph.on_update(key, value if isinstance(value, str) else json.dumps(value))
    graph.on_status(SyncStatus.IN_SYNC)
    recorder = Recorder()
    table = NftTable(recorder)
    kernel = KernelTables((4, 6), None, None, base.no_routes, nft=table)
    manager = DataplaneManager(RenderConfig(interface_prefixes=("tap",)), kernel, None)
    for message in graph.flush():
        manager.on_message(message)
    manager.on_interface_update("tap1", True)
    manager.on_interface_addrs(interface, frozenset({"198.18.0.1/24"}))
    manager.apply()
    return recorder, table


def check_nft_input(recorder: Recorder, table: NftTable) -> None:
    assert not table.failed_chains, table.failed_chains
    assert len(recorder.scripts) == 1, "one transaction"
    lines = recorder.scripts[0].split("\n")
    assert lines[-1] == "" and lines[0] == "add table inet felix", lines[:1]
    rules: dict[str, int] = {}
    for line in lines[1:-1]:
        match = _LINE_RE.fullmatch(line)
        assert match is not None, line
        verb, kind, name, tail = match.groups()
        assert NAME_RE.fullmatch(name), line
        if kind == "rule":
            assert verb == "add" and tail is not None, line
            assert unsafe_rule(tail) is None and _HASH_COMMENT_RE.search(tail), line
            for target in _TARGET_RE.findall(_HASH_COMMENT_RE.sub("", tail)):
                assert NAME_RE.fullmatch(target), line
            rules[name] = rules.get(name, 0) + 1
        elif kind == "element":
            assert tail is not None and tail.startswith("{ ") and tail.endswith(" }"), line
            for element in tail[2:-2].split(", "):
                assert not unsafe_element(element), line
        elif kind == "chain" and verb == "add" and tail is not None:
            assert re.fullmatch(BASE_CHAIN, tail), line
        elif kind in ("set", "map") and verb == "add":
            assert tail is not None and re.fullmatch(SET_SPEC, tail), line
        else:
            assert tail is None, line
    for chain, count in rules.items():
        # Exactly as many rules as Felix asked for (or its stub): no rule became two.
        assert count == len(table.written(chain)) if chain in table.chains else count == 1


def test_the_base_model_programs_every_feature() -> None:
    recorder, table = program(copy.deepcopy(base.BASE))
    check_nft_input(recorder, table)
    chains = set(table.chains)
    assert {"felix-to-1", "felix-from-1", "felix-p-prof1-i", "felix-p-t1/pol1-i"} <= chains
    assert {"felix-to-eth0", "felix-FIP-DNAT", "felix-FORWARD", "felix-FORWARD-TO"} <= chains
    assert any(name.startswith("felix-v4-") for name in table.sets)
    assert "add element inet felix felix-from-wl" in recorder.scripts[0]


@pytest.mark.parametrize("slot", sorted(base.SLOTS))
def test_hostile_strings_in_every_slot(slot: str) -> None:
    for hostile in base.HOSTILE:
        model = copy.deepcopy(base.BASE)
        base.SLOTS[slot](model, hostile)
        try:
            recorder, table = program(model)
            check_nft_input(recorder, table)
        except AssertionError as e:
            raise AssertionError(f"{slot} = {hostile[:40]!r}: {e}") from None


@pytest.mark.parametrize("hostile", base.HOSTILE)
def test_hostile_interface_names_from_the_kernel(hostile: str) -> None:
    recorder, table = program(copy.deepcopy(base.BASE), interface=hostile)
    check_nft_input(recorder, table)


def test_the_driver_refuses_what_the_renderer_never_writes() -> None:
    """The last check: a chain with an unsafe rule becomes a drop stub, never nft input."""
    recorder = Recorder()
    table = NftTable(recorder)
    for bad in (
        "accept; flush ruleset",
        "accept # x",
        'accept comment "a"b"',
        "jump filter-x",
        "drop\n",
    ):
        table.set_chain("felix-bad", Chain(("meta l4proto 6 accept", bad)))
        table.apply()
        assert "felix-bad" in table.failed_chains, bad
        script = recorder.scripts[-1]
        assert bad not in script and "WARNING Unsafe rule refused" in script, bad
    table.set_set("felix-v4-x", ADDR_SET[4], ["10.0.0.1", "10.0.0.2 }; flush ruleset; {"])
    table.apply()
    assert "flush ruleset" not in recorder.scripts[-1]
