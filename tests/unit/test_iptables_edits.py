"""edit_lines: a big chain changed in place with -D/-I lines instead of a rewrite.

Each answer is checked by playing its lines on the old rules the way iptables-restore does
(-D <n> removes the nth rule, -I <n> puts a rule at position n), which must give the new rules.
"""

from __future__ import annotations

import random

import pytest

from calico.felix.kernel.iptables_plan import EDIT_MIN_RULES, edit_lines

CHAIN = "felix-TO-EP-PFX-0"
END = '-m comment --comment "To unknown endpoint" -j DROP'


def entry(i: int) -> str:
    return f"-o tap{i:05d}abcdef -g felix-to-{i:05d}abcdef"


def leaf(indices: list[int]) -> list[str]:
    return [entry(i) for i in sorted(indices)] + [END]


def play(rules: list[str], lines: list[str]) -> list[str]:
    """What iptables-restore makes of `rules` after `lines`."""
    out = list(rules)
    for line in lines:
        op, chain, rest = line.split(" ", 2)
        assert chain == CHAIN
        if op == "-D":
            n = int(rest)
            assert 1 <= n <= len(out), "Index of deletion too big"
            del out[n - 1]
        else:
            assert op == "-I"
            number, rule = rest.split(" ", 1)
            n = int(number)
            assert 1 <= n <= len(out) + 1, "Index of insertion too big"
            out.insert(n - 1, rule)
    return out


def test_one_vm_added_is_one_insert_at_its_place() -> None:
    have = leaf(list(range(0, 60, 2)))
    want = leaf([*range(0, 60, 2), 31])
    lines = edit_lines(CHAIN, have, want)
    assert lines == [f"-I {CHAIN} 17 {entry(31)}"]
    assert play(have, lines) == want


def test_one_vm_removed_is_one_delete_by_position() -> None:
    have = leaf(list(range(40)))
    want = leaf([i for i in range(40) if i != 7])
    lines = edit_lines(CHAIN, have, want)
    assert lines == [f"-D {CHAIN} 8"]
    assert play(have, lines) == want


def test_deletes_go_first_from_the_last_then_inserts_from_the_first() -> None:
    have = leaf(list(range(0, 80, 2)))
    want = leaf([i for i in range(0, 80, 2) if i not in (4, 70)] + [1, 77, 79])
    lines = edit_lines(CHAIN, have, want)
    assert lines is not None
    assert [line.split()[0] for line in lines] == ["-D", "-D", "-I", "-I", "-I"]
    assert lines[0] == f"-D {CHAIN} 36"  # 70 is the 36th rule: deleted before the 3rd (4)
    assert play(have, lines) == want


@pytest.mark.parametrize("seed", range(25))
def test_random_changes_play_out_to_the_wanted_chain(seed: int) -> None:
    rng = random.Random(seed)
    old = set(rng.sample(range(300), rng.randint(20, 120)))
    removed = set(rng.sample(sorted(old), rng.randint(0, len(old) // 5)))
    added = set(rng.sample(range(300, 600), rng.randint(0, len(old) // 5)))
    have, want = leaf(sorted(old)), leaf(sorted((old - removed) | added))
    lines = edit_lines(CHAIN, have, want)
    assert lines is not None
    assert len(lines) == len(removed) + len(added)
    assert play(have, lines) == want


def test_a_burst_that_doubles_a_leaf_is_still_an_edit() -> None:
    # 8 writers' keys interleave: every leaf gains as many entries as it had.
    have, want = leaf(list(range(0, 200, 2))), leaf(list(range(200)))
    lines = edit_lines(CHAIN, have, want)
    assert lines is not None and len(lines) == 100
    assert play(have, lines) == want


def test_small_chains_are_rewritten() -> None:
    have = leaf(list(range(EDIT_MIN_RULES - 3)))
    want = leaf(list(range(EDIT_MIN_RULES - 2)))
    assert len(have) < EDIT_MIN_RULES and len(want) < EDIT_MIN_RULES
    assert edit_lines(CHAIN, have, want) is None


def test_a_nearly_new_chain_is_rewritten() -> None:
    # More operations than half a rewrite's: writing it whole is cheaper.
    assert edit_lines(CHAIN, leaf([1]), leaf(list(range(40)))) is None
    assert edit_lines(CHAIN, leaf(list(range(40))), leaf([1, 2])) is None


def test_reordered_rules_cannot_be_said_by_position() -> None:
    have = [entry(i) for i in range(30)] + [END]
    want = [entry(i) for i in range(1, 30)] + [entry(0), END]  # entry 0 moved, nothing new
    assert edit_lines(CHAIN, have, want) is None


def test_a_rule_twice_makes_positions_ambiguous() -> None:
    have = leaf(list(range(30)))
    assert edit_lines(CHAIN, [*have[:-1], entry(3), END], have) is None
    assert edit_lines(CHAIN, have, [*have[:-1], entry(3), END]) is None


def test_a_rule_spelt_otherwise_in_the_kernel_is_replaced() -> None:
    # The model holds the kernel's spelling (learned); a rule it spells otherwise than we do
    # is not ours as written: it goes, and ours comes in its place.
    want = [f"-p tcp -m tcp --dport {p} -j ACCEPT" for p in range(1000, 1040)]
    have = list(want)
    have[5] = "-p tcp --dport 1005 -j ACCEPT"
    lines = edit_lines(CHAIN, have, want)
    assert lines == [f"-D {CHAIN} 6", f"-I {CHAIN} 6 {want[5]}"]
    assert play(have, lines) == want
