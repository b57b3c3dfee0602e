"""The selector/label matching engine, checked by scenarios and against the linear-scan oracle."""

from __future__ import annotations

import random
from collections.abc import Collection, Hashable

import pytest

from calico.common.labelindex import LabelIndex, LinearScanIndex
from calico.common.selectors import parse_selector

IndexType = type[LabelIndex] | type[LinearScanIndex]
BOTH = pytest.mark.parametrize("index_class", [LabelIndex, LinearScanIndex])


class Recorder:
    """Collects callbacks, checks they are idempotent and mirrors the match set they imply."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Hashable, Hashable]] = []
        self.current: set[tuple[Hashable, Hashable]] = set()

    def started(self, sel_id: Hashable, item_id: Hashable) -> None:
        assert (sel_id, item_id) not in self.current, f"duplicate start {sel_id}/{item_id}"
        self.current.add((sel_id, item_id))
        self.events.append(("start", sel_id, item_id))

    def stopped(self, sel_id: Hashable, item_id: Hashable) -> None:
        assert (sel_id, item_id) in self.current, f"stop of non-match {sel_id}/{item_id}"
        self.current.remove((sel_id, item_id))
        self.events.append(("stop", sel_id, item_id))

    def item_started(self, item_id: Hashable, sel_ids: Collection[Hashable]) -> None:
        """The batched form: one call for all of an item's new matches."""
        assert sel_ids, f"empty batch for {item_id}"
        for sel_id in sel_ids:
            self.started(sel_id, item_id)

    def take(self) -> set[tuple[str, Hashable, Hashable]]:
        events = set(self.events)
        self.events.clear()
        return events


def make(
    index_class: IndexType, *, batched: bool = False
) -> tuple[LabelIndex | LinearScanIndex, Recorder]:
    recorder = Recorder()
    if batched:
        return index_class(recorder.started, recorder.stopped, recorder.item_started), recorder
    return index_class(recorder.started, recorder.stopped), recorder


@BOTH
def test_selector_then_items(index_class: IndexType) -> None:
    index, rec = make(index_class)
    index.update_selector("s1", parse_selector("role == 'web'"))
    assert rec.take() == set()
    index.update_labels("e1", {"role": "web"})
    assert rec.take() == {("start", "s1", "e1")}
    index.update_labels("e2", {"role": "db"})
    assert rec.take() == set()
    index.update_labels("e2", {"role": "web", "x": "y"})
    assert rec.take() == {("start", "s1", "e2")}
    assert index.matches("s1") == {"e1", "e2"}
    assert index.selectors_for("e1") == {"s1"}
    index.update_labels("e1", {"role": "db"})
    assert rec.take() == {("stop", "s1", "e1")}
    index.remove_labels("e2")
    assert rec.take() == {("stop", "s1", "e2")}
    assert index.matches("s1") == frozenset()
    assert index.selectors_for("e2") == frozenset()


@BOTH
def test_items_then_selectors(index_class: IndexType) -> None:
    index, rec = make(index_class)
    index.update_labels("e1", {"a": "1", "b": "x"})
    index.update_labels("e2", {"a": "2"})
    index.update_labels("e3", {"b": "x"})
    assert rec.take() == set()
    index.update_selector("in", parse_selector("a in {'1', '2'}"))
    assert rec.take() == {("start", "in", "e1"), ("start", "in", "e2")}
    index.update_selector("cx", parse_selector("b == 'x' && !a == '1'"))
    assert rec.take() == {("start", "cx", "e3")}
    index.update_selector("ne", parse_selector("a != '1'"))
    assert rec.take() == {("start", "ne", "e2"), ("start", "ne", "e3")}
    index.update_selector("all", parse_selector(""))
    assert rec.take() == {("start", "all", e) for e in ("e1", "e2", "e3")}
    assert index.selectors_for("e3") == {"cx", "ne", "all"}


@BOTH
def test_selector_change_and_removal(index_class: IndexType) -> None:
    index, rec = make(index_class)
    for item, value in (("e1", "a"), ("e2", "b"), ("e3", "c")):
        index.update_labels(item, {"k": value})
    index.update_selector("s", parse_selector("k in {'a', 'b'}"))
    assert rec.take() == {("start", "s", "e1"), ("start", "s", "e2")}
    # Change: only the differences are reported.
    index.update_selector("s", parse_selector("k in {'b', 'c'}"))
    assert rec.take() == {("stop", "s", "e1"), ("start", "s", "e3")}
    # Same selector again (different spelling): nothing.
    index.update_selector("s", parse_selector('k in {"c","b"}'))
    assert rec.take() == set()
    # Simple -> complex -> simple.
    index.update_selector("s", parse_selector("has(k) && k != 'b'"))
    assert rec.take() == {("stop", "s", "e2"), ("start", "s", "e1")}
    index.update_selector("s", parse_selector("k == 'a'"))
    assert rec.take() == {("stop", "s", "e3")}
    index.remove_selector("s")
    assert rec.take() == {("stop", "s", "e1")}
    assert index.matches("s") == frozenset()
    assert index.selectors_for("e1") == frozenset()
    # Removing unknown things is harmless.
    index.remove_selector("s")
    index.remove_labels("nope")
    assert rec.take() == set()


@BOTH
def test_unchanged_labels_are_quiet(index_class: IndexType) -> None:
    index, rec = make(index_class)
    index.update_selector("s", parse_selector("has(a)"))
    index.update_labels("e", {"a": "1"})
    assert rec.take() == {("start", "s", "e")}
    index.update_labels("e", {"a": "1"})
    index.update_labels("e", {"a": "2"})
    assert rec.take() == set()
    assert index.matches("s") == {"e"}


@BOTH
def test_labels_are_copied(index_class: IndexType) -> None:
    index, rec = make(index_class)
    labels = {"a": "1"}
    index.update_labels("e", labels)
    labels["a"] = "2"
    index.update_selector("s", parse_selector("a == '1'"))
    assert rec.take() == {("start", "s", "e")}


def test_complex_selector_with_required_pairs_picks_up_later_items() -> None:
    index, rec = make(LabelIndex)
    for n in range(30):
        index.update_labels(f"big{n}", {"common": "yes"})
    index.update_labels("rare", {"common": "yes", "rare": "yes"})
    index.update_selector("s", parse_selector("common == 'yes' && rare == 'yes' && !has(x)"))
    assert rec.take() == {("start", "s", "rare")}
    # An item gaining the pairs later is found through the pair index.
    index.update_labels("big3", {"common": "yes", "rare": "yes"})
    assert rec.take() == {("start", "s", "big3")}
    index.update_labels("big3", {"common": "yes", "rare": "yes", "x": "1"})
    assert rec.take() == {("stop", "s", "big3")}
    index.update_labels("rare", {"rare": "yes"})
    assert rec.take() == {("stop", "s", "rare")}


def test_many_selectors_one_item() -> None:
    index, rec = make(LabelIndex)
    index.update_selector("eq", parse_selector("a == '1'"))
    index.update_selector("in", parse_selector("a in {'1', '2'}"))
    index.update_selector("or", parse_selector("a == '1' || b == '1'"))
    index.update_selector("notin", parse_selector("a not in {'2'}"))
    index.update_selector("req", parse_selector("a == '1' && b == '1'"))
    index.update_labels("e", {"a": "1"})
    assert rec.take() == {("start", s, "e") for s in ("eq", "in", "or", "notin")}
    index.update_labels("e", {"a": "2", "b": "1"})
    assert rec.take() == {("stop", "eq", "e"), ("stop", "notin", "e")}
    index.update_labels("e", {"a": "1", "b": "1"})
    assert rec.take() == {("start", "eq", "e"), ("start", "notin", "e"), ("start", "req", "e")}
    index.remove_labels("e")
    assert rec.take() == {("stop", s, "e") for s in ("eq", "in", "or", "notin", "req")}


# Randomised differential test against the linear-scan oracle.

KEYS = ["a", "b", "c"]
VALUES = ["1", "2", "3"]


def random_selector_text(rng: random.Random, depth: int = 0) -> str:
    key = rng.choice(KEYS)
    value = rng.choice(VALUES)
    choice = rng.randrange(9 if depth < 2 else 6)
    if choice == 0:
        return f"{key} == '{value}'"
    if choice == 1:
        return f"{key} != '{value}'"
    if choice == 2:
        values = ", ".join(f"'{v}'" for v in rng.sample(VALUES, rng.randint(1, 3)))
        return f"{key} {rng.choice(['in', 'not in'])} {{{values}}}"
    if choice == 3:
        return f"has({key})"
    if choice == 4:
        return rng.choice(["all()", ""])
    if choice == 5:
        return f"{key} in {{'{value}'}}"
    operator = {6: " && ", 7: " || ", 8: " && "}[choice]
    parts = [random_selector_text(rng, depth + 1) for _ in range(rng.randint(2, 3))]
    parts = [part or "all()" for part in parts]
    text = "(" + operator.join(parts) + ")"
    return "!" * rng.randrange(3) + text


def random_labels(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(VALUES) for k in KEYS if rng.random() < 0.6}


@pytest.mark.parametrize("batched", [False, True], ids=["per-match", "per-item-batches"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_matches_linear_scan_oracle(seed: int, batched: bool) -> None:
    rng = random.Random(seed)
    fast, fast_rec = make(LabelIndex, batched=batched)
    slow, slow_rec = make(LinearScanIndex)
    sel_ids = [f"s{n}" for n in range(12)]
    item_ids = [f"e{n}" for n in range(40)]
    for _ in range(3000):
        roll = rng.random()
        if roll < 0.25:
            sel_id = rng.choice(sel_ids)
            selector = parse_selector(random_selector_text(rng))
            fast.update_selector(sel_id, selector)
            slow.update_selector(sel_id, selector)
        elif roll < 0.32:
            sel_id = rng.choice(sel_ids)
            fast.remove_selector(sel_id)
            slow.remove_selector(sel_id)
        elif roll < 0.9:
            item_id = rng.choice(item_ids)
            labels = random_labels(rng)
            fast.update_labels(item_id, labels)
            slow.update_labels(item_id, labels)
        else:
            item_id = rng.choice(item_ids)
            fast.remove_labels(item_id)
            slow.remove_labels(item_id)
        # Same reported changes, and both recorders agree with the indexes' own views.
        assert fast_rec.take() == slow_rec.take()
        assert fast_rec.current == slow_rec.current
        probe = rng.choice(sel_ids)
        assert fast.matches(probe) == slow.matches(probe)
    for sel_id in sel_ids:
        assert fast.matches(sel_id) == slow.matches(sel_id)
        assert fast.matches(sel_id) == {i for s, i in fast_rec.current if s == sel_id}
    for item_id in item_ids:
        assert fast.selectors_for(item_id) == slow.selectors_for(item_id)
        assert fast.selectors_for(item_id) == {s for s, i in fast_rec.current if i == item_id}
    # Tear everything down: every match is stopped exactly once.
    for sel_id in sel_ids:
        fast.remove_selector(sel_id)
        slow.remove_selector(sel_id)
    assert fast_rec.current == slow_rec.current == set()
