"""NftTable, the nftables backend's driver, against the real kernel in throwaway namespaces
(``nft`` through ``ip netns exec``; nothing runs in the root namespace): one transaction per
apply, a restart that rewrites nothing, repair of tampering, reads only when the generation
moved, graceful restart and the sweep, chains that fail closed, MaxIpsetSize, libnftables in
the namespace, and switching backends (each removes the other's state, nothing of the host's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from calico.felix.dataplane.nft_rendering.base import ADDR_SET, VERDICT_MAP, BaseChain, Chain
from calico.felix.kernel.commands import NetnsRunner
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import IptablesTable
from calico.felix.kernel.libnftables import NftCommand
from calico.felix.kernel.nft import NftTable
from calico.felix.kernel.nft_switch import (
    auto_uses_nftables,
    probe_nftables,
    remove_iptables_state,
    remove_nft_table,
)
from calico.lab.netns import NetNS

FORWARD = BaseChain("filter", "forward", -5)
DROP_SSH = "meta l4proto 6 th dport 22 drop"


def generation_in(ns: NetNS) -> Callable[[], int | None]:
    """The nf_tables generation of `ns` (read by a child process in it: never the root's)."""

    def read() -> int | None:
        code = "from calico.felix.kernel.nftables import nft_generation; print(nft_generation())"
        out = ns.run([sys.executable, "-c", code]).stdout.strip()
        return None if out == "None" else int(out)

    return read


@pytest.fixture
def ns(netns: Callable[[], NetNS]) -> Iterator[NetNS]:
    yield netns()


def nft(ns: NetNS, *args: str, check: bool = True) -> str:
    return ns.run(["nft", *args], check=check).stdout


def listing(ns: NetNS) -> dict[str, object]:
    text = nft(ns, "-j", "list", "table", "inet", "felix", check=False)
    chains: dict[str, list[str]] = {}
    sets: dict[str, list[object]] = {}
    for item in json.loads(text or '{"nftables": []}')["nftables"]:
        if "chain" in item:
            chains[item["chain"]["name"]] = []
        elif "rule" in item:
            chains[item["rule"]["chain"]].append(item["rule"].get("comment", ""))
        for kind in ("set", "map"):
            if kind in item:
                sets[item[kind]["name"]] = item[kind].get("elem", [])
    return {"chains": chains, "sets": sets}


def desired(table: NftTable) -> None:
    table.set_chain("felix-FORWARD", Chain(("jump felix-a", "iifname vmap @felix-wl"), FORWARD))
    table.set_chain("felix-a", Chain(("ip saddr @felix-v4-s accept", DROP_SSH)))
    table.set_chain("felix-b", Chain(('drop comment "endpoint b"',)))
    table.set_set("felix-v4-s", ADDR_SET[4], ["10.0.0.1", "10.0.0.2"])
    table.set_set("felix-wl", VERDICT_MAP, ['"tap1" : goto felix-b'])


def make(ns: NetNS, **kwargs: object) -> NftTable:
    return NftTable(NftCommand(NetnsRunner(ns.name)), **kwargs)  # type: ignore[arg-type]


def test_one_transaction_and_a_restart_that_rewrites_nothing(ns: NetNS) -> None:
    table = make(ns)
    desired(table)
    assert table.apply()
    assert not table.apply(), "nothing changed: nothing written"
    got = listing(ns)
    assert set(got["chains"]) == {"felix-FORWARD", "felix-a", "felix-b"}  # type: ignore[arg-type]
    assert got["sets"]["felix-v4-s"] == ["10.0.0.1", "10.0.0.2"]  # type: ignore[index]
    # A restarted driver reads the table and finds it as wanted: no transaction at all.
    again = make(ns)
    desired(again)
    assert not again.apply() and again.reads == 1
    # A change is one transaction with just what changed.
    again.add_elements("felix-v4-s", ADDR_SET[4], ["10.0.0.3"])
    again.set_chain("felix-b", Chain(("accept",)))
    assert again.apply()
    assert "felix-a" not in again.last_script and "10.0.0.3" in again.last_script


def test_refresh_repairs_tampering_and_reads_only_after_a_commit(ns: NetNS) -> None:
    table = make(ns, generation=generation_in(ns))
    desired(table)
    table.apply()
    assert not table.apply(force_refresh=True) and table.refresh_skipped
    reads = table.reads
    nft(ns, "flush", "chain", "inet", "felix", "felix-a")
    nft(ns, "delete", "element", "inet", "felix", "felix-v4-s", "{ 10.0.0.2 }")
    nft(ns, "insert", "rule", "inet", "felix", "felix-b", "accept")
    assert table.apply(force_refresh=True) and not table.refresh_skipped
    assert table.reads == reads + 1
    got = listing(ns)
    assert len(got["chains"]["felix-a"]) == 2  # type: ignore[index]
    assert len(got["chains"]["felix-b"]) == 1, "the foreign rule went"  # type: ignore[index]
    assert sorted(got["sets"]["felix-v4-s"]) == ["10.0.0.1", "10.0.0.2"]  # type: ignore[index]
    assert table.refresh_skipped is False
    assert not table.apply(force_refresh=True) and table.refresh_skipped
    # Even the whole table deleted (the base chain with it) comes back in one refresh.
    nft(ns, "delete", "table", "inet", "felix")
    assert table.apply(force_refresh=True)
    assert set(listing(ns)["chains"]) == {"felix-FORWARD", "felix-a", "felix-b"}  # type: ignore[arg-type]
    # A base chain recreated at another priority is put back at ours.
    ns.run(
        ["nft", "-f", "-"],
        input="flush chain inet felix felix-FORWARD\ndelete chain inet felix felix-FORWARD\n"
        "add chain inet felix felix-FORWARD { type filter hook forward priority 50; "
        "policy drop; }\n",
    )
    assert table.apply(force_refresh=True)
    assert "priority filter - 5; policy accept;" in nft(
        ns, "list", "chain", "inet", "felix", "felix-FORWARD"
    )


class AppendAfterCommit(NetnsRunner):
    """Another tool racing Felix: right after Felix's next transaction, before Felix reads
    anything, it appends a rule (``nft add rule inet felix <chain> ...``), once."""

    def __init__(self, ns_name: str):
        super().__init__(ns_name)
        self.pending: tuple[str, ...] | None = None

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = super().run(argv, input)
        if self.pending and argv[1:] == ["-f", "-"] and result.returncode == 0:
            foreign, self.pending = self.pending, None
            super().run(["nft", "add", "rule", "inet", "felix", *foreign]).check_returncode()
        return result


def test_refresh_removes_rules_another_tool_appends(ns: NetNS) -> None:
    """Issue 12, item 1, for nftables: rules appended to Felix's chains (a regular chain, the
    base chain, one wearing a copy of a Felix rule's hash comment) are removed by the refresh,
    also when appended right after Felix's own transaction."""
    runner = AppendAfterCommit(ns.name)
    table = NftTable(NftCommand(runner), generation=generation_in(ns))
    desired(table)
    table.apply()
    assert not table.apply(force_refresh=True)
    expected = nft(ns, "list", "table", "inet", "felix")

    ours = listing(ns)["chains"]["felix-b"][0]  # type: ignore[index]
    nft(ns, "add", "rule", "inet", "felix", "felix-a", "accept")
    nft(ns, "add", "rule", "inet", "felix", "felix-FORWARD", "accept")
    nft(ns, "add", "rule", "inet", "felix", "felix-b", "accept", "comment", f'"{ours}"')
    assert len(listing(ns)["chains"]["felix-b"]) == 2  # type: ignore[index]
    assert table.apply(force_refresh=True) and not table.refresh_skipped
    assert nft(ns, "list", "table", "inet", "felix") == expected
    assert not table.apply(force_refresh=True)

    # Right after a transaction of Felix's: the next refresh must read, and repair.
    table.set_chain("felix-b", Chain(("accept",)))
    runner.pending = ("felix-a", "accept")
    assert table.apply()
    assert len(listing(ns)["chains"]["felix-a"]) == 3  # type: ignore[index]
    assert table.apply(force_refresh=True) and not table.refresh_skipped
    assert len(listing(ns)["chains"]["felix-a"]) == 2  # type: ignore[index]
    assert not table.apply(force_refresh=True)


def test_graceful_restart_keeps_leftovers_until_the_sweep(ns: NetNS) -> None:
    first = make(ns)
    desired(first)
    first.set_chain("felix-old", Chain(("accept",)))
    first.set_set("felix-v4-old", ADDR_SET[4], ["10.9.9.9"])
    first.apply()
    second = make(ns)
    desired(second)
    second.apply()
    assert {"felix-old"} <= set(listing(ns)["chains"])  # type: ignore[arg-type]
    second.end_grace_period()
    second.apply()
    got = listing(ns)
    assert "felix-old" not in got["chains"] and "felix-v4-old" not in got["sets"]  # type: ignore[operator]
    # This run's own removals do not wait for the sweep.
    second.remove_chain("felix-b")
    second.set_set("felix-wl", VERDICT_MAP, [])
    second.apply()
    assert "felix-b" not in listing(ns)["chains"]  # type: ignore[operator]


def test_what_cannot_be_written_fails_closed(ns: NetNS) -> None:
    table = make(ns)
    desired(table)
    table.set_chain("felix-c", Chain(("jump felix-missing",)))
    table.set_chain("felix-d", Chain(("ip saddr @felix-v4-missing accept",)))
    table.set_chain("felix-e", Chain(("accept; flush ruleset",)))
    # A rule nft parses but the kernel refuses: a jump to a base chain.
    table.set_chain("felix-f", Chain(("jump felix-FORWARD",)))
    table.apply()
    chains = {
        name: nft(ns, "list", "chain", "inet", "felix", name)
        for name in ("felix-missing", "felix-d", "felix-e", "felix-f", "felix-a")
    }
    assert "WARNING Missing chain" in chains["felix-missing"]
    assert "WARNING Missing set" in chains["felix-d"]
    assert "WARNING Unsafe rule refused" in chains["felix-e"]
    assert "WARNING Failed to program chain" in chains["felix-f"]
    assert "@felix-v4-s accept" in chains["felix-a"], "the rest was applied"
    assert set(table.failed_chains) == {"felix-e", "felix-f"}
    # New content gets a new chance.
    table.set_chain("felix-f", Chain(("accept",)))
    table.apply()
    assert "felix-f" not in table.failed_chains


def test_max_elements(ns: NetNS) -> None:
    table = make(ns, max_elements=2)
    desired(table)
    table.apply()
    table.add_elements("felix-v4-s", ADDR_SET[4], ["10.0.0.3"])
    assert not table.apply(), "a set over MaxIpsetSize is left as it is"
    assert len(listing(ns)["sets"]["felix-v4-s"]) == 2  # type: ignore[index]


def test_libnftables_in_the_namespace(ns: NetNS) -> None:
    """The in-process path (what the driver uses), run by a child inside the namespace."""
    code = """
from calico.felix.kernel.commands import LocalRunner
from calico.felix.kernel.libnftables import LibNftables, NftCommand
from calico.felix.kernel.nft import NftTable
from calico.felix.kernel.nftables import GenerationReader
from calico.felix.dataplane.nft_rendering.base import Chain, BaseChain
lib = LibNftables(command=NftCommand(LocalRunner()))
table = NftTable(lib, generation=GenerationReader())
hook = BaseChain("filter", "input", -5)
table.set_chain("felix-IN", Chain(("meta l4proto 6 th dport 22 accept",), hook))
table.set_chain("felix-bad", Chain(("jump felix-IN",)))
assert table.apply()
assert set(table.failed_chains) == {"felix-bad"}
table.prepare()
table.apply(force_refresh=True)  # a refresh retries the refused chain
assert set(table.failed_chains) == {"felix-bad"}
table.remove_chain("felix-bad")
table.apply()
table.prepare()
assert not table.apply(force_refresh=True) and table.refresh_skipped
status, text, _ = lib.list_json("inet", "felix")
assert status == 0 and "felix-IN" in text
print("ok")
"""
    assert ns.run([sys.executable, "-c", code]).stdout.strip() == "ok"


def test_switching_backends_removes_the_other_ones_state_only(ns: NetNS) -> None:
    runner = NetnsRunner(ns.name)
    assert probe_nftables(runner) is None
    # NFTablesMode=Auto here: Debian 12's iptables is iptables-nft, and the probe passes.
    assert auto_uses_nftables(runner)[0]
    # The iptables backend's state, beside the host's own rule and set.
    filter_table = IptablesTable(4, "filter", runner)
    filter_table.set_chain("felix-INPUT", ["-j ACCEPT"])
    filter_table.set_hook("INPUT", "felix-INPUT")
    filter_table.apply()
    ipsets = IpsetTable(4, runner)
    ipsets.replace_members("s:abcdefghijklmnopqrst", ["10.0.0.1"])
    ipsets.apply()
    ns.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"])
    ns.run(["ipset", "create", "host-own", "hash:ip"])
    remove_iptables_state(runner)
    saved = ns.run(["iptables-save"]).stdout
    assert "felix-" not in saved and "--dport 2222 -j ACCEPT" in saved
    assert ns.run(["ipset", "list", "-n"]).stdout.split() == ["host-own"]
    # And the other way: Felix's table goes, another table stays.
    table = make(ns)
    desired(table)
    table.apply()
    nft(ns, "add", "table", "inet", "hosts-own")
    remove_nft_table(runner)
    tables = nft(ns, "list", "tables")
    assert "inet felix" not in tables and "inet hosts-own" in tables
    remove_nft_table(runner)  # nothing to do: no error either
