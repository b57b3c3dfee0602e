"""Matching selectors against labelled items (felix.md §3.5). Pure, no I/O.

Both indexes take two callbacks, ``on_match_started(sel_id, item_id)`` and
``on_match_stopped(sel_id, item_id)``, which are idempotent: a start is reported only for a new
match and a stop only for an existing one. The index's own state is updated before each callback.
An optional third, ``on_item_matches_started(item_id, sel_ids)``, takes the place of
``on_match_started`` when one item's labels start several matches at once (a snapshot is mostly
that), so the listener handles them in one call instead of one call per match.

* LabelIndex: keeps ``(label, value) -> items`` so that simple selectors (one ``k == "v"`` or
  ``k in {...}``) are matched by lookup and complex ones scan only the items that carry a pair of
  their cheapest pair option (``Selector.pair_options``), or all items if they have none. This
  extends [1.4]'s "smallest required pair" to ``in {...}`` sets and to ``||`` branches.
* LinearScanIndex: the obvious O(selectors x items) implementation, used as the test oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from calico.common.index import add_to_index, remove_from_index
from calico.common.selectors import Pair, Selector

__all__ = [
    "ItemMatchesCallback",
    "LabelIndex",
    "LinearScanIndex",
    "MatchCallback",
]

_S = TypeVar("_S", bound=Hashable)  # a selector's ID
_I = TypeVar("_I", bound=Hashable)  # an item's ID
MatchCallback = Callable[[_S, _I], None]
# (item_id, sel_ids): every match that just started for one item, in one call.
ItemMatchesCallback = Callable[[_I, Collection[_S]], None]

# Once a candidate bucket this small is found, stop looking for a smaller one.
_SMALL_ENOUGH = 10
# Distinct label sets whose matching selectors are remembered (a few MB at most).
_LABEL_SET_CACHE_SIZE = 4096


class _Group(Generic[_S, _I]):
    """The items that match exactly the same selectors. Items with identical labels match
    identical selectors (replicas, members of the same security groups), so at scale a few hundred
    groups hold every item: each set of selectors is kept once per group, not once per item, and
    a selector's matches are its groups' items rather than a set of items of its own (at 11,000
    endpoints x 800 selectors those per-item and per-selector sets were 29 MB of the graph's 79)."""

    __slots__ = ("items", "sels")

    def __init__(self, sels: frozenset[_S]) -> None:
        self.sels = sels
        self.items: set[_I] = set()


_NO_MATCHES: frozenset[Any] = frozenset()


class _MatchTracker(Generic[_S, _I]):
    """Selectors, item labels and the current match relation, with diff-and-report helpers."""

    def __init__(
        self,
        on_match_started: MatchCallback[_S, _I],
        on_match_stopped: MatchCallback[_S, _I],
        on_item_matches_started: ItemMatchesCallback[_I, _S] | None = None,
    ) -> None:
        self._on_started = on_match_started
        self._on_stopped = on_match_stopped
        self._on_item_started = on_item_matches_started
        self._selectors: dict[_S, Selector] = {}
        # The match relation: each item with a match -> its group; the groups by their
        # selectors; each selector -> the groups whose items it matches.
        self._group_of: dict[_I, _Group[_S, _I]] = {}
        self._groups: dict[frozenset[_S], _Group[_S, _I]] = {}
        self._groups_by_sel: dict[_S, set[_Group[_S, _I]]] = {}

    # Queries

    def matches(self, sel_id: _S) -> frozenset[_I]:
        """IDs of the items the selector currently matches (empty if unknown)."""
        return _NO_MATCHES.union(*(g.items for g in self._groups_by_sel.get(sel_id, ())))

    def selectors_for(self, item_id: _I) -> frozenset[_S]:
        """IDs of the selectors currently matching the item (empty if unknown)."""
        group = self._group_of.get(item_id)
        return _NO_MATCHES if group is None else group.sels  # immutable: no copy

    # Match bookkeeping

    def _move(self, item_id: _I, old: _Group[_S, _I] | None, sels: frozenset[_S]) -> None:
        """Make `sels` (not `old`'s) the item's matches: it leaves its group `old` (if any)
        for the one of `sels`, groups being created and dropped as they fill and empty."""
        if old is not None:
            old.items.discard(item_id)
            if not old.items:
                del self._groups[old.sels]
                for sel_id in old.sels:
                    remove_from_index(self._groups_by_sel, sel_id, old)
        if not sels:
            self._group_of.pop(item_id, None)
            return
        group = self._groups.get(sels)
        if group is None:
            group = self._groups[sels] = _Group(sels)
            for sel_id in sels:
                add_to_index(self._groups_by_sel, sel_id, group)
        group.items.add(item_id)
        self._group_of[item_id] = group

    def _add_match(self, sel_id: _S, items: Iterable[_I]) -> None:
        """The selector now matches `items` too (none of which it matched)."""
        # Items of one group move to one group: its selectors plus this one, computed once.
        moved: dict[_Group[_S, _I] | None, frozenset[_S]] = {}
        group_of = self._group_of
        for item_id in items:
            old = group_of.get(item_id)
            sels = moved.get(old)
            if sels is None:
                sels = moved[old] = (_NO_MATCHES if old is None else old.sels) | {sel_id}
            self._move(item_id, old, sels)

    def _remove_match(self, sel_id: _S, items: Iterable[_I]) -> None:
        """The selector no longer matches `items` (all of which it matched)."""
        moved: dict[_Group[_S, _I], frozenset[_S]] = {}
        group_of = self._group_of
        for item_id in items:
            old = group_of[item_id]
            sels = moved.get(old)
            if sels is None:
                sels = moved[old] = old.sels - {sel_id}
            self._move(item_id, old, sels)

    def _set_selector_matches(self, sel_id: _S, items: Iterable[_I]) -> None:
        new = set(items)
        old = self.matches(sel_id)
        stopped = old - new
        started = new - old
        self._remove_match(sel_id, stopped)
        self._add_match(sel_id, started)
        for item_id in stopped:
            self._on_stopped(sel_id, item_id)
        for item_id in started:
            self._on_started(sel_id, item_id)

    def _set_item_matches(self, item_id: _I, sel_ids: Iterable[_S]) -> None:
        # A frozenset is kept as it is: LabelIndex passes the one it caches per label set, so
        # items with the same labels share it (and their group).
        new = sel_ids if isinstance(sel_ids, frozenset) else frozenset(sel_ids)
        old = self._group_of.get(item_id)
        if old is None:  # a new item (all of a snapshot): every match is a start
            stopped: frozenset[_S] = _NO_MATCHES
            started = new
        else:
            if old.sels == new:
                return
            stopped = old.sels - new
            started = new - old.sels
        self._move(item_id, old, new)
        on_stopped = self._on_stopped
        for sel_id in stopped:
            on_stopped(sel_id, item_id)
        if not started:
            return
        if self._on_item_started is not None:
            self._on_item_started(item_id, started)
            return
        on_started = self._on_started
        for sel_id in started:
            on_started(sel_id, item_id)


class LinearScanIndex(_MatchTracker[_S, _I]):
    """Reference implementation: every change re-evaluates against everything."""

    def __init__(
        self,
        on_match_started: MatchCallback[_S, _I],
        on_match_stopped: MatchCallback[_S, _I],
        on_item_matches_started: ItemMatchesCallback[_I, _S] | None = None,
    ) -> None:
        super().__init__(on_match_started, on_match_stopped, on_item_matches_started)
        self._labels: dict[_I, dict[str, str]] = {}

    def update_selector(self, sel_id: _S, selector: Selector) -> None:
        self._selectors[sel_id] = selector
        self._set_selector_matches(
            sel_id, (i for i, labels in self._labels.items() if selector.evaluate(labels))
        )

    def remove_selector(self, sel_id: _S) -> None:
        if self._selectors.pop(sel_id, None) is not None:
            self._set_selector_matches(sel_id, ())

    def update_labels(self, item_id: _I, labels: Mapping[str, str]) -> None:
        labels = dict(labels)
        self._labels[item_id] = labels
        self._set_item_matches(
            item_id, (s for s, sel in self._selectors.items() if sel.evaluate(labels))
        )

    def remove_labels(self, item_id: _I) -> None:
        if self._labels.pop(item_id, None) is not None:
            self._set_item_matches(item_id, ())


class _LabelGroup(Generic[_I]):
    """The items with one set of labels (replicas, members of the same security groups): the
    labels kept once for them all, and a selector evaluated once for them all."""

    __slots__ = ("items", "label_set", "labels")

    def __init__(self, label_set: frozenset[Pair]) -> None:
        self.label_set = label_set
        self.labels = dict(label_set)
        self.items: set[_I] = set()


class LabelIndex(_MatchTracker[_S, _I]):
    """Label-value index (the [1.4] ``LabelValueIndex`` algorithm)."""

    def __init__(
        self,
        on_match_started: MatchCallback[_S, _I],
        on_match_stopped: MatchCallback[_S, _I],
        on_item_matches_started: ItemMatchesCallback[_I, _S] | None = None,
    ) -> None:
        super().__init__(on_match_started, on_match_stopped, on_item_matches_started)
        # Items grouped by their labels; (label, value) -> the groups carrying that pair. Not
        # (label, value) -> items: at 11,000 endpoints with a few hundred distinct label sets,
        # those sets (and a copy of the labels per item) were 5 MB.
        self._label_group_of: dict[_I, _LabelGroup[_I]] = {}
        self._label_groups: dict[frozenset[Pair], _LabelGroup[_I]] = {}
        self._groups_by_pair: dict[Pair, set[_LabelGroup[_I]]] = {}
        # Simple selectors: their pairs, and (label, value) -> simple selectors listing it.
        self._simple_pairs: dict[_S, frozenset[Pair]] = {}
        self._simple_by_pair: dict[Pair, set[_S]] = {}
        # Complex selectors with pair options are filed under each pair of their cheapest option
        # (any match carries one of them); those without are evaluated against every changed item.
        self._complex_key: dict[_S, frozenset[Pair]] = {}
        self._complex_by_pair: dict[Pair, set[_S]] = {}
        self._complex_unkeyed: set[_S] = set()
        # Items with identical labels match identical selectors (replicas, members of the same
        # security groups): the answer per distinct label set, until any selector changes.
        self._matches_by_label_set: dict[frozenset[Pair], frozenset[_S]] = {}

    # Selectors

    def update_selector(self, sel_id: _S, selector: Selector) -> None:
        if self._selectors.get(sel_id) == selector:
            return
        self._matches_by_label_set.clear()
        self._unindex_selector(sel_id)
        self._selectors[sel_id] = selector
        simple = selector.simple_pairs()
        if simple is not None:
            self._simple_pairs[sel_id] = simple
            for pair in simple:
                add_to_index(self._simple_by_pair, pair, sel_id)
            self._set_selector_matches(sel_id, _items_of(self._groups_with(simple)))
            return
        options = selector.pair_options()
        candidates: Iterable[_LabelGroup[_I]]
        if options:
            pairs = self._cheapest_option(options)
            self._complex_key[sel_id] = pairs
            for pair in pairs:
                add_to_index(self._complex_by_pair, pair, sel_id)
            candidates = self._groups_with(pairs)
        else:
            self._complex_unkeyed.add(sel_id)
            candidates = self._label_groups.values()
        matched = [group for group in candidates if selector.evaluate(group.labels)]
        self._set_selector_matches(sel_id, _items_of(matched))

    def _groups_with(self, pairs: Iterable[Pair]) -> set[_LabelGroup[_I]]:
        """The label groups that carry any of `pairs`."""
        found: set[_LabelGroup[_I]] = set()
        for pair in pairs:
            found |= self._groups_by_pair.get(pair, set())
        return found

    def remove_selector(self, sel_id: _S) -> None:
        if sel_id not in self._selectors:
            return
        self._matches_by_label_set.clear()
        self._unindex_selector(sel_id)
        del self._selectors[sel_id]
        # Every match stops at once, each group of matched items moving once.
        items = self.matches(sel_id)
        self._remove_match(sel_id, items)
        on_stopped = self._on_stopped
        for item_id in items:
            on_stopped(sel_id, item_id)

    def _cheapest_option(self, options: tuple[frozenset[Pair], ...]) -> frozenset[Pair]:
        """The option whose pairs the fewest items carry (stopping early at a small enough one)."""
        best: frozenset[Pair] | None = None
        best_size = 0
        for option in options:
            size = sum(len(g.items) for g in self._groups_with(option))
            if best is None or size < best_size:
                best, best_size = option, size
                if size < _SMALL_ENOUGH:
                    break
        assert best is not None
        return best

    def _unindex_selector(self, sel_id: _S) -> None:
        simple = self._simple_pairs.pop(sel_id, None)
        if simple is not None:
            for pair in simple:
                remove_from_index(self._simple_by_pair, pair, sel_id)
        for pair in self._complex_key.pop(sel_id, ()):
            remove_from_index(self._complex_by_pair, pair, sel_id)
        self._complex_unkeyed.discard(sel_id)

    # Items

    def update_labels(self, item_id: _I, labels: Mapping[str, str]) -> None:
        label_set = frozenset(labels.items())
        old = self._label_group_of.get(item_id)
        if old is not None:
            if old.label_set == label_set:
                return
            self._leave(item_id, old)
        group = self._label_groups.get(label_set)
        if group is None:
            group = self._label_groups[label_set] = _LabelGroup(label_set)
            for pair in label_set:
                add_to_index(self._groups_by_pair, pair, group)
        group.items.add(item_id)
        self._label_group_of[item_id] = group
        matched = self._matches_by_label_set.get(label_set)
        if matched is None:
            matched = self._matching_selectors(label_set, group.labels)
            if len(self._matches_by_label_set) >= _LABEL_SET_CACHE_SIZE:
                self._matches_by_label_set.clear()
            self._matches_by_label_set[label_set] = matched
        self._set_item_matches(item_id, matched)

    def _leave(self, item_id: _I, group: _LabelGroup[_I]) -> None:
        group.items.discard(item_id)
        if not group.items:
            del self._label_groups[group.label_set]
            for pair in group.label_set:
                remove_from_index(self._groups_by_pair, pair, group)

    def _matching_selectors(self, pairs: frozenset[Pair], labels: dict[str, str]) -> frozenset[_S]:
        matched: set[_S] = set()
        # Simple selectors under the item's pairs match by construction.
        for pair in pairs:
            matched |= self._simple_by_pair.get(pair, set())
        # The only other selectors that can match: complex ones keyed by one of the item's pairs
        # and complex ones with no required pairs. Previous matches need no re-evaluation here:
        # any that are not found again are stopped by the diff in _set_item_matches.
        candidates = set(self._complex_unkeyed)
        for pair in pairs:
            candidates |= self._complex_by_pair.get(pair, set())
        candidates -= matched
        selectors = self._selectors
        matched.update([s for s in candidates if selectors[s].evaluate(labels)])
        return frozenset(matched)

    def remove_labels(self, item_id: _I) -> None:
        group = self._label_group_of.pop(item_id, None)
        if group is None:
            return
        self._leave(item_id, group)
        self._set_item_matches(item_id, ())


def _items_of(groups: Iterable[_LabelGroup[_I]]) -> set[_I]:
    found: set[_I] = set()
    for group in groups:
        found |= group.items
    return found
