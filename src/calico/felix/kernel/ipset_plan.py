"""Planning for `calico.felix.kernel.ipsets.IpsetTable` (pure: no I/O): what each set's next
write is (a full replace, a delta, nothing), and what the table records when a write succeeds or
fails. The driver that runs ``ipset`` is `ipsets`; the text of each operation is `ipset_text`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from calico.felix.kernel.ipset_text import KernelSet, RestoreOp, delta_op, destroy_op, replace_op

log = logging.getLogger(__name__)


@dataclass
class SetState:
    """Everything the table knows about one set it owns."""

    name: str
    temp_name: str
    set_type: str
    desired: set[str]
    # What the kernel holds as far as we know; None = unknown, so the next write is a full replace.
    programmed: set[str] | None = None
    # Members whose state may differ from `programmed` (only tracked while that is known).
    touched: set[str] = field(default_factory=set)
    # We have written (or tried to write) it in this run, so removing it must destroy it.
    written: bool = False
    # Digest of the kernel's ``ipset save`` text for this set when a refresh last found it equal
    # to `programmed`; None once we write to it (the next refresh compares members again).
    verified: bytes | None = None


class SetPlanner:
    """The planning half of `IpsetTable` (its state is declared here, set there)."""

    family: str
    max_size: int
    _sets: dict[str, SetState]  # by kernel name
    _dirty: set[str]  # sets with changes not yet written
    _pending_destroy: set[str]  # kernel names to destroy on the next apply
    _kernel: dict[str, KernelSet] | None  # None until first read

    @staticmethod
    def _unshare(state: SetState) -> None:
        """Before `desired` changes in place: a set written as wanted shares one member set
        between `desired` and `programmed` (saving a copy of every member: 12 MB at 1,000
        endpoints), which the first change after the write splits."""
        if state.programmed is state.desired:
            state.programmed = set(state.desired)

    def _touch(self, state: SetState, changed: set[str]) -> None:
        if not changed:
            return
        if state.programmed is not None:  # else the next write is a full replace anyway
            state.touched |= changed
        self._dirty.add(state.name)

    def _plan(self, skip: set[str], quiet: bool = False) -> list[RestoreOp]:
        """`quiet`: do not log oversize sets (the apply that follows will)."""
        assert self._kernel is not None
        ops: list[RestoreOp] = []
        for name in sorted(self._dirty - skip):
            state = self._sets[name]
            if len(state.desired) > self.max_size:
                if quiet:
                    skip.add(name)
                    continue
                log.error(
                    "ipset %s would have %d members; ipset will not be updated until size drops "
                    "below %d (MaxIpsetSize)", name, len(state.desired), self.max_size,
                )  # fmt: skip
                skip.add(name)
                continue
            op = self._update_op(state)
            if op is None:
                self._dirty.discard(name)  # changes cancelled out
            else:
                state.written = True
                ops.append(op)
        # Destroys go last so a busy one (the usual failure) cannot hold up the updates.
        for name in sorted(self._pending_destroy - skip):
            if name in self._kernel:
                ops.append(destroy_op(name))
            else:
                self._pending_destroy.discard(name)
        return ops

    def _update_op(self, state: SetState) -> RestoreOp | None:
        if state.programmed is None or state.name not in self._kernel_or_empty():
            return self._replace_op(state)
        adds = sorted(m for m in state.touched if m in state.desired and m not in state.programmed)
        dels = sorted(m for m in state.touched if m not in state.desired and m in state.programmed)
        return delta_op(state.name, adds, dels)

    def _replace_op(self, state: SetState) -> RestoreOp:
        kernel = self._kernel_or_empty()
        params = (state.set_type, self.family, self.max_size)
        existing, old_temp = kernel.get(state.name), kernel.get(state.temp_name)
        return replace_op(state.name, state.temp_name, params, state.desired, existing, old_temp)

    def _kernel_or_empty(self) -> dict[str, KernelSet]:
        return self._kernel if self._kernel is not None else {}

    def _succeeded(self, op: RestoreOp) -> None:
        kernel = self._kernel_or_empty()
        if op.kind == "destroy":
            self._pending_destroy.discard(op.name)
            kernel.pop(op.name, None)
            return
        state = self._sets[op.name]
        state.verified = None  # the kernel's text changed: the next refresh compares members
        if op.kind == "replace":
            kernel[state.name] = KernelSet(state.name, state.set_type, self.family, self.max_size)
            kernel.pop(state.temp_name, None)
        # The op wrote every member that differed, all planned in this apply: the kernel now
        # holds exactly `desired` (shared, see _unshare).
        state.programmed = state.desired
        state.touched.clear()
        self._dirty.discard(op.name)

    def _failed(self, op: RestoreOp) -> None:
        if op.kind == "destroy":
            return  # stays pending: retried on the next apply
        # Part of it may have been applied: forget what the kernel holds, so it is rewritten whole.
        state = self._sets[op.name]
        state.programmed = None
        state.verified = None
        state.touched.clear()
        self._dirty.add(op.name)
