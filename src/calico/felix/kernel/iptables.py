"""A reconciling iptables driver for one (IP version, table) pair (felix.md §5.1, §5.10).

The driver: its model of the kernel, reads, writes and retries, and the bookkeeping of owned,
learned, failed and stubbed chains. The plan (what a transaction must change) is its pure half,
`iptables_plan.Planner`; the text handling it needs is in `iptables_text`, the nf_tables
generation in `nftables`.

API model
---------
Declarative. The owner states what it wants and then calls :meth:`IptablesTable.apply`:

- ``set_chain(name, rules)`` / ``remove_chain(name)``: the full content of a Felix chain
  (``felix-*``), as iptables rule specs without the leading ``-A <chain>``.
- ``set_hook(kernel_chain, felix_chain)`` / ``remove_hook(kernel_chain)``: a single plain
  ``-j <felix_chain>`` rule kept at position 1 of a kernel built-in chain (INPUT, ...).
- ``apply(force_refresh=False)``: make the kernel match, in one ``iptables-restore --noflush``
  transaction. Without pending changes it does nothing; ``force_refresh=True`` re-reads the kernel
  and repairs whatever another tool changed (the owner calls that every IptablesRefreshInterval).
- ``end_grace_period()``: from the next ``apply()`` on, unwanted ``felix-*`` chains left by an
  earlier run are deleted and missing-chain stubs replace leftovers.

Design goals
------------
- Only chains whose content differs are rewritten, so a steady-state apply writes nothing and a
  restart with unchanged policy does not touch the dataplane.
- Felix owns ``felix-*`` chains whole; of everything else it only ever adds or removes its own
  plain hook jumps. Host rules are never rewritten and non-Felix chains are never deleted.
- A failed apply leaves the desired state intact, so the next apply simply tries again.
- Graceful restart: until ``end_grace_period()`` an earlier run's chains keep carrying traffic.

Implementation
--------------
The driver keeps a model of the table: what ``iptables-save -t <table>`` printed the last time it
read the kernel, updated with every transaction it has since committed. The kernel is read only
on the first apply, on ``apply(force_refresh=True)`` and after a failed restore (when the model
may be wrong); every other apply trusts the model, as the original Felix trusted its own record
of the chains it owns (felix.md §5.10), so an incremental apply costs one ``iptables-restore`` and
no ``iptables-save`` (which takes 150 ms+ at 1,000 endpoints, and grows with the table). The
model holds each chain's rules as text, as iptables-save prints them; a chain that is as wanted
holds the very tuple of rule specs the owner gave, so the model costs no memory of its own for
it. A read compares text first and tokenises only a chain printed otherwise than expected (the
renderer writes iptables-save's own spelling, so that is rare): a refresh that finds nothing wrong
costs the ``iptables-save`` and one string comparison per rule. On iptables-nft a
refresh first reads the nf_tables generation (:func:`nft_generation`); if no commit happened
since a refresh last found the table as wanted, it skips even the ``iptables-save``. The plan
is the difference between desired state and the model, written as one restore transaction:
``:chain - [0:0]`` declarations, ``-A`` lines for rewritten chains, ``-D``/``-I <chain> 1`` for
hooks, ``-X`` for chains to delete, ``COMMIT``. Declaring an existing chain flushes it under
``--noflush``, so only chains we rewrite or delete are ever declared (and no ``-F`` is needed).

Comparison normalises both sides only lightly (shlex tokens, so spacing and quoting do not matter);
iptables-save also canonicalises rules (``-p tcp --dport 22`` prints as ``-p tcp -m tcp --dport
22``). To stay idempotent whatever form the caller uses, after a write made by a refresh the driver
reads the kernel back and remembers, per chain, the form the kernel printed for the rules it was
given; later refreshes compare against that. Rules written in iptables-save's own form (the
renderer's aim) always match; a chain in another spelling costs one extra rewrite, at the first
refresh after it was written (or the first apply after a restart).

References: a ``felix-*`` target of ``-j``/``-g`` in a desired chain (or a hook target) that is not
itself desired is written as a drop stub (comment "WARNING Missing chain"); during the grace
period a leftover kernel chain of that name is left as is instead.

Failures: if restore's error points at the ``COMMIT`` line, someone else changed the table
concurrently: re-read and retry with backoff (10 ms doubling, capped at 0.5 s, 10 tries in all).
If it points at an ``-A <chain> ...`` line of a chain we were asked for, that chain alone is
bad (say, a rule the kernel refuses): it is written as a drop stub instead (comment "WARNING
Failed to program chain"; fail closed), recorded in :attr:`IptablesTable.failed_chains` and the
transaction is retried without it, so one bad chain never holds back the others. It is tried
again when its content changes or on the next refresh.
Any other failure raises :class:`IptablesError` carrying stderr and the offending input line.
(The legacy backend reports every kernel-side error, e.g. a jump loop, at ``COMMIT``; such an
error is retried too and raised after the last try, about 2.6 s later.)

Thread safety
-------------
None. One owner (the dataplane thread) creates, mutates and applies an instance.
"""

from __future__ import annotations

import functools
import logging
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from calico.common import protocols
from calico.common.quoting import quoted
from calico.felix.dataplane import names
from calico.felix.kernel.commands import (
    CommandRunner,
    Started,
    output_lines,
    run_with_pieces,
    start_with_pieces,
)
from calico.felix.kernel.iptables_plan import FAILED_RULES, STUB_RULES, Planner
from calico.felix.kernel.iptables_text import (
    BUILTIN_CHAINS,
    Plan,
    Spec,
    binary,
    failed_line,
    same_rules,
    save_specs,
    spec_targets,
    split_host_line,
    unsafe_rule,
)

log = logging.getLogger(__name__)


@functools.cache
def host_protocol_number(name: str) -> str:
    """A protocol's number as text, as iptables-save may name it: the built-in table
    (`protocols.listed_number`), and for a name it lacks, this host's /etc/protocols, the
    file iptables-save names protocols by (RHEL's lists every IANA keyword). Unknown: as is."""
    found = protocols.listed_number(name)
    if found != name or name.isdigit():
        return found
    try:
        return str(socket.getprotobyname(name))
    except OSError:
        return name


@functools.lru_cache(maxsize=4096)
def rule_facts(rule: Spec) -> tuple[str | None, tuple[str, ...]]:
    """Why a rule spec is not safe restore input (None if it is), and the Felix chains it
    jumps or goes to. Cached: endpoint chains repeat the same rules hundreds of times, and each
    IP version's table checks its own copy (a burst of 500 new endpoints spent a sixth of the
    driver's own time here). Small, so that it never holds much the tables no longer do."""
    why = unsafe_rule(rule)
    if why is not None:
        return why, ()  # (never written as it is)
    refs = {t for t in spec_targets(rule) if names.is_felix_name(t)}
    # (interned: 5,000 chains' references are mostly the same few thousand names)
    return None, tuple(sorted(map(sys.intern, refs)))


__all__ = [
    "FAILED_RULES",  # (the planner's; here too for the driver's callers)
    "STUB_RULES",
    "UNSAFE_RULES",
    "IptablesError",
    "IptablesTable",
    "binary",  # (iptables_text's)
    "uses_nft",
]


# What a chain whose rules are not safe restore input becomes (fail closed, never retried as is).
UNSAFE_RULES: tuple[str, ...] = ('-m comment --comment "WARNING Unsafe rule refused" -j DROP',)
LOCK_WAIT_SECS = 10
MAX_TRIES = 10
FIRST_BACKOFF = 0.01
MAX_BACKOFF = 0.5


class IptablesError(Exception):
    """iptables-save or iptables-restore failed (and retrying would not help)."""

    def __init__(self, message: str, stderr: str = "", line: str | None = None, input: str = ""):
        detail = f"{message}: {stderr.strip()}" if stderr else message
        if line is not None:
            detail += f" (offending input line: {line!r})"
        super().__init__(detail)
        self.stderr = stderr
        self.line = line
        self.input = input


def uses_nft(ip_version: int, runner: CommandRunner, backend: str | None = None) -> bool:
    """Whether this iptables-restore programs nf_tables (its --version says "nf_tables")."""
    proc = runner.run([binary(ip_version, "restore", backend), "--version"])
    return proc.returncode == 0 and "nf_tables" in proc.stdout


class IptablesTable(Planner):
    """Keeps the ``felix-*`` chains and hooks of one (IP version, table) as desired."""

    def __init__(
        self,
        ip_version: int,
        table: str,
        runner: CommandRunner,
        *,
        backend: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        generation: Callable[[], int | None] | None = None,
    ) -> None:
        """`generation`: the nf_tables generation of the namespace the runner programs
        (:func:`nft_generation` when that is this process's and the backend is nft), or None."""
        self.ip_version = ip_version
        self.table = table
        self._runner = runner
        self._sleep = sleep
        self._restore = [binary(ip_version, "restore", backend), "--noflush", "--verbose"]
        self._restore += ["--wait", str(LOCK_WAIT_SECS)]  # xtables lock (legacy; nft ignores)
        self._save = [binary(ip_version, "save", backend), "-t", table]
        self._chains: dict[str, tuple[str, ...]] = {}
        # chain -> the Felix chains its rules jump to, found once in set_chain so that planning
        # never looks at every rule.
        self._refs: dict[str, tuple[str, ...]] = {}
        # What we believe the kernel's table holds, each chain's rules as iptables-save prints
        # them (None: unknown, read it on the next apply). A chain as wanted holds the very
        # tuple that `_expected` gives, so the model costs no memory of its own for it.
        self._model: dict[str, Sequence[Spec]] | None = None
        self.tokenised_chains = 0  # chains the last apply had to tokenise (tests, debugging)
        self._generation = generation
        # The nf_tables generation at which a refresh last found the kernel as wanted (None: not
        # known). Any later commit, ours included, changes the generation.
        self._verified_generation: int | None = None
        self.refresh_skipped = False  # the last refresh skipped reading (tests, debugging)
        self._hooks: dict[str, str] = {}  # kernel chain -> felix chain
        self._unhooks: set[tuple[str, str]] = set()  # hooks removed: re-removed on refresh
        self._owned: set[str] = set()  # chains this instance has written (safe to delete)
        # chain -> (rule specs we wrote, how iptables-save printed them back)
        self._learned: dict[str, tuple[tuple[str, ...], tuple[Spec, ...]]] = {}
        self._failed: dict[str, str] = {}  # chain -> why the kernel refused it
        # chain -> (the rules asked for, why they were refused before reaching the kernel): the
        # chain holds UNSAFE_RULES until it is set to something else.
        self._unsafe: dict[str, tuple[tuple[str, ...], str]] = {}
        self._in_grace = True
        self._dirty = False
        # How many desired chains and hooks jump to each Felix chain (those need a stub if not
        # desired themselves), kept up to date so that planning never scans every rule.
        self._ref_count: Counter[str] = Counter()
        # Chains whose wanted content (rules, stub, deletion) may have changed since the last
        # successful apply: all that a plan from the model needs to look at.
        self._touched: set[str] = set()
        self._plan_all = True  # look at every chain on the next apply (start, end of grace)
        self._detached: _Detached | None = None  # a restore apply(detach=True) left running
        # A detached restore failed: until an apply succeeds, none is detached, so that the
        # error is handled in the apply, where a refused chain fails closed.
        self._detach_failed = False

    def __repr__(self) -> str:
        return f"IptablesTable(v{self.ip_version}, {self.table!r})"

    # -- desired state ------------------------------------------------------------------------

    def set_chain(self, name: str, rules: Sequence[str]) -> None:
        _check_chain_name(name)
        rules = tuple(rules)
        unsafe = self._unsafe.get(name)
        if self._chains.get(name) == rules or (unsafe is not None and unsafe[0] == rules):
            # Unchanged (the caller re-sent it): nothing to plan. Whatever is pending for this
            # chain (a failed stub, a rewrite) stays as it is.
            return
        self._failed.pop(name, None)  # new content deserves a new try
        self._unsafe.pop(name, None)
        # Only rules the chain did not have are checked (its others were, when they came): an
        # endpoint add changes one rule of a dispatch leaf of dozens.
        checked = set(self._chains.get(name, ()))
        problems = [
            (rule, why)
            for rule in rules
            if rule not in checked and (why := rule_facts(rule)[0]) is not None
        ]
        if problems:
            rule, why = problems[0]
            reason = f"unsafe rule ({why}): {quoted(rule)}"
            log.error("%r: refusing chain %s, programming a drop stub: %s", self, name, reason)
            self._unsafe[name] = (rules, reason)
            rules = UNSAFE_RULES
        old_refs = self._refs.get(name, ())
        new_refs = tuple(sorted({t for rule in rules for t in rule_facts(rule)[1]}))
        self._count_refs(old_refs, -1)
        self._count_refs(new_refs, +1)
        self._chains[name] = rules
        self._refs[name] = new_refs
        # The chain itself, and chains that may gain or lose their last reference (stubs).
        self._touched.update(old_refs, new_refs)
        self._touched.add(name)
        self._dirty = True

    def remove_chain(self, name: str) -> None:
        self._failed.pop(name, None)
        self._unsafe.pop(name, None)
        if self._chains.pop(name, None) is not None:
            old_refs = self._refs.pop(name)
            self._count_refs(old_refs, -1)
            self._touched.update(old_refs)
            self._touched.add(name)
            self._dirty = True

    def _count_refs(self, refs: Iterable[str], delta: int) -> None:
        for ref in refs:
            self._ref_count[ref] += delta
            if self._ref_count[ref] <= 0:
                del self._ref_count[ref]

    def set_hook(self, kernel_chain: str, felix_chain: str) -> None:
        """Keep ``-j felix_chain`` at position 1 of kernel_chain (replacing an earlier hook)."""
        _check_chain_name(felix_chain)
        old = self._hooks.get(kernel_chain)
        if old and old != felix_chain:
            self._unhooks.add((kernel_chain, old))
        if old:
            self._count_refs((old,), -1)
            self._touched.add(old)
        self._unhooks.discard((kernel_chain, felix_chain))
        self._hooks[kernel_chain] = felix_chain
        self._count_refs((felix_chain,), +1)
        self._touched.add(felix_chain)
        self._dirty = True

    def remove_hook(self, kernel_chain: str) -> None:
        felix_chain = self._hooks.pop(kernel_chain, None)
        if felix_chain:
            self._unhooks.add((kernel_chain, felix_chain))
            self._count_refs((felix_chain,), -1)
            self._touched.add(felix_chain)
            self._dirty = True

    def end_grace_period(self) -> None:
        """Let the next apply() delete an earlier run's leftovers and stub missing chains."""
        self._in_grace = False
        self._plan_all = True
        self._dirty = True

    @property
    def chains(self) -> dict[str, tuple[str, ...]]:
        return dict(self._chains)

    @property
    def hooks(self) -> dict[str, str]:
        return dict(self._hooks)

    @property
    def failed_chains(self) -> dict[str, str]:
        """Chains the kernel refused or that were unsafe to write (programmed as drop stubs
        instead), with the reason."""
        return {**{c: why for c, (_, why) in self._unsafe.items()}, **self._failed}

    # -- applying -----------------------------------------------------------------------------

    def apply(self, force_refresh: bool = False, detach: bool = False) -> bool:
        """Make the kernel match; return True if a restore was written.

        Without changes since the last successful apply this runs nothing at all; with
        ``force_refresh`` it re-reads the kernel and repairs whatever differs. Raises
        IptablesError on failure; the desired state is kept, so the next call tries again.

        ``detach``: return once the restore has its input, leaving the tool to commit while the
        caller renders the next changes (a burst); ``settle()``, which every apply calls first,
        collects it. Changes made meanwhile are kept apart from the ones it writes."""
        self.settle()
        if not (self._dirty or force_refresh):
            return False
        self.tokenised_chains = 0
        generation = None
        if force_refresh:
            self.refresh_skipped = False
            generation = self._generation() if self._generation is not None else None
            if self._unchanged_since_verified(generation):
                # No nf_tables commit since a refresh found everything as wanted: the kernel
                # still is, so there is nothing to read or repair.
                self.refresh_skipped = True
                return False
            self._failed.clear()  # a refresh gives refused chains another chance
            self._model = None  # re-read: another tool may have changed the table
        # After a write made by a refresh, read back to learn the kernel's spelling of what we
        # wrote; other applies skip that (the next refresh learns it).
        read_back = force_refresh
        backoff = FIRST_BACKOFF
        attempt = 0
        edits = True  # (off for the rest of this apply once an in-place edit fails)
        first_try = True
        while True:
            # A plan from a fresh read looks at every chain; one from the model only at the
            # chains touched since the last successful apply (the rest are as we left them).
            full = self._plan_all or self._model is None
            if self._model is None:
                self._model = self._read()
            plan, after = self._plan(self._model, full, edits)
            if plan.empty():
                self._done()
                if force_refresh:
                    # Read after `generation` was taken, and found as wanted.
                    self._verified_generation = generation
                return False
            self._verified_generation = None  # this commit changes the generation
            if detach and not force_refresh and first_try and not self._detach_failed:
                # (only a first try: a retry's errors are handled here, as they come)
                started = start_with_pieces(self._runner, self._restore, plan.pieces(self.table))
                self._detached = _Detached(started, plan, after, self._touched, self._plan_all)
                self._touched = set()  # what changes from now on: the next apply's to write
                self._dirty = self._plan_all = False
                return True
            proc = run_with_pieces(self._runner, self._restore, plan.pieces(self.table))
            first_try = False
            if proc.returncode == 0:
                self._after_success(plan, after, read_back)
                return True
            # Part of the table may not be what we think (a concurrent change, a refused
            # chain): plan the retry from a fresh read.
            self._model = None
            text = plan.render(self.table)  # (made again only now, for the line it names)
            line = failed_line(proc.stderr, text)
            edited = _edited_chain(line, plan) if line is not None else None
            if edited is not None:
                # An edit names rules by their position, so the chain may not be what the
                # model says (another tool's change), or the kernel refused an inserted rule:
                # rewrite the chains instead, planned from a fresh read.
                log.warning(
                    "%r: an in-place edit of chain %s failed (%s); rewriting the chains instead",
                    self,
                    edited,
                    proc.stderr.strip(),
                )
                edits = False
                continue
            bad_chain = self._refused_chain(line, plan)
            if bad_chain is not None:
                # Each round fails closed one more chain, so this ends.
                self._failed[bad_chain] = proc.stderr.strip()
                log.error(
                    "%r: the kernel refused chain %s (%s); programming it as a drop stub and "
                    "applying the rest",
                    self,
                    bad_chain,
                    proc.stderr.strip(),
                )
                continue
            attempt += 1
            if line != "COMMIT" or attempt == MAX_TRIES:
                raise IptablesError(f"{self._restore[0]} failed", proc.stderr, line, text)
            log.warning(
                "%r: concurrent change at COMMIT; retry %d in %.2fs", self, attempt, backoff
            )
            self._sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    @property
    def in_flight(self) -> bool:
        """Whether a detached apply's restore may still be running (until settle())."""
        return self._detached is not None

    def settle(self) -> None:
        """Wait for the restore a detached apply left running, and record its outcome: its
        chains in the model, or, if it failed, everything it was to write back to the pending
        changes, planned from a fresh read of the kernel by the next apply (which then handles
        the error as an apply does: a refused chain becomes a drop stub, and so on)."""
        detached, self._detached = self._detached, None
        if detached is None:
            return
        try:
            proc = detached.started.wait()
        except BaseException:
            self._give_back(detached)
            raise
        if proc.returncode == 0:
            self._record(detached.plan, detached.after)
            return
        log.warning(
            "%r: a restore left running while the next changes were rendered failed (%s); "
            "the next apply writes them again from a fresh read",
            self,
            proc.stderr.strip(),
        )
        self._give_back(detached)

    def _give_back(self, detached: _Detached) -> None:
        """A detached restore failed, or its outcome is unknown: what it was to write is
        pending again, planned from a fresh read, by an apply that handles its errors."""
        self._model = None
        self._touched |= detached.touched
        self._plan_all = self._plan_all or detached.plan_all
        self._dirty = True
        self._detach_failed = True

    def _unchanged_since_verified(self, generation: int | None) -> bool:
        """Whether a refresh may skip reading: the generation is the verified one and nothing
        is pending here (no changes, no refused chains to retry, a model to trust)."""
        return (
            generation is not None
            and generation == self._verified_generation
            and not self._dirty
            and not self._failed
            and self._model is not None
        )

    def _refused_chain(self, line: str | None, plan: Plan) -> str | None:
        """The requested chain an ``-A <chain> ...`` error line belongs to, if any."""
        if line is None or not line.startswith("-A "):
            return None
        chain = line.split()[1]
        wanted = chain in plan.writes and chain in self._chains
        return chain if wanted and chain not in self._failed else None

    def _read(self) -> dict[str, Sequence[Spec]]:
        """The kernel's table. Rules compare as text: only a chain printed otherwise than we
        expect is tokenised (124,000 rules at 1,000 endpoints took seconds of CPU to tokenise)."""
        with output_lines(self._runner, self._save) as saved:  # (never held whole: 12 MB)
            if saved.returncode != 0:
                raise IptablesError(f"{self._save[0]} failed", saved.stderr)
            return save_specs(saved.lines, self.table, self._as_expected)

    def _as_expected(self, chain: str, printed: list[Spec]) -> Sequence[Spec]:  # (save_specs')
        """One chain as read: our expected tuple itself if it holds what we want there (the
        same text, or the same tokens: quoting and blanks do not count), else as printed."""
        rules = self._chains.get(chain)
        if rules is None:
            return printed
        expected = self._expected(chain, rules)
        if tuple(printed) == expected:
            return expected
        self.tokenised_chains += 1
        if len(printed) == len(expected) and all(
            split_host_line(a) == split_host_line(b) for a, b in zip(printed, expected, strict=True)
        ):
            return expected
        return printed

    def _after_success(self, plan: Plan, after: dict[str, Sequence[Spec]], read_back: bool) -> None:
        """Record a committed transaction, and that the kernel is now as wanted."""
        self._record(plan, after)
        if read_back:
            # Learn the kernel's spelling of what we wrote, so later refreshes compare exactly.
            self._model = self._read()
            for chain, rules in plan.writes.items():
                self._learn_spelling(chain, rules, tuple(self._model.get(chain, ())))
        self._done()

    def _record(self, plan: Plan, after: dict[str, Sequence[Spec]]) -> None:
        """Record a committed transaction in the model (and owned/learned bookkeeping)."""
        assert self._model is not None
        self._owned |= set(plan.writes)
        self._owned -= set(plan.deletes)
        for chain in plan.deletes:
            self._learned.pop(chain, None)
            self._model.pop(chain, None)
        for chain, rules in plan.writes.items():
            self._model[chain] = self._expected(chain, rules)
        # Built-in chains as the hook edits left them (computed by the plan).
        for chain, listed in after.items():
            if chain in BUILTIN_CHAINS:
                self._model[chain] = listed

    def _learn_spelling(
        self, chain: str, rules: tuple[str, ...], printed: tuple[Spec, ...]
    ) -> None:
        """Remember how the kernel printed `rules`, if that is only another spelling of them.

        Anything else (a rule more or less, a different match or target) means the kernel does
        not hold what we wrote, e.g. another tool edited the chain between our write and our
        read: learning it would make us defend that edit as ours forever. Such a chain is not
        learned, so the next refresh rewrites it."""
        ours = rules
        if printed == ours:
            self._learned.pop(chain, None)
        elif same_rules(
            [split_host_line(rule) for rule in ours],
            [split_host_line(rule) for rule in printed],
            host_protocol_number,
        ):
            self._learned[chain] = (rules, printed)
        else:
            self._learned.pop(chain, None)
            log.warning(
                "%r: the kernel lists chain %s unlike what was written (%d rules written, %d "
                "listed); it will be rewritten at the next refresh",
                self,
                chain,
                len(ours),
                len(printed),
            )

    def _done(self) -> None:
        """The kernel matches the desired state (as far as the model knows)."""
        self._detach_failed = False
        self._dirty = False
        self._touched.clear()
        self._plan_all = False


@dataclass(frozen=True)
class _Detached:
    """A restore apply(detach=True) started: what it writes, and the pending changes it took
    (given back if it fails)."""

    started: Started
    plan: Plan
    after: dict[str, Sequence[Spec]]
    touched: set[str]
    plan_all: bool


def _edited_chain(line: str, plan: Plan) -> str | None:
    """The chain a restore input line edits in place (``-D``/``-I`` of `plan.edits`), if any."""
    words = line.split(maxsplit=2)
    if len(words) > 1 and words[0] in ("-D", "-I") and words[1] in plan.edits:
        return words[1]
    return None


def _check_chain_name(name: str) -> None:
    if not names.is_felix_name(name) or len(name) > names.MAX_CHAIN_NAME_LEN:
        raise ValueError(f"not a valid Felix chain name: {name!r}")
