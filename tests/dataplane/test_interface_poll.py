"""HostInterfacePollInterval: the driver re-scans interfaces and addresses on a timer, so a
netlink event it missed (the kernel drops them when the socket overflows) is repaired.

The timer decision is tested with stand-ins; the repair itself with a real watcher, real
iptables and ipsets, all inside a test namespace, with the netlink events deliberately never
read (the loop's ``select()`` is not run), so only the poll can find the new address.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from calico.common.datamodel_v1 import HostEndpointKey
from calico.common.resources import HostEndpoint
from calico.felix.calc import messages as m
from calico.felix.dataplane import names
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.driver.config import DriverConfig, default_driver_config
from calico.felix.driver.loop import DriverLoop, next_interface_poll
from calico.felix.driver.pipe import FrameReader, FrameWriter
from calico.felix.kernel.commands import NetnsRunner
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import IptablesTable
from calico.felix.kernel.routes import RouteTable
from calico.felix.kernel.watcher import InterfaceWatcher
from calico.lab.netns import NetNS

MakeNS = Callable[[], NetNS]
SERVICE_IP = "198.18.9.1"


def config(poll: int) -> DriverConfig:
    """A driver configuration with only the interface poll on."""
    return default_driver_config(
        interface_poll_interval=poll, refresh_interval=0, startup_cleanup_delay=30
    )


@pytest.fixture
def pipe_ends() -> Iterator[tuple[FrameReader, FrameWriter]]:
    """A reader and writer for DriverLoop (unused by the code under test, but real): two
    pipes, so that what the loop sends is never what it finds waiting to be read."""
    from_felix, to_felix = os.pipe(), os.pipe()
    try:
        yield FrameReader(from_felix[0]), FrameWriter(to_felix[1])
    finally:
        for fd in (*from_felix, *to_felix):
            os.close(fd)


class FakeWatcher:
    """Counts snapshots; `found` says how many changes the next snapshot will find."""

    def __init__(self) -> None:
        self.snapshots = 0
        self.changes = 0
        self.found = 0

    def snapshot(self) -> None:
        self.snapshots += 1
        self.changes += self.found


class FakeManager:
    in_sync = False
    in_flight = False

    def __init__(self, by_address: bool = True) -> None:
        self.applies = 0
        self.by_address = by_address  # whether a host endpoint is found by address

    def matches_host_endpoints_by_address(self) -> bool:
        return self.by_address

    def apply(self, force_refresh: bool = False, detach: bool = False) -> None:
        self.applies += 1


def test_next_interface_poll() -> None:
    assert next_interface_poll(100.0, 10) == 110.0
    assert next_interface_poll(100.0, 0) is None  # 0 disables the poll
    assert next_interface_poll(100.0, -1) is None


def test_poll_runs_on_its_timer_and_applies_only_what_it_found(
    pipe_ends: tuple[FrameReader, FrameWriter],
) -> None:
    watcher, manager = FakeWatcher(), FakeManager()
    t0 = time.monotonic()
    loop = DriverLoop(config(5), *pipe_ends, manager, watcher)  # type: ignore[arg-type]
    loop._run_due_work(t0 + 4)  # (the loop's clock, driven by hand)
    assert watcher.snapshots == 0, "not due yet"
    loop._run_due_work(t0 + 65)
    assert watcher.snapshots == 1
    assert manager.applies == 0, "the re-scan found nothing: nothing to program"
    loop._run_due_work(t0 + 66)
    assert watcher.snapshots == 1, "the next poll is an interval after the last one"
    watcher.found = 1
    loop._run_due_work(t0 + 71)
    assert (watcher.snapshots, manager.applies) == (2, 1), "a change found is programmed"


def test_no_poll_without_host_endpoints_found_by_address(
    pipe_ends: tuple[FrameReader, FrameWriter],
) -> None:
    watcher, manager = FakeWatcher(), FakeManager(by_address=False)
    loop = DriverLoop(config(5), *pipe_ends, manager, watcher)  # type: ignore[arg-type]
    loop._run_due_work(time.monotonic() + 65)
    assert watcher.snapshots == 0, "events suffice: no re-scan of every interface"


def test_poll_interval_zero_never_polls(pipe_ends: tuple[FrameReader, FrameWriter]) -> None:
    watcher = FakeWatcher()
    loop = DriverLoop(config(0), *pipe_ends, FakeManager(), watcher)  # type: ignore[arg-type]
    loop._run_due_work(time.monotonic() + 10_000)
    assert watcher.snapshots == 0


@pytest.mark.parametrize("poll", [2, 0])
def test_poll_repairs_a_missed_address_event(
    netns: MakeNS, pipe_ends: tuple[FrameReader, FrameWriter], poll: int
) -> None:
    """A host endpoint by expected IP; the address appears on an interface; the netlink event
    is never read. With the poll, the next re-scan programs the host endpoint into the real
    iptables of the namespace; with the poll off (0), it is never programmed: so this test
    fails without the poll."""
    host, peer = netns(), netns()
    host.add_veth_to(peer, "hepa", "eth0")
    host.set_up("hepa")
    runner = NetnsRunner(host.name)
    ipr = IPRoute(netns=host.name, flags=0)
    try:
        kernel = KernelTables(
            (4,),
            lambda v, t: IptablesTable(v, t, runner),
            lambda v: IpsetTable(v, runner),
            lambda v: RouteTable(v, ipr, ("tap",), conntrack_runner=runner),
        )
        manager = DataplaneManager(RenderConfig(interface_prefixes=("tap",)), kernel, None)
        endpoint = HostEndpoint(expected_ipv4_addrs=(SERVICE_IP,))
        manager.on_message(m.HostEndpointUpdate(HostEndpointKey("h", "svc"), endpoint, (), ()))
        manager.on_message(m.InSync())
        with InterfaceWatcher(manager, netns=host.name) as watcher:
            watcher.snapshot()
            t0 = time.monotonic()
            loop = DriverLoop(config(poll), *pipe_ends, manager, watcher)
            loop.feed([])  # marks the loop dirty: the first apply programs the static chains
            loop._run_due_work(t0)
            dispatch = host.run(["iptables", "-w", "-S", names.CHAIN_FROM_HOST_IF]).stdout
            assert "-i hepa" not in dispatch, "no interface holds the expected IP yet"

            host.add_addr("hepa", f"{SERVICE_IP}/32")  # its event stays unread in the socket
            loop._run_due_work(t0 + 1)  # (before the poll is due)
            dispatch = host.run(["iptables", "-w", "-S", names.CHAIN_FROM_HOST_IF]).stdout
            assert "-i hepa" not in dispatch, "events are bypassed: nothing may know yet"

            loop._run_due_work(t0 + 60)  # (the poll, if any, is due)
            dispatch = host.run(["iptables", "-w", "-S", names.CHAIN_FROM_HOST_IF]).stdout
            chain = names.host_endpoint_chain("from", "hepa")
            if poll:
                assert f"-A {names.CHAIN_FROM_HOST_IF} -i hepa -g {chain}" in dispatch
                assert host.run(["iptables", "-w", "-S", chain], check=False).returncode == 0
            else:
                assert "-i hepa" not in dispatch, "without the poll the missed event stays missed"
    finally:
        ipr.close()
