"""apply_together (dataplane/backends.py): a cold start writes both IP versions' filter tables at
once; every table is applied even when another fails, and the first error is raised."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from calico.felix.dataplane.backends import IptablesBackend, apply_together
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.iptables import IptablesError, IptablesTable


class Table:
    def __init__(self, name: str, error: Exception | None = None, wait_for: Any = None) -> None:
        self.name, self.error, self.wait_for = name, error, wait_for
        self.applied: list[tuple[bool, str]] = []
        self.started = threading.Event()

    in_flight = False  # (never left running here)

    def settle(self) -> None:
        pass

    def apply(self, force_refresh: bool = False, detach: bool = False) -> bool:
        self.started.set()
        if self.wait_for is not None:  # proves both run at the same time: no deadlock
            assert self.wait_for.started.wait(5)
        self.applied.append((force_refresh, threading.current_thread().name))
        if self.error is not None:
            raise self.error
        return True


def together(*tables: Table, force_refresh: bool = False) -> None:
    apply_together(cast(list[IptablesTable], list(tables)), force_refresh)


def test_both_tables_are_written_at_the_same_time() -> None:
    v4 = Table("v4")
    v6 = Table("v6", wait_for=v4)
    v4.wait_for = v6  # each waits until the other has started
    together(v4, v6, force_refresh=True)
    assert v4.applied == [(True, threading.current_thread().name)]
    assert len(v6.applied) == 1 and v6.applied[0][1].startswith("iptables-filter")


def test_one_table_is_applied_in_the_callers_thread() -> None:
    v4 = Table("v4")
    together(v4)
    assert v4.applied == [(False, threading.current_thread().name)]


@pytest.mark.parametrize("failing", ["v4", "v6"])
def test_a_failure_does_not_stop_the_other_table(failing: str) -> None:
    error = IptablesError("iptables-restore failed", "refused")
    v4 = Table("v4", error if failing == "v4" else None)
    v6 = Table("v6", error if failing == "v6" else None)
    with pytest.raises(IptablesError) as raised:
        together(v4, v6)
    assert raised.value is error
    assert len(v4.applied) == len(v6.applied) == 1


def test_two_failures_raise_the_first_and_log_the_other(caplog: pytest.LogCaptureFixture) -> None:
    first = IptablesError("iptables-restore failed", "v4 refused")
    second = IptablesError("ip6tables-restore failed", "v6 refused")
    with pytest.raises(IptablesError) as raised:
        together(Table("v4", first), Table("v6", second))
    assert raised.value is first
    assert "Another table failed too" in caplog.text and "ip6tables-restore" in caplog.text


def test_only_the_first_apply_writes_the_filter_tables_together() -> None:
    tables = {(v, t): Table(f"{t}{v}") for v in (4, 6) for t in ("filter", "nat", "raw")}
    backend = IptablesBackend(RenderConfig(), (4, 6), cast(Any, tables), {}, filters_together=True)
    tables[(4, "filter")].error = IptablesError("iptables-restore failed", "refused")
    with pytest.raises(IptablesError):
        backend.apply(False)  # a failed first apply: the retry writes them together again
    tables[(4, "filter")].error = None
    backend.apply(False)
    backend.apply(False)
    main = threading.current_thread().name
    v6_threads = [thread for _, thread in tables[(6, "filter")].applied]
    assert [t.startswith("iptables-filter") for t in v6_threads] == [True, True, False]
    assert v6_threads[2] == main
    for key in [(4, "nat"), (6, "nat"), (4, "raw"), (6, "raw"), (4, "filter")]:
        assert [thread for _, thread in tables[key].applied] == [main] * 3


def test_filter_tables_are_written_in_turn_unless_asked() -> None:
    # (iptables-legacy: ip6tables-restore would wait for the lock iptables-restore holds)
    tables = {(v, t): Table(f"{t}{v}") for v in (4, 6) for t in ("filter", "nat", "raw")}
    IptablesBackend(RenderConfig(), (4, 6), cast(Any, tables), {}).apply(False)
    main = threading.current_thread().name
    assert all(table.applied == [(False, main)] for table in tables.values())
