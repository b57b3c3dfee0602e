"""Planning for `calico.felix.kernel.iptables.IptablesTable`: the restore transaction that turns
what the driver believes the table holds (its model, or a fresh read) into the desired state
(pure: no I/O).

A plan rewrites the ``felix-*`` chains whose content differs, keeps exactly one plain hook at
the top of each built-in chain that wants one and removes hooks no longer wanted, and deletes
the unwanted ``felix-*`` chains that nothing kept references (during the graceful restart, only
those this run wrote). A chain that is referenced but not desired is written as a drop stub, a
chain the kernel refused as the failed-chain stub. The plan also says how the chains it edits
will read afterwards, which the driver records in its model.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

from calico.felix.dataplane import names
from calico.felix.kernel.iptables_text import (
    BUILTIN_ORDER,
    Plan,
    Spec,
    is_hook_spec,
    spec_targets,
)

log = logging.getLogger(__name__)

# A chain is changed in place (edit_lines) only from this many rules on, and only when that
# takes at most half the rule operations of rewriting it.
EDIT_MIN_RULES = 16


def edit_lines(chain: str, have: Sequence[Spec], want: Sequence[str]) -> list[str] | None:
    """The ``-D <chain> <n>`` and ``-I <chain> <n> <rule>`` lines that turn `have` (what the
    kernel lists) into `want` by removing and inserting rules, when that is much less work than
    rewriting the chain; None when it is not, or when it cannot be said by position alone (a
    rule twice in a chain, or rules that stay but change order).

    Why: a rewrite deletes and adds every rule of the chain. A dispatch leaf holds an entry per
    interface of its group, 62 at 1,000 endpoints; a VM added rewrote them all, and a burst of
    500 new VMs rewrote each leaf at every apply: half of each restore's time.

    Deletions go first, from the last: the positions they name are those of `have`. Insertions
    follow, from the first: each names its final position in `want`, and every rule before it
    is then in place."""
    if len(have) < EDIT_MIN_RULES and len(want) < EDIT_MIN_RULES:
        return None
    have_set, want_set = set(have), set(want)
    if len(have_set) != len(have) or len(want_set) != len(want):
        return None
    if [r for r in have if r in want_set] != [r for r in want if r in have_set]:
        return None
    removed = [n for n, rule in enumerate(have, 1) if rule not in want_set]
    added = [(n, rule) for n, rule in enumerate(want, 1) if rule not in have_set]
    if 2 * (len(removed) + len(added)) > len(have) + len(want):
        return None
    return [f"-D {chain} {n}" for n in reversed(removed)] + [
        f"-I {chain} {n} {rule}" for n, rule in added
    ]


# What a referenced chain that is not desired becomes (fail closed).
STUB_RULES: tuple[str, ...] = ('-m comment --comment "WARNING Missing chain" -j DROP',)
# What a chain the kernel refused becomes until its content changes (fail closed).
FAILED_RULES: tuple[str, ...] = ('-m comment --comment "WARNING Failed to program chain" -j DROP',)


class Planner:
    """The planning half of `IptablesTable` (its state is declared here, set there)."""

    _chains: dict[str, tuple[str, ...]]  # chain -> the rule specs asked for
    _refs: dict[str, tuple[str, ...]]  # chain -> the Felix chains its rules jump to
    _ref_count: Counter[str]  # Felix chain -> how many desired chains and hooks jump to it
    _hooks: dict[str, str]  # kernel chain -> felix chain
    _unhooks: set[tuple[str, str]]  # hooks removed: re-removed on refresh
    _owned: set[str]  # chains this instance has written (safe to delete)
    _learned: dict[str, tuple[tuple[str, ...], tuple[Spec, ...]]]
    _failed: dict[str, str]  # chain -> why the kernel refused it
    _touched: set[str]  # chains whose wanted content may have changed since the last apply
    _in_grace: bool

    # -- planning -----------------------------------------------------------------------------

    def _plan(
        self, kernel: dict[str, Sequence[Spec]], full: bool, edits: bool = True
    ) -> tuple[Plan, dict[str, Sequence[Spec]]]:
        """The transaction that turns `kernel` into the desired state, and the rules of the
        chains the plan edits (built-ins with hooks, rewritten chains) as they will be after it.

        `full`: consider every chain; else only the touched ones (kernel is then our model, so
        every other chain is known to be as wanted). `edits`: change a big chain in place when
        that is less work than rewriting it (edit_lines)."""
        plan = Plan()
        candidates = set(self._chains) | set(self._ref_count) if full else self._touched
        wanted = {}
        for chain in sorted(candidates):
            rules = self._wanted_rules(chain, kernel)
            if rules is not None:
                wanted[chain] = rules
                if not self._up_to_date(chain, rules, kernel):
                    plan.writes[chain] = rules
                    edit = (
                        edit_lines(chain, kernel[chain], rules)
                        if edits and chain in kernel
                        else None
                    )
                    if edit is not None:
                        plan.edits[chain] = edit
        unwanted = {
            chain
            for chain in (kernel if full else self._touched & kernel.keys())
            if names.is_felix_name(chain)
            and chain not in wanted
            # During grace only chains this run wrote may go; an earlier run's stay as they are.
            and (not self._in_grace or chain in self._owned)
        }
        # What the plan edits: the built-in chains (hooks, copied) and the rewritten chains.
        after: dict[str, Sequence[Spec]] = {
            chain: list(kernel[chain]) for chain in _builtins(kernel)
        }
        after.update({chain: self._expected(chain, rules) for chain, rules in plan.writes.items()})
        self._plan_unhooks(kernel, after, unwanted, plan)
        self._plan_hooks(after, plan)
        if unwanted:
            plan.deletes = sorted(self._deletable(unwanted, kernel, after))
        return plan, after

    def _wanted_rules(
        self, chain: str, kernel: dict[str, Sequence[Spec]]
    ) -> tuple[str, ...] | None:
        """What `chain` should hold: its desired rules, the failed-chain stub, or (referenced
        but not desired) the missing-chain stub; None if it should not exist (or, during grace,
        be left alone)."""
        if chain in self._chains:
            return FAILED_RULES if chain in self._failed else self._chains[chain]
        if chain in self._ref_count:
            if self._in_grace and chain in kernel and chain not in self._owned:
                return None  # the previous run's chain keeps carrying traffic for now
            return STUB_RULES
        return None

    def _deletable(
        self,
        unwanted: set[str],
        kernel: dict[str, Sequence[Spec]],
        after: dict[str, Sequence[Spec]],
    ) -> set[str]:
        """The unwanted chains nothing left behind refers to.

        A fixpoint: keeping a chain keeps its rules, and so whatever they reference. What the
        desired chains reference is counted in self._ref_count (with the hooks), so a chain
        counted there is kept without going through all of their references (a delete at 1,000
        endpoints went through 62,000 of them, 3 ms); only other chains' rules are read: host
        chains, built-ins and leftovers, a few rules in all."""
        refs_of: dict[str, Iterable[str]] = {}
        for chain in kernel.keys() | after.keys():
            if chain not in self._chains or chain in self._failed:
                rules = after[chain] if chain in after else kernel[chain]
                refs_of[chain] = {t for rule in rules for t in spec_targets(rule)}
        counted = {chain for chain in unwanted if self._ref_count[chain] > 0}
        doomed = set(unwanted)
        while True:
            refs = set().union(*(r for chain, r in refs_of.items() if chain not in doomed))
            kept = doomed & (refs | counted)
            if not kept:
                return doomed
            log.info("Not deleting chains still referenced: %s", sorted(kept))
            doomed -= kept

    def _expected(self, chain: str, rules: tuple[str, ...]) -> tuple[Spec, ...]:
        """How the kernel should list `rules` in `chain`: its learned spelling, else ours (the
        renderer writes iptables-save's own spelling, so that is the rule)."""
        learned = self._learned.get(chain)
        if learned and learned[0] == rules:
            return learned[1]
        return rules

    def _up_to_date(
        self, chain: str, rules: tuple[str, ...], kernel: dict[str, Sequence[Spec]]
    ) -> bool:
        if chain not in kernel:
            return False
        # Mostly the very tuples the model was built from, so this compares by identity.
        expected = self._expected(chain, rules)
        have = kernel[chain]
        return tuple(have) == expected

    def _plan_unhooks(
        self,
        kernel: dict[str, Sequence[Spec]],
        after: dict[str, Sequence[Spec]],
        unwanted: set[str],
        plan: Plan,
    ) -> None:
        """Remove hooks we were told to remove and, after grace, an earlier run's stale hooks.

        Only plain ``-j felix-*`` rules in built-in chains count as hooks; a host's own chains
        are never edited, even if they jump to our chains.
        """
        for kernel_chain in _builtins(kernel):
            kept = []
            for rule in kernel[kernel_chain]:
                if is_hook_spec(rule):
                    target = rule.split()[1]
                    wanted = self._hooks.get(kernel_chain) == target  # _plan_hooks keeps one
                    stale = not self._in_grace or target in unwanted
                    if not wanted and (stale or (kernel_chain, target) in self._unhooks):
                        plan.unhook_lines.append(f"-D {kernel_chain} -j {target}")
                        continue
                kept.append(rule)
            after[kernel_chain] = kept

    def _plan_hooks(self, after: dict[str, Sequence[Spec]], plan: Plan) -> None:
        for kernel_chain, felix_chain in sorted(self._hooks.items()):
            rules = after.get(kernel_chain, ())
            count = sum(1 for rule in rules if is_hook_spec(rule, felix_chain))
            if count == 1 and is_hook_spec(rules[0], felix_chain):
                continue
            # Delete every copy, then insert at the top: this also moves a pushed-down hook back.
            plan.hook_lines += [f"-D {kernel_chain} -j {felix_chain}"] * count
            plan.hook_lines.append(f"-I {kernel_chain} 1 -j {felix_chain}")
            after[kernel_chain] = [f"-j {felix_chain}"] + [
                rule for rule in rules if not is_hook_spec(rule, felix_chain)
            ]


def _builtins(kernel: dict[str, Sequence[Spec]]) -> list[str]:
    """The built-in chains `kernel` has, looked up rather than found by a scan of the table's
    chains: a plan runs at every change, and the table has 5,000 chains at 1,000 endpoints."""
    return [chain for chain in BUILTIN_ORDER if chain in kernel]
