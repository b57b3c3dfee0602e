"""Reconciling ipset driver for one IP version (felix.md §5.7, §4.4).

API model
    :class:`IpsetTable` is declarative. The caller says what each set should contain, keyed by
    the calc graph's set IDs (``s:...`` selector / ``t:...`` tag sets, always ``hash:ip``), or by
    a fixed kernel name for Felix's own sets (the ``hash:net`` IPAM pool sets):
    :meth:`~IpsetTable.replace_members`, :meth:`~IpsetTable.add_members`,
    :meth:`~IpsetTable.remove_members`, :meth:`~IpsetTable.remove_set`,
    :meth:`~IpsetTable.replace_named`, :meth:`~IpsetTable.remove_named`. These only record
    intent; :meth:`~IpsetTable.apply` makes the kernel match it. The calc graph sends both
    families in one set, so members of the other family are silently dropped: a v4 table and a
    v6 table each keep their own half.

Design goals
    * Nothing touches the kernel before the first ``apply()``; the caller only calls it once the
      calc graph is in sync (§4.4), so a partial membership is never programmed.
    * One ``ipset restore`` per ``apply()`` in the normal case, however many sets changed, so a
      burst of endpoint churn costs one fork.
    * A set is never briefly empty or missing while iptables uses it: the first write (and any
      rewrite) fills a temporary set and ``swap``\\s it in; later changes are ``add``/``del``.
    * Self-healing: a failed delta means the kernel is not what we think, so the set falls back to
      a full replace; ``apply(force_refresh=True)`` re-reads the kernel and repairs any drift
      (someone flushed or destroyed our set).
    * Never destroy what might be in use: removed sets are destroyed best effort (the kernel
      refuses while an iptables rule still references them) and retried on the next apply;
      leftovers from a previous run are only swept by :meth:`~IpsetTable.cleanup_orphans`, which
      the caller runs after ``StartupCleanupDelay``.

Implementation
    Per set we keep the desired members, the members we believe the kernel holds (``None`` when
    unknown, which forces a full replace) and the members touched since the last write, so a
    delta costs O(changes), and an add followed by a remove of the same member cancels out.
    A refresh reads ``ipset save`` (every set's create line and members) and keeps, per set, a
    digest of the text the kernel printed for it when it last matched our record: a set whose
    text hashes the same is as we left it, so only a set that differs (or that we wrote since) has
    its members parsed and compared. A refresh that finds nothing wrong therefore parses no
    members (300,000 at 1,000 endpoints, seconds of CPU through ``ipset list``).
    ``ipset restore`` is not transactional: lines before a failing line have been applied, and it
    reports the failing line number, so after a failure the operations before that line are
    committed, the failing set is marked unknown (or, for a busy destroy, left pending) and the
    rest is re-planned and run again. Each set gets at most two failures per apply. The text
    (each set's operation, the restore input, which operation an error names) is `ipset_text`'s.

    :meth:`~IpsetTable.begin` starts an apply's first restore early, in a worker thread, so that
    the caller can render its rules meanwhile (at a cold start, 1.5 s of restore at 1,000
    endpoints); every other method first waits for it and records its outcome.

Thread safety
    None: an :class:`IpsetTable` belongs to the one dataplane thread that calls it. ``apply()``
    and ``cleanup_orphans()`` block while the ipset tool runs; the worker thread of ``begin()``
    makes the tool's input from its operations (lists no one changes once planned) and runs
    the tool, and its outcome is recorded by the owner's thread.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from calico.felix.dataplane import names
from calico.felix.kernel.commands import CommandRunner, output_lines, run_with_pieces
from calico.felix.kernel.ipset_plan import SetPlanner, SetState
from calico.felix.kernel.ipset_text import (
    HASH_IP,
    SET_TYPES,
    KernelSet,
    RestoreOp,
    SavedSet,
    destroy_op,
    failed_op,
    iter_ipset_save,
    parse_ipset_list,
    restore_pieces,
)
from calico.felix.kernel.ipset_text import normalize as _normalize

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE: Final = 1048576
# Runs the restores begin() starts (a thread is only created at the first one).
_BACKGROUND = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ipset-restore")


class IpsetError(RuntimeError):
    """The ipset tool failed in a way the table cannot work around (e.g. cannot list sets)."""


class IpsetTable(SetPlanner):
    """The ipsets of one IP version, reconciled with the kernel on :meth:`apply`."""

    def __init__(self, ip_version: int, runner: CommandRunner, *, max_size: int = DEFAULT_MAX_SIZE):
        if ip_version not in (4, 6):
            raise ValueError(f"ip_version must be 4 or 6, not {ip_version!r}")
        self.ip_version = ip_version
        self.family = "inet" if ip_version == 4 else "inet6"
        self.max_size = max_size
        self._runner = runner
        self._sets: dict[str, SetState] = {}  # by kernel name
        self._dirty: set[str] = set()  # sets with changes not yet written
        self._pending_destroy: set[str] = set()  # kernel names to destroy on the next apply
        self._kernel: dict[str, KernelSet] | None = None  # None until first read
        # A restore begin() started: its ops and the running command's result.
        self._in_flight: tuple[list[RestoreOp], Future[subprocess.CompletedProcess[str]]] | None
        self._in_flight = None
        self.compared_sets = 0  # sets the last refresh had to compare member by member (tests)

    # -- declarative API: calc-graph sets ------------------------------------------------------

    def replace_members(self, set_id: str, members: Iterable[str]) -> None:
        """Set the full membership of a calc-graph set (creating it if new)."""
        self._settle()
        self._replace(names.ipset_name(set_id, self.ip_version), self._temp(set_id), HASH_IP,
                      members)  # fmt: skip

    def add_members(self, set_id: str, members: Iterable[str]) -> None:
        """Add members to a calc-graph set (an unknown set is created with them)."""
        self._settle()
        name = names.ipset_name(set_id, self.ip_version)
        state = self._sets.get(name) or self._new_set(name, self._temp(set_id), HASH_IP)
        new = self._normalize_all(members, HASH_IP) - state.desired
        self._unshare(state)
        state.desired |= new
        self._touch(state, new)

    def remove_members(self, set_id: str, members: Iterable[str]) -> None:
        """Remove members from a calc-graph set; members or sets we do not have are ignored."""
        self._settle()
        state = self._sets.get(names.ipset_name(set_id, self.ip_version))
        if state is None:
            log.debug("remove_members for unknown ipset %s ignored", set_id)
            return
        gone = self._normalize_all(members, HASH_IP) & state.desired
        self._unshare(state)
        state.desired -= gone
        self._touch(state, gone)

    def remove_set(self, set_id: str) -> None:
        """Forget a calc-graph set; it is destroyed on the next apply (once unreferenced)."""
        self._settle()
        self._remove(names.ipset_name(set_id, self.ip_version))

    # -- declarative API: fixed-name sets --------------------------------------------------------

    def replace_named(self, name: str, set_type: str, members: Iterable[str]) -> None:
        """Set the membership of a Felix set with a fixed name, e.g. ``names.IPSET_ALL_POOLS``."""
        self._settle()
        if set_type not in SET_TYPES:
            raise ValueError(f"unsupported ipset type {set_type!r}")
        if not names.is_felix_name(name) or len(name) > names.MAX_IPSET_NAME_LEN:
            raise ValueError(f"bad Felix ipset name {name!r}")
        state = self._sets.get(name)
        if state is not None and state.set_type != set_type:
            self._remove(name)  # the full replace below recreates it with the new type
        self._replace(name, names.named_ipset_temp_name(name), set_type, members)

    def remove_named(self, name: str) -> None:
        """Forget a fixed-name set; it is destroyed on the next apply (once unreferenced)."""
        self._settle()
        self._remove(name)

    # -- inspection ------------------------------------------------------------------------------

    def desired_names(self) -> set[str]:
        """Kernel names of all sets this table wants to exist."""
        return set(self._sets)

    def desired_members(self, name: str) -> frozenset[str]:
        """Desired (normalised, this family only) members of the set with this kernel name."""
        return frozenset(self._sets[name].desired)

    @property
    def in_sync(self) -> bool:
        """True when the last apply wrote everything and nothing changed since."""
        return not self._dirty and not self._pending_destroy and self._kernel is not None

    # -- applying --------------------------------------------------------------------------------

    def apply(
        self, force_refresh: bool = False, destroy: bool = True, refreshed: bool = False
    ) -> bool:
        """Write all pending changes; with `force_refresh`, first re-read and repair the kernel.

        `refreshed`: the caller has just compared this table with the kernel
        (:func:`refresh_tables`: one ``ipset save`` lists both families' sets, so the v4 and v6
        tables share one), so a `force_refresh` need not read it again.

        `destroy=False` leaves removed sets for a later apply: the caller updates sets before
        rewriting the rules and destroys them after, when no rule references them any more (a
        destroy of a referenced set fails, and each failure costs a re-read of the kernel).
        Returns True if the kernel now matches the desired state, False if something is left for
        the next apply (errors are logged).
        """
        self._settle()
        try:
            if force_refresh and not refreshed:
                refresh_tables([self])
            elif self._kernel is None:
                self._load_kernel()
        except IpsetError as exc:
            log.error("Cannot read ipsets, will retry: %s", exc)
            return False
        return self._write_all(destroy)

    def begin(self) -> None:
        """Start writing the updates pending now (not destroys: rules may still use those) in
        the background; the next apply() takes the outcome and writes whatever is left."""
        if self._in_flight is not None:
            return
        try:
            if self._kernel is None:
                self._load_kernel()
        except IpsetError:
            return  # apply() reads again and says why
        ops = self._plan(set(self._pending_destroy), quiet=True)
        if ops:
            # The input's text is made in the worker, a piece at a time as it is written.
            pieces = restore_pieces(ops)
            future = _BACKGROUND.submit(run_with_pieces, self._runner, ["ipset", "restore"], pieces)
            self._in_flight = (ops, future)

    def _settle(self) -> None:
        """Wait for the restore begin() started and record what it did. On any failure, each
        of its sets is rewritten whole by the next apply (which also logs the error)."""
        if self._in_flight is None:
            return
        ops, future = self._in_flight
        self._in_flight = None
        try:
            proc = future.result()
        except Exception as exc:  # the tool could not even run: apply() will say so again
            proc = subprocess.CompletedProcess(["ipset", "restore"], -1, "", str(exc))
        if proc.returncode == 0:
            for op in ops:
                self._succeeded(op)
            return
        log.warning("ipset restore started early failed (%s); rewriting", proc.stderr.strip())
        self._all_unknown(ops)

    def cleanup_orphans(self) -> list[str]:
        """Destroy this family's ``felix-v<N>-``/``felix-tmp-v<N>-`` sets we do not want.

        Best effort: sets still referenced (by iptables) are left and logged. Returns the names
        destroyed. Call only after StartupCleanupDelay, so a restarted Felix keeps the previous
        run's sets working until it has rebuilt them.
        """
        self._settle()
        try:
            kernel = self._load_kernel()
        except IpsetError as exc:
            log.error("Cannot list ipsets for cleanup: %s", exc)
            return []
        prefixes = names.ipset_sweep_prefixes(self.ip_version)
        orphans = sorted(n for n in kernel if n.startswith(prefixes) and n not in self._sets)
        busy = [n for n in orphans if (kernel[n].references or 0) > 0]
        if busy:
            log.info("Leaving orphaned ipsets still referenced by the kernel: %s", busy)
        ops = [destroy_op(n) for n in orphans if n not in busy]
        destroyed = []
        while ops:
            failed_at = self._restore(ops)
            done = ops if failed_at is None else ops[: max(failed_at, 0)]
            for op in done:
                self._succeeded(op)
                destroyed.append(op.name)
            if failed_at is None or failed_at < 0:
                break
            log.warning("Could not destroy orphaned ipset %s; leaving it", ops[failed_at].name)
            ops = ops[failed_at + 1 :]
        if destroyed:
            log.info("Destroyed orphaned ipsets: %s", destroyed)
        return destroyed

    # -- internals: recording intent ----------------------------------------------------------

    def _temp(self, set_id: str) -> str:
        return names.ipset_temp_name(set_id, self.ip_version)

    def _new_set(self, name: str, temp_name: str, set_type: str) -> SetState:
        # A set that was being destroyed is simply rewritten in place (full replace).
        self._pending_destroy -= {name, temp_name}
        state = SetState(name, temp_name, set_type, desired=set())
        self._sets[name] = state
        self._dirty.add(name)
        return state

    def _replace(self, name: str, temp_name: str, set_type: str, members: Iterable[str]) -> None:
        state = self._sets.get(name) or self._new_set(name, temp_name, set_type)
        new = self._normalize_all(members, set_type)
        self._touch(state, state.desired ^ new)
        state.desired = new

    def _remove(self, name: str) -> None:
        state = self._sets.pop(name, None)
        self._dirty.discard(name)
        # Sets we never wrote in this run are a previous run's: only cleanup_orphans sweeps them.
        if state is not None and state.written:
            self._pending_destroy |= {state.name, state.temp_name}

    def _normalize_all(self, members: Iterable[str], set_type: str) -> set[str]:
        normalized = (_normalize(m, set_type, self.ip_version) for m in members)
        return {m for m in normalized if m is not None}

    def _normalize(self, member: str, set_type: str) -> str | None:
        return _normalize(member, set_type, self.ip_version)

    # -- internals: reading the kernel ---------------------------------------------------------

    def _load_kernel(self) -> dict[str, KernelSet]:
        """Re-read the kernel's set names and types (``ipset list -t``: no members) and mark ours
        that are missing or of another type for rewrite."""
        argv = ["ipset", "list", "-t"]
        proc = self._runner.run(argv)
        if proc.returncode != 0:
            raise IpsetError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        self._kernel = parse_ipset_list(proc.stdout)
        for state in self._sets.values():
            self._reconcile(state, self._kernel.get(state.name))
        return self._kernel

    # -- the refresh (`refresh_tables`) ----------------------------------------------------------

    def _start_refresh(self) -> None:
        self._kernel = {}
        self.compared_sets = 0

    def _refresh_one(self, saved: SavedSet) -> None:
        """Compare one set of the kernel's with our record, and plan the repair of any drift.

        A set whose saved text has the digest recorded when it last matched our record is
        unchanged and is not parsed; any other set of ours has its members compared with what
        we believe the kernel holds, and the differences are written by the next plan."""
        assert self._kernel is not None
        self._kernel[saved.kset.name] = saved.kset
        state = self._sets.get(saved.kset.name)
        if state is None:
            return  # the other family's, or not ours
        digest = saved.digest()
        if state.programmed is not None and state.verified == digest:
            return  # printed exactly as when it last matched our record
        self.compared_sets += 1
        members = frozenset(saved.members())
        self._reconcile(state, dataclasses.replace(saved.kset, members=members))
        # `programmed` is now what this text holds (if the set is usable at all).
        state.verified = digest if state.programmed is not None else None

    def _end_refresh(self) -> None:
        assert self._kernel is not None
        for state in self._sets.values():
            if state.name not in self._kernel:
                self._reconcile(state, None)

    def _reconcile(self, state: SetState, kset: KernelSet | None) -> None:
        if kset is None or kset.set_type != state.set_type or kset.family != self.family:
            if state.programmed is not None:
                log.warning("ipset %s is missing or changed in the kernel; rewriting", state.name)
            state.programmed = None
            state.verified = None
            state.touched.clear()
            self._dirty.add(state.name)
        elif kset.members is not None:
            actual = self._normalize_all(kset.members, state.set_type)
            if state.programmed is not None and actual != state.programmed:
                log.warning("ipset %s was modified outside Felix; repairing", state.name)
            # As wanted: share one member set, as after a write (`_unshare`).
            state.programmed = state.desired if actual == state.desired else actual
            # (`or set()`: an empty result of ^ keeps its operand's table, 11 MB over all sets)
            state.touched = (actual ^ state.desired) or set()
            if state.touched:
                self._dirty.add(state.name)

    # -- internals: planning and writing --------------------------------------------------------

    def _write_all(self, destroy: bool) -> bool:
        """Plan, write with one restore, and on failure commit what worked and re-plan."""
        assert self._kernel is not None
        failures: Counter[str] = Counter()
        skip: set[str] = set()  # sets given up on (oversize, failed twice) until the next apply
        if not destroy:
            skip |= self._pending_destroy
        while ops := self._plan(skip):
            failed_at = self._restore(ops)
            if failed_at is None:
                for op in ops:
                    self._succeeded(op)
                break
            if failed_at < 0:  # cannot tell which line failed: assume the worst about all
                self._all_unknown(ops)
                break
            # libipset sends one set's consecutive add/del lines as one batch, only when a later
            # line goes through: the refused line may have taken the op before it down too, so
            # that one is unknown (rewritten whole), not applied.
            for op in ops[: max(failed_at - 1, 0)]:
                self._succeeded(op)
            if failed_at > 0:
                self._failed(ops[failed_at - 1])
            bad = ops[failed_at]
            self._failed(bad)
            failures[bad.name] += 1
            # A busy destroy will not succeed now; a delta gets one full-replace retry, and a
            # replace one retry against a freshly read kernel (our view of it may be stale).
            if bad.kind == "destroy" or failures[bad.name] >= 2:
                skip.add(bad.name)
            if bad.kind != "destroy":
                # A failed update means our view of the kernel may be stale; a destroy fails
                # when the set is still in use, which says nothing new about the kernel.
                self._reload_names()
        return not (self._dirty or self._pending_destroy)

    def _all_unknown(self, ops: list[RestoreOp]) -> None:
        """After a restore that failed somewhere unknown: each of its sets is rewritten whole
        (destroys stay pending), against a fresh read of the kernel's set names."""
        for op in ops:
            self._failed(op)
        self._reload_names()

    def _reload_names(self) -> None:
        try:
            self._load_kernel()
        except IpsetError as exc:
            log.error("Cannot re-read ipsets after a failure: %s", exc)

    def _restore(self, ops: list[RestoreOp]) -> int | None:
        """Run one ``ipset restore`` of all ops. None on success, else the index of the failing
        op, or -1 if the failure cannot be pinned to one."""
        try:
            proc = run_with_pieces(self._runner, ["ipset", "restore"], restore_pieces(ops))
        except Exception:
            # ipset applies lines as it reads them: whatever it took before the tool was
            # stopped is unknown, so every set of this restore is rewritten whole next time.
            self._all_unknown(ops)
            raise
        if proc.returncode == 0:
            return None
        index = failed_op(proc.stderr, ops)
        if index < 0:
            log.error("ipset restore failed: %s", proc.stderr.strip())
            return -1
        op = ops[index]
        log_fn = log.warning if op.kind == "destroy" else log.error
        log_fn("ipset restore failed at %s of %s: %s", op.kind, op.name, proc.stderr.strip())
        return index


def refresh_tables(tables: Sequence[IpsetTable]) -> None:
    """Compare `tables` with one ``ipset save`` (it lists both families) and plan the repair of
    any drift. Each set is compared as soon as it is read, so only one set's text is held at a
    time (all of them, 13 MB at 1,000 endpoints, were the driver's peak at each refresh).
    Raises IpsetError if the kernel's sets cannot be read (then no table has changed); if the
    output cannot be read to its end, the tables forget the kernel and read it again."""
    for table in tables:
        table._settle()  # (its own restore first: the save must show what it wrote)
    argv = ["ipset", "save"]
    with output_lines(tables[0]._runner, argv) as saved:
        if saved.returncode != 0:
            raise IpsetError(f"{' '.join(argv)}: {saved.stderr.strip()}")
        for table in tables:
            table._start_refresh()
        try:
            for one in iter_ipset_save(saved.lines):
                for table in tables:
                    table._refresh_one(one)
        except BaseException:
            for table in tables:
                table._kernel = None  # (half read: the next apply reads the kernel again)
            raise
    for table in tables:
        table._end_refresh()
