"""The driver loop in a burst: with more from Felix already waiting, an apply may leave its last
restore committing (manager.apply(detach=True)); the loop then reads and applies what waits,
and reports convergence, statuses and readiness only after an apply that left nothing running.

A stand-in manager; the pipe from Felix is a real one."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest

from calico.felix.driver.config import default_driver_config
from calico.felix.driver.loop import DriverLoop
from calico.felix.driver.pipe import BatchReceived, DriverReady, FrameReader, FrameWriter


class Manager:
    in_sync = True

    def __init__(self, leaves_running: bool = True) -> None:
        self.detached: list[bool] = []
        self.statuses = 0
        self.in_flight = False
        self.leaves_running = leaves_running  # (the nftables backend never does)

    def apply(self, force_refresh: bool = False, detach: bool = False) -> None:
        self.detached.append(detach)
        self.in_flight = detach and self.leaves_running

    def endpoint_statuses(self, apply_failed: bool) -> dict[Any, str]:
        self.statuses += 1
        return {}


@pytest.fixture
def pipes() -> Iterator[tuple[FrameWriter, FrameReader, FrameReader, FrameWriter]]:
    """Felix's end (writes to the driver, reads what the driver sends) and the driver's."""
    to_driver, to_felix = os.pipe(), os.pipe()
    try:
        yield (
            FrameWriter(to_driver[1]),
            FrameReader(to_felix[0]),
            FrameReader(to_driver[0]),
            FrameWriter(to_felix[1]),
        )
    finally:
        for fd in (*to_driver, *to_felix):
            os.close(fd)


def in_a_burst(
    pipes: tuple[FrameWriter, FrameReader, FrameReader, FrameWriter], manager: Manager
) -> DriverLoop:
    """A loop (reporting endpoint statuses) that has read one batch from Felix while the next
    is already waiting in the pipe."""
    felix_out, _, reader, writer = pipes
    config = default_driver_config(endpoint_reporting=True, refresh_interval=0)
    loop = DriverLoop(config, reader, writer, manager, None)  # type: ignore[arg-type]
    loop.feed([[BatchReceived(1.0)]])  # the first batch, read
    felix_out.send([BatchReceived(2.0)])  # and the next, already waiting
    return loop


@pytest.fixture(autouse=True)
def no_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "freeze", lambda: None)  # (readiness freezes the test process)


def test_an_apply_with_more_waiting_may_leave_work_running_and_reports_after_the_next(
    pipes: tuple[FrameWriter, FrameReader, FrameReader, FrameWriter],
) -> None:
    _, felix_in, reader, _ = pipes
    manager = Manager()
    loop = in_a_burst(pipes, manager)
    loop._run_due_work(0.0)
    assert manager.detached == [True]
    assert (manager.statuses, loop._convergence.pending) == (0, 1), "not reported yet"
    assert not loop._reported_ready
    frames = reader.read()  # the loop reads what waits...
    assert frames is not None
    loop.feed(frames)
    loop._run_due_work(0.0)  # ...and applies it, leaving nothing running: reports
    assert manager.detached == [True, False]
    assert (manager.statuses, loop._convergence.pending) == (1, 0)
    assert loop._reported_ready
    sent = felix_in.read()
    assert sent is not None and any(isinstance(msg, DriverReady) for frame in sent for msg in frame)


def test_after_a_detached_apply_the_loop_settles_even_if_nothing_more_comes(
    pipes: tuple[FrameWriter, FrameReader, FrameReader, FrameWriter],
) -> None:
    manager = Manager()
    loop = in_a_burst(pipes, manager)
    loop._run_due_work(0.0)
    pipes[2].read()  # (what waited turns out to change nothing: the loop is not dirty for it)
    loop._dirty = False
    loop._run_due_work(0.0)
    assert manager.detached == [True, False], "an apply that collects what was left running"
    assert loop._reported_ready
    loop._run_due_work(0.0)
    assert manager.detached == [True, False], "then nothing"


def test_with_nothing_left_running_the_loop_reports_at_once(
    pipes: tuple[FrameWriter, FrameReader, FrameReader, FrameWriter],
) -> None:
    """(the nftables backend writes one whole transaction: nothing is ever left running)"""
    manager = Manager(leaves_running=False)
    loop = in_a_burst(pipes, manager)
    loop._run_due_work(0.0)
    assert manager.detached == [True]
    assert (manager.statuses, loop._convergence.pending, loop._reported_ready) == (1, 0, True)


def test_a_failed_apply_that_left_a_restore_running_reports_only_after_its_retry(
    pipes: tuple[FrameWriter, FrameReader, FrameReader, FrameWriter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """E.g. the interfaces of a burst fail after the rules' restore was left running."""
    manager = Manager()
    real_apply = manager.apply

    def failing(force_refresh: bool = False, detach: bool = False) -> None:
        real_apply(force_refresh, detach)
        raise OSError("no buffer space")

    monkeypatch.setattr(manager, "apply", failing)
    loop = in_a_burst(pipes, manager)
    loop._run_due_work(0.0)
    assert loop._unsettled and loop._dirty and loop._retry_at is not None
    assert manager.statuses == 0
    pipes[2].read()
    monkeypatch.setattr(manager, "apply", real_apply)
    loop._run_due_work(loop._retry_at)
    assert manager.detached == [True, False]
    assert (manager.statuses, loop._reported_ready) == (1, True)
