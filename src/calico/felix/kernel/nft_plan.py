"""Planning for `calico.felix.kernel.nft.NftTable`: the transaction that turns what the driver
believes the kernel holds into the desired table (pure: no I/O).

A plan rewrites whole chains (``flush chain`` + ``add rule``), creates what is missing, gives sets
element deltas, and deletes what nothing wants and nothing kept references (during the graceful
restart only what this run wrote). The order inside the one transaction lets every reference
resolve: new chains are declared first, sets and map elements come before the rules that use
them, deletions come last.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from calico.felix.dataplane.nft_rendering.base import BaseChain, Chain, SetSpec
from calico.felix.kernel.nft_text import (
    FAMILY,
    KernelTable,
    Script,
    analyse,
    element_targets,
)

log = logging.getLogger(__name__)

STUB = ('drop comment "WARNING Missing chain"',)
MISSING_SET = ('drop comment "WARNING Missing set"',)
FAILED = ('drop comment "WARNING Failed to program chain"',)


class _Wanted:
    """One chain as it is to be written: the rules asked for, the lines written (each with its
    hash in the comment) and what the written rules reference."""

    __slots__ = ("asked", "base", "chains", "hashes", "lines", "sets")

    def __init__(self, chain: Chain, written: tuple[str, ...] | None = None) -> None:
        analysed = [analyse(rule) for rule in (chain.rules if written is None else written)]
        self.asked = chain.rules
        self.base = chain.base
        self.hashes = tuple(a.hash for a in analysed)
        self.lines = tuple(a.line for a in analysed)
        self.chains: frozenset[str] = frozenset().union(*(a.chains for a in analysed))
        self.sets: frozenset[str] = frozenset().union(*(a.sets for a in analysed))


@dataclass
class Plan:
    script: Script
    chains: dict[str, _Wanted] = field(default_factory=dict)
    new_sets: dict[str, SetSpec] = field(default_factory=dict)
    deltas: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    deleted_chains: list[str] = field(default_factory=list)
    deleted_sets: list[str] = field(default_factory=list)
    recreate: bool = False


class Planner:
    """The planning half of `NftTable` (its state is declared here, set there)."""

    table: str
    max_elements: int
    _chains: dict[str, _Wanted]
    _sets: dict[str, tuple[SetSpec, set[str]]]
    _model: KernelTable | None
    _table_exists: bool
    _chain_refs: Counter[str]
    _set_refs: Counter[str]
    _touched_chains: set[str]
    _touched_sets: set[str]
    _plan_all: bool
    _in_grace: bool
    _owned: set[str]
    _failed: dict[str, str]
    _too_big: set[str]
    _deferred: set[str]

    # -- planning ------------------------------------------------------------------------------

    def _effective(self, name: str, kernel: KernelTable) -> _Wanted | None:
        """What the chain should hold; None to leave it alone (or delete it)."""
        wanted = self._chains.get(name)
        if wanted is not None:
            missing = [s for s in wanted.sets if s not in self._sets and not self._leftover_set(s)]
            if name in self._failed:
                return _Wanted(Chain(wanted.asked, wanted.base), FAILED)
            if missing:
                log.error("%r: chain %s names sets that do not exist: %s", self, name, missing)
                return _Wanted(Chain(wanted.asked, wanted.base), MISSING_SET)
            return wanted
        if name in self._chain_refs:
            if self._in_grace and name in kernel.chains and name not in self._owned:
                return None  # the previous run's chain keeps carrying traffic for now
            return _Wanted(Chain(()), STUB)
        return None

    def _leftover_set(self, name: str) -> bool:
        assert self._model is not None
        return self._in_grace and name in self._model.sets and name not in self._owned

    def _plan(self, kernel: KernelTable) -> Plan:
        plan = Plan(Script(self.table))
        if self._plan_all:
            chains = set(self._chains) | set(self._chain_refs) | set(kernel.chains)
            sets = set(self._sets) | set(kernel.sets)
        else:
            chains, sets = set(self._touched_chains), set(self._touched_sets)
        recreate = any(
            name in kernel.sets and kernel.sets[name].spec != self._sets[name][0]
            for name in sets & self._sets.keys()
        )
        if recreate:
            # A set of ours changed type under us: its users would have to go first. Rewrite
            # the whole table instead, in this one transaction (never without base chains).
            log.warning("%r: a set was recreated with another type; rewriting the table", self)
            kernel = KernelTable()
            chains = set(self._chains) | set(self._chain_refs)
            sets = set(self._sets)
            plan.recreate = True
        for name in sorted(chains):
            wanted = self._effective(name, kernel)
            have = kernel.chains.get(name)
            if wanted is not None and (
                have is None or (have.base, have.hashes) != (wanted.base, wanted.hashes)
            ):
                plan.chains[name] = wanted
        unwanted = {
            name
            for name in chains & kernel.chains.keys()
            if name not in self._chains
            and name not in self._chain_refs
            and (not self._in_grace or name in self._owned)
        }
        unwanted_sets = {
            name
            for name in sets & kernel.sets.keys()
            if name not in self._sets and (not self._in_grace or name in self._owned)
        }
        if unwanted or unwanted_sets:
            unwanted, unwanted_sets = self._deletable(unwanted, unwanted_sets, kernel, plan)
        self._plan_sets(sets, kernel, plan)
        if not (plan.chains or unwanted or unwanted_sets or plan.new_sets or plan.deltas):
            return plan
        self._script(plan, kernel, sorted(unwanted), sorted(unwanted_sets))
        return plan

    def _deletable(
        self, chains: set[str], sets: set[str], kernel: KernelTable, plan: Plan
    ) -> tuple[set[str], set[str]]:
        """The unwanted chains and sets nothing kept refers to (a fixpoint: a kept chain keeps
        what it references), less the deletions the kernel refused in this apply. What desired
        chains and maps reference is counted as they are set; only what no one desires (an
        earlier run's chains and maps, kept during the graceful restart) is looked at here."""
        chains -= self._deferred
        sets -= self._deferred
        leftovers = {n: have.refs for n, have in kernel.chains.items() if n not in self._chains}
        for name, kset in kernel.sets.items():
            if kset.spec.map is not None and name not in self._sets:
                leftovers[name] = element_targets(kset.elements)
        while True:
            doomed = chains | sets
            kept: set[str] = set().union(*(r for n, r in leftovers.items() if n not in doomed))
            still = {n for n in doomed if n in kept or n in self._chain_refs or n in self._set_refs}
            if not still:
                return chains, sets
            chains -= still
            sets -= still

    def _plan_sets(self, names: set[str], kernel: KernelTable, plan: Plan) -> None:
        for name in sorted(names & self._sets.keys()):
            spec, elements = self._sets[name]
            if len(elements) > self.max_elements:
                if name not in self._too_big:
                    log.error(
                        "Set %s would have %d members; it will not be updated until its size "
                        "drops below %d (MaxIpsetSize)", name, len(elements), self.max_elements,
                    )  # fmt: skip
                    self._too_big.add(name)
                if name in kernel.sets:
                    continue
                elements = set()  # create it empty: rules name it
            else:
                self._too_big.discard(name)
            have = kernel.sets.get(name)
            if have is None:
                plan.new_sets[name] = spec
                if elements:
                    plan.deltas[name] = (set(elements), set())
                continue
            adds, dels = elements - have.elements, have.elements - elements
            if adds or dels:
                plan.deltas[name] = (adds, dels)

    def _script(
        self, plan: Plan, kernel: KernelTable, unwanted: list[str], unwanted_sets: list[str]
    ) -> None:
        script = plan.script
        if plan.recreate and self._table_exists:
            script.add("delete table", self.table, f"delete table {FAMILY} {self.table}")
        if plan.recreate or not self._table_exists:
            script.add("add table", self.table, f"add table {FAMILY} {self.table}")
        for name, wanted in plan.chains.items():
            have = kernel.chains.get(name)
            if have is not None and have.base != wanted.base:
                script.obj("flush", "chain", name)  # another hook: delete and re-add it
                script.obj("delete", "chain", name)
                have = None
            if have is None:
                base: BaseChain | None = wanted.base
                script.obj("add", "chain", name, base.declaration() if base else "")
            else:
                script.obj("flush", "chain", name)
        for name in unwanted:
            script.obj("flush", "chain", name)
        for name, spec in plan.new_sets.items():
            script.obj("add", spec.keyword, name, spec.declaration())
        for name, (adds, dels) in plan.deltas.items():
            script.elements("delete", name, dels)
            script.elements("add", name, adds)
        for name, wanted in plan.chains.items():
            head = f"add rule {FAMILY} {self.table} {name}"
            for line in wanted.lines:
                script.add("add rule", name, f"{head} {line}")
        for name in unwanted:
            script.obj("delete", "chain", name)
        for name in unwanted_sets:
            script.obj("delete", kernel.sets[name].spec.keyword, name)
        plan.deleted_chains = unwanted
        plan.deleted_sets = unwanted_sets
