"""IpsetTable: unit tests against a small in-memory ipset model, then the real ipset tool inside
throwaway network namespaces (never the root namespace). The pure parsing it uses is tested in
tests/unit/test_ipset_text.py."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from calico.felix.dataplane import names
from calico.felix.kernel.commands import NetnsRunner, Streamed
from calico.felix.kernel.ipset_text import HASH_IP, HASH_NET, parse_ipset_list
from calico.felix.kernel.ipsets import IpsetError, IpsetTable, refresh_tables
from calico.lab.netns import NetNS

SID = "s:" + "a" * 36  # selector IDs are long: the kernel name is shortened with a hash
SID2 = "t:tag2"
V4 = names.ipset_name(SID, 4)
V4_TMP = names.ipset_temp_name(SID, 4)
V4_B = names.ipset_name(SID2, 4)


# -- an in-memory ipset, enough to check what IpsetTable writes -------------------------------


@dataclass
class FakeSet:
    set_type: str
    family: str
    maxelem: int
    members: set[str] = field(default_factory=set)
    references: int = 0


class FakeIpset:
    """Models ipset restore (partial application, "Error in line N") and ipset list [-t]."""

    def __init__(self) -> None:
        self.sets: dict[str, FakeSet] = {}
        self.restores: list[str] = []
        self.commands: list[list[str]] = []
        self.fail_next_restore: str | None = None  # stderr for a failure before any line runs

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(argv)
        if argv == ["ipset", "restore"]:
            assert input is not None
            self.restores.append(input)
            if self.fail_next_restore is not None:
                error, self.fail_next_restore = self.fail_next_restore, None
                return subprocess.CompletedProcess(argv, 1, "", error)
            error = self._restore(input.splitlines())
            return subprocess.CompletedProcess(argv, 1 if error else 0, "", error)
        if argv[:2] == ["ipset", "list"]:
            return subprocess.CompletedProcess(argv, 0, self._list(terse="-t" in argv), "")
        if argv == ["ipset", "save"]:
            return subprocess.CompletedProcess(argv, 0, self._save(), "")
        raise AssertionError(f"unexpected command {argv}")

    def _restore(self, lines: list[str]) -> str:
        for number, line in enumerate(lines, 1):
            problem = self._line(line.split())
            if problem:
                return f"ipset v7.17: Error in line {number}: {problem}\n"
        return ""

    def _line(self, words: list[str]) -> str | None:
        cmd, args = words[0], words[1:]
        if cmd == "COMMIT":
            return None
        name = args[0]
        if cmd == "create":
            opts = dict(zip(args[2::2], args[3::2], strict=False))
            new = FakeSet(args[1], opts["family"], int(opts["maxelem"]))
            old = self.sets.get(name)
            if old is None:
                self.sets[name] = new
                return None
            same = (old.set_type, old.family, old.maxelem) == (new.set_type, new.family,
                                                               new.maxelem)  # fmt: skip
            return None if same and "-exist" in args else "set with the same name already exists"
        if name not in self.sets:
            return "The set with the given name does not exist"
        target = self.sets[name]
        if cmd == "add":
            if args[1] in target.members:
                return "Element cannot be added to the set: it's already added"
            if len(target.members) >= target.maxelem:
                return "Hash is full, cannot add more elements"
            target.members.add(args[1])
        elif cmd == "del":
            if args[1] not in target.members:
                return "Element cannot be deleted from the set: it's not added"
            target.members.remove(args[1])
        elif cmd == "flush":
            target.members.clear()
        elif cmd == "destroy":
            if target.references:
                return "Set cannot be destroyed: it is in use by a kernel component"
            del self.sets[name]
        elif cmd == "swap":
            other = self.sets.get(args[1])
            if other is None:
                return "The set with the given name does not exist"
            if (other.set_type, other.family) != (target.set_type, target.family):
                return "The sets cannot be swapped: their type does not match"
            # Like the kernel: contents and parameters swap, references stay with the name.
            self.sets[name], self.sets[args[1]] = other, target
            other.references, target.references = target.references, other.references
        return None

    def _save(self) -> str:
        lines = []
        for name, s in self.sets.items():
            header = f"family {s.family} hashsize 1024 maxelem {s.maxelem} bucketsize 12"
            lines.append(f"create {name} {s.set_type} {header} initval 0x5e7a11ed")
            lines += [f"add {name} {m}" for m in sorted(s.members)]
        return "".join(f"{line}\n" for line in lines)

    def _list(self, terse: bool) -> str:
        blocks = []
        for name, s in self.sets.items():
            block = (
                f"Name: {name}\nType: {s.set_type}\nRevision: 6\n"
                f"Header: family {s.family} hashsize 1024 maxelem {s.maxelem} bucketsize 12\n"
                f"Size in memory: 200\nReferences: {s.references}\n"
                f"Number of entries: {len(s.members)}\n"
            )
            if not terse:
                block += "Members:\n" + "".join(f"{m}\n" for m in s.members)
            blocks.append(block)
        return "\n".join(blocks)


@pytest.fixture
def fake() -> FakeIpset:
    return FakeIpset()


def restore_lines(fake: FakeIpset, index: int = -1) -> list[str]:
    return fake.restores[index].splitlines()


# -- unit tests ------------------------------------------------------------------------------


def test_nothing_is_written_before_apply(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.remove_set(SID2)
    assert fake.commands == []
    assert not table.in_sync


def test_first_write_is_full_replace_in_one_restore(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake, max_size=1000)
    table.replace_members(SID, ["10.0.0.2", "10.0.0.1"])
    table.replace_members(SID2, ["10.0.0.3"])
    assert table.apply()
    assert len(fake.restores) == 1
    lines = restore_lines(fake)
    assert lines[-1] == "COMMIT"
    assert lines[: lines.index(f"destroy {V4_TMP}") + 1] == [
        f"create {V4} hash:ip family inet maxelem 1000 -exist",
        f"create {V4_TMP} hash:ip family inet maxelem 1000 -exist",
        f"flush {V4_TMP}",
        f"add {V4_TMP} 10.0.0.1",
        f"add {V4_TMP} 10.0.0.2",
        f"swap {V4_TMP} {V4}",
        f"destroy {V4_TMP}",
    ]
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2"}
    assert fake.sets[V4_B].members == {"10.0.0.3"}
    assert set(fake.sets) == {V4, V4_B}  # temp sets are gone
    assert table.in_sync


def test_later_changes_are_deltas(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1", "10.0.0.2"])
    table.apply()
    table.add_members(SID, ["10.0.0.3", "10.0.0.1"])
    table.remove_members(SID, ["10.0.0.2", "10.9.9.9"])
    assert table.apply()
    assert restore_lines(fake) == [f"del {V4} 10.0.0.2", f"add {V4} 10.0.0.3", "COMMIT"]
    table.replace_members(SID, ["10.0.0.3", "10.0.0.4"])
    assert table.apply()
    assert restore_lines(fake) == [f"del {V4} 10.0.0.1", f"add {V4} 10.0.0.4", "COMMIT"]
    assert fake.sets[V4].members == {"10.0.0.3", "10.0.0.4"}


def test_add_then_remove_coalesces(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.apply()
    table.add_members(SID, ["10.0.0.2"])
    table.remove_members(SID, ["10.0.0.2"])
    table.remove_members(SID, ["10.0.0.1"])
    table.add_members(SID, ["10.0.0.1"])
    assert table.apply()
    assert len(fake.restores) == 1  # nothing net changed: no second restore
    assert table.in_sync


def test_wrong_family_and_invalid_members_ignored(fake: FakeIpset) -> None:
    v4, v6 = IpsetTable(4, fake), IpsetTable(6, fake)
    mixed = ["10.0.0.1", "fd00::1", "10.0.0.2/32", "FD00:0::2/128", "bogus", "10.1.0.0/16"]
    for table in (v4, v6):
        table.replace_members(SID, mixed)
    v4.apply()
    v6.apply()
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2"}
    v6_set = fake.sets[names.ipset_name(SID, 6)]
    assert (v6_set.family, v6_set.members) == ("inet6", {"fd00::1", "fd00::2"})


def test_size_limit_blocks_update_until_it_drops(
    fake: FakeIpset, caplog: pytest.LogCaptureFixture
) -> None:
    table = IpsetTable(4, fake, max_size=3)
    table.replace_members(SID, ["10.0.0.1"])
    table.apply()
    table.add_members(SID, ["10.0.0.2", "10.0.0.3", "10.0.0.4"])
    table.replace_members(SID2, ["10.0.1.1"])  # other sets are still written
    with caplog.at_level(logging.ERROR):
        assert not table.apply()
    assert "will not be updated until size drops below 3" in caplog.text
    assert fake.sets[V4].members == {"10.0.0.1"}
    assert fake.sets[V4_B].members == {"10.0.1.1"}
    table.remove_members(SID, ["10.0.0.4"])
    assert table.apply()
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_delta_failure_falls_back_to_full_replace(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1", "10.0.0.2"])
    table.replace_members(SID2, ["10.0.1.1"])
    table.apply()
    fake.sets[V4].members.discard("10.0.0.2")  # someone else removed it behind our back
    fake.sets[V4].members.add("10.6.6.6")
    table.add_members(SID2, ["10.0.1.2"])  # sorts after V4: not yet run when V4's delta fails
    table.remove_members(SID, ["10.0.0.2"])
    table.add_members(SID, ["10.0.0.3"])
    assert table.apply()
    assert len(fake.restores) == 3  # initial, failed delta, retry with a full replace
    retry = restore_lines(fake)
    assert f"swap {V4_TMP} {V4}" in retry
    assert f"add {V4_B} 10.0.1.2" in retry  # the rest of the batch went with the retry
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.3"}
    assert fake.sets[V4_B].members == {"10.0.1.1", "10.0.1.2"}


def test_unattributable_failure_rewrites_everything_next_time(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.apply()
    table.add_members(SID, ["10.0.0.2"])
    fake.fail_next_restore = "ipset v7.17: Kernel error received: Out of memory\n"
    assert not table.apply()
    assert not table.in_sync
    assert table.apply()
    assert f"swap {V4_TMP} {V4}" in restore_lines(fake)
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2"}


def test_begin_writes_in_the_background_and_apply_takes_the_outcome(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.begin()
    table.begin()  # one at a time: a second call while the first runs starts nothing
    assert table.apply() is True
    assert len(fake.restores) == 1  # the apply found everything written: no second restore
    assert fake.sets[V4].members == {"10.0.0.1"}
    assert table.in_sync
    # A change made while a restore runs waits for it, and goes in the next write as a delta.
    table.add_members(SID, ["10.0.0.2"])
    table.begin()
    table.add_members(SID, ["10.0.0.3"])
    assert restore_lines(fake) == [f"add {V4} 10.0.0.2", "COMMIT"]
    assert table.apply() is True
    assert restore_lines(fake) == [f"add {V4} 10.0.0.3", "COMMIT"]
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_begin_leaves_destroys_to_apply(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.apply()
    table.remove_set(SID)
    table.begin()  # a rule may still use the set: only apply(destroy=...) may destroy it
    assert len(fake.restores) == 1
    assert table.apply() is True
    assert restore_lines(fake) == [f"destroy {V4}", "COMMIT"]


def test_a_failed_background_restore_is_rewritten_whole_by_apply(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.apply()
    table.add_members(SID, ["10.0.0.2"])
    fake.fail_next_restore = "ipset v7.17: Kernel error received: Out of memory\n"
    table.begin()
    assert table.apply() is True
    assert f"swap {V4_TMP} {V4}" in restore_lines(fake)  # unknown after the failure: replaced
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2"}


def test_a_background_restore_that_cannot_run_is_retried_by_apply(fake: FakeIpset) -> None:
    class Broken(FakeIpset):
        def run(
            self, argv: list[str], input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
            if argv == ["ipset", "restore"] and not self.restores:
                self.restores.append("(could not run)")
                raise FileNotFoundError("ipset")
            return super().run(argv, input)

    broken = Broken()
    table = IpsetTable(4, broken)
    table.replace_members(SID, ["10.0.0.1"])
    table.begin()
    assert table.apply() is True
    assert broken.sets[V4].members == {"10.0.0.1"}


def test_a_restore_that_breaks_off_leaves_its_sets_to_be_rewritten_whole() -> None:
    class BreaksOff(FakeIpset):
        breaks = False

        def run(
            self, argv: list[str], input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
            if argv == ["ipset", "restore"] and self.breaks:
                self.breaks = False
                assert input is not None
                self._restore(input.splitlines()[:1])  # ipset took a line, then was stopped
                raise RuntimeError("the rest of the input could not be made")
            return super().run(argv, input)

    runner = BreaksOff()
    table = IpsetTable(4, runner)
    table.replace_members(SID, ["10.0.0.1"])
    assert table.apply()
    table.add_members(SID, ["10.0.0.2", "10.0.0.3"])
    runner.breaks = True
    with pytest.raises(RuntimeError, match="could not be made"):
        table.apply()
    restores = len(runner.restores)
    assert table.apply() is True
    # Unknown after the break: rewritten whole at once (a delta would trip on the line ipset
    # already took, and only then fall back).
    assert len(runner.restores) == restores + 1
    assert f"swap {V4_TMP} {V4}" in restore_lines(runner)
    assert runner.sets[V4].members == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_a_save_that_breaks_off_leaves_no_table_half_read(fake: FakeIpset) -> None:
    class BreaksOff:
        breaks = False

        def run(
            self, argv: list[str], input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
            return fake.run(argv, input)

        @contextlib.contextmanager
        def stream(self, argv: list[str]) -> Iterator[Streamed]:
            text = fake.run(argv).stdout

            def lines() -> Iterator[str]:
                yield from io.StringIO(text).readlines()[:2]  # a set, then a line not UTF-8
                if self.breaks:
                    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

            yield Streamed(argv, 0, lines(), "")

    runner = BreaksOff()
    v4 = IpsetTable(4, runner)
    v4.replace_members(SID, ["10.0.0.1"])
    v4.replace_members("s:other", ["10.0.0.2"])
    assert v4.apply()
    runner.breaks = True
    with pytest.raises(UnicodeDecodeError):
        refresh_tables([v4])
    listed, written = fake.commands.count(["ipset", "list", "-t"]), len(fake.restores)
    assert v4.apply() is True  # what was half read is not trusted: the kernel is read again
    assert fake.commands.count(["ipset", "list", "-t"]) == listed + 1
    assert len(fake.restores) == written  # and it holds what we wrote: nothing to write


def test_replace_keeps_existing_main_set_parameters_alone(fake: FakeIpset) -> None:
    # A previous run made the set with another maxelem; "create -exist" would fail on it.
    fake.sets[V4] = FakeSet(HASH_IP, "inet", 65536, {"10.0.0.9"}, references=1)
    fake.sets[V4_TMP] = FakeSet(HASH_IP, "inet", 5, {"10.0.0.8"})  # leftover temp
    table = IpsetTable(4, fake, max_size=1000)
    table.replace_members(SID, ["10.0.0.1"])
    assert table.apply()
    assert len(fake.restores) == 1
    assert not any(line.startswith(f"create {V4} ") for line in restore_lines(fake))
    assert fake.sets[V4] == FakeSet(HASH_IP, "inet", 1000, {"10.0.0.1"}, references=1)
    assert V4_TMP not in fake.sets


def test_removed_set_destroyed_and_busy_one_retried(
    fake: FakeIpset, caplog: pytest.LogCaptureFixture
) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.replace_members(SID2, ["10.0.0.2"])
    table.apply()
    fake.sets[V4].references = 1  # an iptables rule still uses it
    table.remove_set(SID)
    table.remove_set(SID2)
    with caplog.at_level(logging.WARNING):
        assert not table.apply()
    assert "in use" in caplog.text
    assert set(fake.sets) == {V4}
    fake.sets[V4].references = 0
    assert table.apply()
    assert fake.sets == {}
    assert table.in_sync


def test_normal_path_never_lists_and_destroys_wait_for_destroy_pass(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.replace_members(SID2, ["10.0.0.2"])
    table.apply()
    fake.commands.clear()
    table.add_members(SID2, ["10.0.0.3"])
    table.remove_members(SID2, ["10.0.0.2"])
    table.remove_set(SID)
    # The update pass (before the rules are rewritten) writes the delta but no destroy.
    assert not table.apply(destroy=False)
    assert fake.commands == [["ipset", "restore"]]
    assert fake.restores[-1] == f"del {V4_B} 10.0.0.2\nadd {V4_B} 10.0.0.3\nCOMMIT\n"
    assert V4 in fake.sets
    # A destroy that fails because the set is still in use does not re-list the kernel.
    fake.sets[V4].references = 1
    fake.commands.clear()
    assert not table.apply()
    assert fake.commands == [["ipset", "restore"]]
    fake.sets[V4].references = 0
    assert table.apply()
    assert V4 not in fake.sets
    assert not any(argv[:2] == ["ipset", "list"] for argv in fake.commands)


def test_remove_before_first_write_destroys_nothing(fake: FakeIpset) -> None:
    fake.sets[V4] = FakeSet(HASH_IP, "inet", 1048576, {"10.0.0.1"})  # previous run's
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    table.remove_set(SID)
    assert table.apply()
    assert fake.restores == []
    assert V4 in fake.sets  # left for cleanup_orphans


def test_force_refresh_repairs_drift(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1", "10.0.0.2"])
    table.replace_members(SID2, ["10.0.1.1"])
    table.apply()
    fake.sets[V4].members = {"10.0.0.1", "10.7.7.7"}
    del fake.sets[V4_B]
    assert table.apply()  # without a refresh we do not notice
    assert len(fake.restores) == 1
    assert table.apply(force_refresh=True)
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2"}
    assert fake.sets[V4_B].members == {"10.0.1.1"}
    assert f"del {V4} 10.7.7.7" in restore_lines(fake)  # drifted set fixed by a delta


def test_refresh_that_finds_nothing_wrong_parses_no_members(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1", "10.0.0.2"])
    table.replace_members(SID2, ["10.0.1.1"])
    assert table.apply()
    # The first refresh after a write compares members (and remembers the kernel's text) ...
    assert table.apply(force_refresh=True)
    assert table.compared_sets == 2
    # ... later ones see the same text and compare nothing, and nothing is written.
    restores = len(fake.restores)
    assert table.apply(force_refresh=True)
    assert table.compared_sets == 0
    assert len(fake.restores) == restores
    assert ["ipset", "list"] not in fake.commands  # members are never listed one by one
    # A delta write makes that set's text unknown again: only it is compared.
    table.add_members(SID2, ["10.0.1.2"])
    assert table.apply()
    assert table.apply(force_refresh=True)
    assert table.compared_sets == 1


def test_refresh_repairs_a_set_edited_after_it_was_verified(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1", "10.0.0.2"])
    table.replace_members(SID2, ["10.0.1.1"])
    assert table.apply()
    assert table.apply(force_refresh=True)  # verified: digests remembered
    fake.sets[V4].members = {"10.0.0.1", "10.9.9.9"}  # same size, another member
    fake.sets[V4_B].members.clear()  # flushed
    assert table.apply(force_refresh=True)
    assert table.compared_sets == 2
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2"}
    assert fake.sets[V4_B].members == {"10.0.1.1"}
    del fake.sets[V4]  # destroyed
    assert table.apply(force_refresh=True)
    assert fake.sets[V4].members == {"10.0.0.1", "10.0.0.2"}


def test_named_hash_net_set(fake: FakeIpset) -> None:
    table = IpsetTable(4, fake)
    pools = names.IPSET_ALL_POOLS
    table.replace_named(pools, HASH_NET, ["10.65.0.0/16", "10.66.1.7/16", "10.1.2.3/32"])
    assert table.apply()
    assert fake.sets[pools].set_type == HASH_NET
    assert fake.sets[pools].members == {"10.65.0.0/16", "10.66.0.0/16", "10.1.2.3"}
    assert f"create {pools}-tmp hash:net family inet maxelem 1048576 -exist" in restore_lines(fake)
    table.replace_named(pools, HASH_NET, ["10.65.0.0/16"])
    assert table.apply()
    assert restore_lines(fake)[:2] == [f"del {pools} 10.1.2.3", f"del {pools} 10.66.0.0/16"]
    table.remove_named(pools)
    assert table.apply()
    assert pools not in fake.sets


def test_cleanup_orphans(fake: FakeIpset) -> None:
    for name, family in [
        ("felix-v4-old", "inet"),
        ("felix-tmp-v4-old", "inet"),
        ("felix-v4-busy", "inet"),
        ("felix-v6-old", "inet6"),
        ("host-set", "inet"),
        (V4, "inet"),
    ]:
        fake.sets[name] = FakeSet(HASH_IP, family, 65536)
    fake.sets["felix-v4-busy"].references = 1
    table = IpsetTable(4, fake)
    table.replace_members(SID, ["10.0.0.1"])
    assert table.cleanup_orphans() == ["felix-tmp-v4-old", "felix-v4-old"]
    assert set(fake.sets) == {"felix-v4-busy", "felix-v6-old", "host-set", V4}


# -- real ipset inside network namespaces ------------------------------------------------------

MakeNS = Callable[[], NetNS]


def kernel_sets(ns: NetNS) -> dict[str, frozenset[str]]:
    listing = parse_ipset_list(ns.run(["ipset", "list"]).stdout)
    return {name: s.members or frozenset() for name, s in listing.items()}


def test_ipsets_are_per_namespace(netns: MakeNS) -> None:
    # Safety premise for everything below: sets made in a test namespace stay there.
    a, b = netns(), netns()
    a.run(["ipset", "create", "felix-probe", "hash:ip"])
    assert "felix-probe" not in b.run(["ipset", "list", "-n"]).stdout


def _both_families(ns: NetNS) -> tuple[_CountingRunner, IpsetTable, IpsetTable]:
    """A v4 and a v6 table in `ns`, each holding its half of one set of four members."""
    runner = _CountingRunner(NetnsRunner(ns.name))
    v4, v6 = IpsetTable(4, runner), IpsetTable(6, runner)
    for table in (v4, v6):
        table.replace_members(SID, ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"])
        assert table.apply()
    return runner, v4, v6


def test_real_v4_v6_sets_and_deltas(netns: MakeNS) -> None:
    ns = netns()
    runner, v4, v6 = _both_families(ns)
    v6_name = names.ipset_name(SID, 6)
    assert kernel_sets(ns) == {
        V4: {"10.0.0.1", "10.0.0.2"},
        v6_name: {"fd00::1", "fd00::2"},
    }
    header = ns.run(["ipset", "list", "-t", v6_name]).stdout
    assert "family inet6" in header and "maxelem 1048576" in header
    for table in (v4, v6):
        table.add_members(SID, ["10.0.0.3", "fd00::3"])
        table.remove_members(SID, ["10.0.0.1", "fd00::1"])
        assert table.apply()
    assert kernel_sets(ns) == {
        V4: {"10.0.0.2", "10.0.0.3"},
        v6_name: {"fd00::2", "fd00::3"},
    }
    # A refresh finds nothing to repair: the kernel's spelling matches ours.
    restores = runner.restores
    assert v4.apply(force_refresh=True) and v6.apply(force_refresh=True)
    assert runner.restores == restores
    # The next one sees the same `ipset save` text and compares no members at all.
    assert v4.apply(force_refresh=True) and v6.apply(force_refresh=True)
    assert (v4.compared_sets, v6.compared_sets) == (0, 0)
    # A member swapped by hand (same size) is found and repaired.
    ns.run(["ipset", "del", V4, "10.0.0.2"])
    ns.run(["ipset", "add", V4, "10.9.9.9"])
    assert v4.apply(force_refresh=True)
    assert v4.compared_sets == 1
    assert kernel_sets(ns)[V4] == {"10.0.0.2", "10.0.0.3"}


class _CountingRunner:
    def __init__(self, inner: NetnsRunner, save_fails: bool = False) -> None:
        self.inner = inner
        self.restores = 0
        self.saves = 0
        self.save_fails = save_fails

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.restores += argv == ["ipset", "restore"]
        self.saves += argv == ["ipset", "save"]
        if self.save_fails and argv == ["ipset", "save"]:
            return subprocess.CompletedProcess(argv, 1, "", "ipset v7.17: Kernel error\n")
        return self.inner.run(argv, input)


def test_real_one_save_refreshes_both_families_set_by_set(netns: MakeNS) -> None:
    ns = netns()
    runner, v4, v6 = _both_families(ns)
    v6_name = names.ipset_name(SID, 6)
    ns.run(["ipset", "add", V4, "10.9.9.9"])
    ns.run(["ipset", "flush", v6_name])
    refresh_tables([v4, v6])
    assert runner.saves == 1
    assert (v4.compared_sets, v6.compared_sets) == (1, 1)
    for table in (v4, v6):  # (already compared: no second read)
        assert table.apply(force_refresh=True, refreshed=True)
    assert runner.saves == 1
    assert kernel_sets(ns) == {V4: {"10.0.0.1", "10.0.0.2"}, v6_name: {"fd00::1", "fd00::2"}}

    # A save that fails changes nothing: each table stays as it was, and says so.
    ns.run(["ipset", "del", V4, "10.0.0.1"])
    runner.save_fails = True
    with pytest.raises(IpsetError, match="Kernel error"):
        refresh_tables([v4, v6])
    assert not v4.apply(force_refresh=True)  # (reads again itself, and fails again)
    runner.save_fails = False
    assert v4.apply(force_refresh=True)
    assert kernel_sets(ns)[V4] == {"10.0.0.1", "10.0.0.2"}


def test_real_swap_replace_while_referenced_and_removal(netns: MakeNS) -> None:
    ns = netns()
    table = IpsetTable(4, NetnsRunner(ns.name))
    table.replace_members(SID, ["10.0.0.1"])
    assert table.apply()
    rule = ["INPUT", "-m", "set", "--match-set", V4, "src", "-j", "DROP"]
    ns.run(["iptables", "-A", *rule])
    # A restarted Felix (new table) rewrites the referenced set by swap, with a new maxelem.
    table = IpsetTable(4, NetnsRunner(ns.name), max_size=5000)
    table.replace_members(SID, ["10.0.0.7", "10.0.0.8"])
    assert table.apply()
    assert kernel_sets(ns) == {V4: {"10.0.0.7", "10.0.0.8"}}
    assert "maxelem 5000" in ns.run(["ipset", "list", "-t", V4]).stdout
    ns.run(["iptables", "-C", *rule])  # the rule still matches on the (swapped) set
    # While the rule exists the set cannot go; it is destroyed once the rule is gone.
    table.remove_set(SID)
    assert not table.apply()
    assert V4 in kernel_sets(ns)
    ns.run(["iptables", "-D", *rule])
    assert table.apply()
    assert kernel_sets(ns) == {}


def test_real_hash_net_pool_set(netns: MakeNS) -> None:
    ns = netns()
    table = IpsetTable(4, NetnsRunner(ns.name))
    table.replace_named(names.IPSET_MASQ_POOLS, HASH_NET, ["10.65.0.0/16", "fd00::/64"])
    assert table.apply()
    table.replace_named(names.IPSET_MASQ_POOLS, HASH_NET, ["10.65.0.0/16", "192.168.3.0/24"])
    assert table.apply()
    assert kernel_sets(ns) == {names.IPSET_MASQ_POOLS: {"10.65.0.0/16", "192.168.3.0/24"}}
    assert "Type: hash:net" in ns.run(["ipset", "list", "-t"]).stdout


def test_real_repair_after_flush_and_destroy(netns: MakeNS) -> None:
    ns = netns()
    table = IpsetTable(4, NetnsRunner(ns.name))
    table.replace_members(SID, ["10.0.0.1", "10.0.0.2"])
    table.replace_members(SID2, ["10.0.1.1"])
    assert table.apply()
    ns.run(["ipset", "flush", V4])
    ns.run(["ipset", "destroy", V4_B])
    assert table.apply(force_refresh=True)
    assert kernel_sets(ns) == {V4: {"10.0.0.1", "10.0.0.2"}, V4_B: {"10.0.1.1"}}
    # Without a refresh, a delta that no longer fits the kernel falls back to a full replace.
    ns.run(["ipset", "destroy", V4_B])
    table.add_members(SID2, ["10.0.1.2"])
    assert table.apply()
    assert kernel_sets(ns)[V4_B] == {"10.0.1.1", "10.0.1.2"}


def test_real_orphan_cleanup(netns: MakeNS) -> None:
    ns = netns()
    old_v4 = names.ipset_name("t:gone", 4)
    old_tmp = names.ipset_temp_name("t:gone", 4)
    busy = names.ipset_name("t:busy", 4)
    other_family = names.ipset_name("t:gone", 6)
    for name, family in [
        (old_v4, "inet"), (old_tmp, "inet"), (busy, "inet"), (other_family, "inet6"),
        ("host-owned", "inet"), (names.IPSET_ALL_POOLS, "inet"),
    ]:  # fmt: skip
        ns.run(["ipset", "create", name, "hash:ip", "family", family])
    ns.run(["iptables", "-A", "INPUT", "-m", "set", "--match-set", busy, "dst", "-j", "DROP"])
    table = IpsetTable(4, NetnsRunner(ns.name))
    table.replace_members(SID, ["10.0.0.1"])
    assert table.apply()
    assert sorted(table.cleanup_orphans()) == sorted([old_v4, old_tmp])
    assert set(kernel_sets(ns)) == {V4, busy, other_family, "host-owned", names.IPSET_ALL_POOLS}


def test_real_large_set_in_one_restore(netns: MakeNS) -> None:
    ns = netns()
    runner = _CountingRunner(NetnsRunner(ns.name))
    table = IpsetTable(4, runner)
    members = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(20000)]
    table.replace_members(SID, members)
    start = time.monotonic()
    assert table.apply()
    assert time.monotonic() - start < 5
    assert runner.restores == 1
    assert "Number of entries: 20000" in ns.run(["ipset", "list", "-t", V4]).stdout
    table.remove_members(SID, members[:100])
    assert table.apply()
    assert "Number of entries: 19900" in ns.run(["ipset", "list", "-t", V4]).stdout


def test_real_packets_dropped_for_members_only(netns: MakeNS) -> None:
    sender, receiver = netns(), netns()
    sender.add_veth_to(receiver, "veth-s", "veth-r")
    sender.add_addr("veth-s", "10.65.0.1/24")
    receiver.add_addr("veth-r", "10.65.0.2/24")
    sender.set_up("veth-s")
    receiver.set_up("veth-r")
    table = IpsetTable(4, NetnsRunner(receiver.name))
    table.replace_members(SID, ["10.65.0.1", "10.65.0.99"])
    assert table.apply()
    receiver.run(["iptables", "-A", "INPUT", "-p", "icmp", "-m", "set", "--match-set", V4, "src",
                  "-j", "DROP"])  # fmt: skip

    def ping() -> bool:
        argv = ["ping", "-c", "1", "-W", "1", "10.65.0.2"]
        return sender.run(argv, check=False).returncode == 0

    assert not ping()
    table.remove_members(SID, ["10.65.0.1"])
    assert table.apply()
    assert ping()
