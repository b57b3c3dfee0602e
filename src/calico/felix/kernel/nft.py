"""A reconciling driver for Felix's one nftables table, ``inet felix`` (NFTablesMode).

API model
---------
Declarative, like `calico.felix.kernel.iptables`: the owner states the table's whole content and
calls :meth:`NftTable.apply`.

- ``set_chain(name, chain)`` / ``remove_chain(name)``: a chain's rules (nft rule text without the
  ``add rule`` head), and for a base chain its hook and priority.
- ``set_set(name, spec, elements)`` / ``add_elements`` / ``remove_elements`` / ``remove_set``: a
  named set or verdict map and its elements, as nft writes them.
- ``apply(force_refresh=False)``: one transaction (one script for libnftables or ``nft -f -``)
  that makes the kernel match. ``force_refresh``: first check the kernel and repair what another
  tool changed.
- ``end_grace_period()``: from the next apply on, chains and sets of an earlier run that are not
  wanted are deleted (and referenced chains missing from the desired state become stubs).

Implementation
--------------
The driver keeps a model of the table (per chain its hook and the hashes of its rules, per set
its type and elements), read from the kernel once at start and then updated with every
transaction it commits. A plan is the difference between the desired state and the model:
chains are rewritten whole (``flush chain`` + ``add rule``s: rules are never patched by handle,
which costs nft 1.0.6 a full cache fetch), sets get element deltas. Every rule carries a comment
with its hash (`nft_text.analyse`), which is how a read-back recognises it.

When to read: nf_tables counts committed transactions (the generation, `nftables.nft_generation`:
any table, any family, iptables-nft included). The driver remembers the generation at which its
model is known to equal the kernel: after a read, and after each of its own commits when the
generation moved by exactly one (its own). A refresh whose generation is still that one skips
reading; otherwise it lists the table (JSON), compares hashes, and rewrites what differs.

Failures (fail closed, as the iptables driver): a chain with an unsafe rule is written as a drop
stub and never sent as asked; a chain the kernel refuses (nft names the failing command) becomes a
drop stub and the transaction is retried without it; a chain that desired chains jump to but that
is not desired is a drop stub ("WARNING Missing chain"), as is a chain whose rules name a set
that is not desired ("WARNING Missing set"). A deletion the kernel refuses (a kernel before 6.2
needs a moment after a verdict map element goes before the chain it named can go) is retried at
the next apply. Any other failure raises `NftError` and the model is read again next time.

Not thread safe: the driver's one thread owns it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

from calico.common.quoting import quoted
from calico.felix.dataplane.nft_rendering.base import Chain, SetSpec, check_name
from calico.felix.kernel.libnftables import NftExecutor
from calico.felix.kernel.nft_plan import Plan, Planner, _Wanted
from calico.felix.kernel.nft_text import (
    FAMILY,
    KernelChain,
    KernelSet,
    KernelTable,
    Script,
    analyse,
    element_targets,
    failed_commands,
    parse_table,
    unsafe_element,
)

log = logging.getLogger(__name__)

TABLE = "felix"
UNSAFE = ('drop comment "WARNING Unsafe rule refused"',)
MAX_ROUNDS = 20
MAX_READS = 3
DEFAULT_MAX_ELEMENTS = 1048576


class NftError(Exception):
    """nft refused a transaction (or could not list the table) and retrying will not help."""


class NftTable(Planner):
    """Keeps ``table inet felix`` as desired."""

    def __init__(
        self,
        executor: NftExecutor,
        *,
        generation: Callable[[], int | None] | None = None,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        table: str = TABLE,
    ) -> None:
        self._nft = executor
        self._generation = generation
        self.max_elements = max_elements
        self.table = table
        self._chains: dict[str, _Wanted] = {}
        self._sets: dict[str, tuple[SetSpec, set[str]]] = {}
        self._model: KernelTable | None = None  # None: read the kernel on the next apply
        self._table_exists = False
        self._verified: int | None = None  # generation at which the model equals the kernel
        self._chain_refs: Counter[str] = Counter()  # by desired chains and map elements
        self._set_refs: Counter[str] = Counter()  # by desired chains
        self._touched_chains: set[str] = set()
        self._touched_sets: set[str] = set()
        self._plan_all = True
        self._in_grace = True
        self._owned: set[str] = set()  # chains and sets this run has written
        self._failed: dict[str, str] = {}  # chain -> why the kernel refused it
        self._unsafe: dict[str, str] = {}  # chain -> why its rules were refused
        self._too_big: set[str] = set()  # sets over max_elements (left as they are)
        self._deferred: set[str] = set()  # deletions the kernel refused: retried next apply
        self._warm = False  # prepare() ran since the last commit
        self.refresh_skipped = False
        self.reads = 0  # listings of the table (tests, debugging)
        self.last_script = ""  # the last transaction written (tests, debugging)

    def __repr__(self) -> str:
        return f"NftTable({FAMILY} {self.table})"

    # -- desired state: chains ---------------------------------------------------------------

    def set_chain(self, name: str, chain: Chain) -> None:
        check_name(name)
        current = self._chains.get(name)
        if current is not None and (current.asked, current.base) == (chain.rules, chain.base):
            return  # unchanged: whatever is pending for it (a failed stub) stays
        self._failed.pop(name, None)
        self._unsafe.pop(name, None)
        written = None
        problems = [(r, why) for r in chain.rules if (why := analyse(r).unsafe) is not None]
        if problems:
            rule, why = problems[0]
            reason = f"unsafe rule ({why}): {quoted(rule)}"
            log.error("%r: refusing chain %s, programming a drop stub: %s", self, name, reason)
            self._unsafe[name] = reason
            written = UNSAFE
        self._set_wanted(name, _Wanted(chain, written))

    def remove_chain(self, name: str) -> None:
        self._failed.pop(name, None)
        self._unsafe.pop(name, None)
        if name in self._chains:
            self._set_wanted(name, None)

    def _set_wanted(self, name: str, wanted: _Wanted | None) -> None:
        old = self._chains.pop(name, None)
        if old is not None:
            self._count(self._chain_refs, old.chains, -1)
            self._count(self._set_refs, old.sets, -1)
            self._touched_chains |= old.chains
            self._touched_sets |= old.sets
        if wanted is not None:
            self._chains[name] = wanted
            self._count(self._chain_refs, wanted.chains, +1)
            self._count(self._set_refs, wanted.sets, +1)
            self._touched_chains |= wanted.chains
        self._touched_chains.add(name)

    @staticmethod
    def _count(counter: Counter[str], refs: Iterable[str], delta: int) -> None:
        for ref in refs:
            counter[ref] += delta
            if counter[ref] <= 0:
                del counter[ref]

    # -- desired state: sets and maps --------------------------------------------------------

    def set_set(self, name: str, spec: SetSpec, elements: Iterable[str]) -> None:
        check_name(name)
        new = self._safe(name, elements)
        old = self._sets.get(name)
        if old is not None and old[0] == spec and old[1] == new:
            return
        if spec.map is not None or (old is not None and old[0].map is not None):
            self._retarget(old[1] if old else set(), new)
        self._sets[name] = (spec, new)
        self._touched_sets.add(name)

    def add_elements(self, name: str, spec: SetSpec, elements: Iterable[str]) -> None:
        current = self._sets.get(name)
        if current is None:
            self.set_set(name, spec, elements)
            return
        new = self._safe(name, elements) - current[1]
        if new:
            if spec.map is not None:
                self._retarget(set(), new)
            current[1].update(new)
            self._touched_sets.add(name)

    def remove_elements(self, name: str, elements: Iterable[str]) -> None:
        current = self._sets.get(name)
        if current is None:
            return
        gone = current[1] & set(elements)
        if gone:
            if current[0].map is not None:
                self._retarget(gone, set())
            current[1].difference_update(gone)
            self._touched_sets.add(name)

    def remove_set(self, name: str) -> None:
        old = self._sets.pop(name, None)
        if old is not None:
            if old[0].map is not None:
                self._retarget(old[1], set())
            self._touched_sets.add(name)

    def _safe(self, name: str, elements: Iterable[str]) -> set[str]:
        result = set(elements)
        bad = [e for e in result if unsafe_element(e)]
        if bad:
            log.error("%r: leaving unsafe elements out of %s: %s", self, name, quoted(bad[0]))
            result.difference_update(bad)
        return result

    def _retarget(self, old: set[str], new: set[str]) -> None:
        gone, added = element_targets(old - new), element_targets(new - old)
        self._count(self._chain_refs, gone, -1)
        self._count(self._chain_refs, added, +1)
        self._touched_chains |= gone | added

    # -- state ---------------------------------------------------------------------------------

    def end_grace_period(self) -> None:
        """From the next apply on, sweep what an earlier run left and nothing wants."""
        self._in_grace = False
        self._plan_all = True

    @property
    def chains(self) -> dict[str, tuple[str, ...]]:
        """The rules asked for, per desired chain."""
        return {name: wanted.asked for name, wanted in self._chains.items()}

    def written(self, name: str) -> tuple[str, ...]:
        """The lines a desired chain is written as (hash comments included)."""
        return self._chains[name].lines

    @property
    def sets(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(elements) for name, (_, elements) in self._sets.items()}

    @property
    def failed_chains(self) -> dict[str, str]:
        """Chains the kernel refused or that were unsafe (drop stubs instead), and why."""
        return {**self._unsafe, **self._failed}

    @property
    def dirty(self) -> bool:
        touched = self._touched_chains or self._touched_sets or self._deferred
        return bool(touched or self._plan_all)

    # -- applying ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Warm up for the next change while the driver is idle: a dry run that needs what a
        real transaction needs (nft's cache of the table's sets, the kernel's validation of
        the table's chains), so that the next transaction finds both done (at 1,000 endpoints,
        measured under load: about 5 ms instead of 15). Once per commit; errors are ignored (it
        only ever saves time)."""
        if self._warm or self._model is None or not self._table_exists or not self._sets:
            return
        self._warm = True
        some_set = next((n for n, (spec, _) in self._sets.items() if spec.interval), None)
        lines = [
            f"add chain {FAMILY} {self.table} felix-warm-up",
            f"add rule {FAMILY} {self.table} felix-warm-up accept",
        ]
        if some_set is not None:
            lines.append(f"add element {FAMILY} {self.table} {some_set} {{ 255.255.255.254 }}")
        self._nft.check("\n".join(lines) + "\n")

    def _gen(self) -> int | None:
        return self._generation() if self._generation is not None else None

    def apply(self, force_refresh: bool = False) -> bool:
        """Make the kernel match in one transaction; True if one was written. Raises NftError
        (the desired state is kept, so a later apply converges)."""
        if force_refresh:
            self.refresh_skipped = False
            generation = self._gen()
            if (
                generation is not None
                and generation == self._verified
                and self._model is not None
                and not self.dirty
                and not self._failed
            ):
                self.refresh_skipped = True  # nothing was committed since the model was right
                return False
            self._failed.clear()  # a refresh gives refused chains another chance
            self._model = None
        elif self._model is not None and not self.dirty:
            return False
        reads, error = 0, ""
        for _ in range(MAX_ROUNDS):
            if self._model is None:
                reads += 1
                if reads > MAX_READS:
                    break
                self._verified = self._gen()  # (taken before the listing)
                self._model = self._read()
                self._plan_all = True
            plan = self._plan(self._model)
            if plan.script.empty():
                self._done()
                return False
            text = plan.script.render()
            before = self._gen()
            status, error = self._nft.run(text)
            self.last_script = text
            if status == 0:
                self._committed(plan, before)
                return True
            if not self._isolate(error, plan.script):
                log.warning("%r: transaction refused (%s); reading the table again", self,
                            error.strip()[:300])  # fmt: skip
                self._model = None
                self._verified = None
        self._model = None
        raise NftError(f"nft keeps refusing Felix's transaction: {error.strip()[:1000]}")

    def _read(self) -> KernelTable:
        self.reads += 1
        status, text, error = self._nft.list_json(FAMILY, self.table)
        if status != 0:
            if "No such file or directory" in error:
                self._table_exists = False
                return KernelTable()
            raise NftError(f"cannot list table {FAMILY} {self.table}: {error.strip()[:500]}")
        self._table_exists = True
        return parse_table(text)

    def _isolate(self, error: str, script: Script) -> bool:
        """Fail closed the chains nft named, or defer the deletions it refused; False if no
        command of ours could be blamed. Nothing was committed: the model still holds."""
        blamed = False
        for kind, name in failed_commands(error, script):
            if kind in ("add rule", "add chain", "flush chain") and name in self._chains:
                if name not in self._failed:
                    log.error(
                        "%r: the kernel refused chain %s (%s); programming it as a drop stub "
                        "and applying the rest",
                        self,
                        name,
                        error.strip()[:500],
                    )
                    self._failed[name] = error.strip()[:500]
                    self._touched_chains.add(name)
                    blamed = True
            elif kind in ("delete chain", "delete set") and name not in self._deferred:
                log.info("%r: %s %s refused for now; retrying later", self, kind, name)
                self._deferred.add(name)
                blamed = True
        return blamed

    def _committed(self, plan: Plan, before: int | None) -> None:
        """Record a committed transaction in the model."""
        assert self._model is not None
        after = self._gen()
        own = before is not None and after == before + 1 and before == self._verified
        self._verified = after if own else None
        self._warm = False
        if plan.recreate:
            self._model = KernelTable()
        self._table_exists = True
        for name in plan.deleted_chains:
            self._model.chains.pop(name, None)
            self._owned.discard(name)
        for name in plan.deleted_sets:
            self._model.sets.pop(name, None)
            self._owned.discard(name)
        for name, wanted in plan.chains.items():
            refs = wanted.chains | wanted.sets
            self._model.chains[name] = KernelChain(wanted.base, wanted.hashes, refs)
            self._owned.add(name)
        for name, spec in plan.new_sets.items():
            self._model.sets[name] = KernelSet(spec, set())
        for name, (adds, dels) in plan.deltas.items():
            have = self._model.sets[name].elements
            have.difference_update(dels)
            have.update(adds)
            self._owned.add(name)
        self._done()

    def _done(self) -> None:
        self._touched_chains = set(self._deferred)
        self._touched_sets = set(self._deferred)
        self._deferred = set()
        self._plan_all = False
