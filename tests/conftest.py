"""Shared fixtures: real etcd servers and network namespaces from ``calico.lab``.

Tests run as root on a disposable machine (CI) and are never skipped for lack of it.
Everything a fixture starts is stopped or deleted at teardown, even when a test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from calico.lab.etcd_server import EtcdServer
from calico.lab.netns import NetNS, cleanup_leftovers, live_namespaces
from calico.lab.tls import make_tls


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole run; tests share it through the ``etcd`` fixture."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd-session"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    """The shared etcd with ``/calico`` emptied in both the v2 and the v3 store.

    Tests that stop, restart or compact etcd must use ``etcd_factory`` instead; should
    one stop this server anyway, it is started again here rather than failing later tests.
    """
    if not etcd_server.running:
        etcd_server.start()
    etcd_server.v2_delete("/calico", recursive=True)
    etcd_server.v3_delete("/calico", prefix=True)
    return etcd_server


@pytest.fixture
def etcd_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., EtcdServer]]:
    """Make private, started etcd servers; ``tls=True`` adds certs (see ``server.tls``)."""
    servers: list[EtcdServer] = []

    def make(tls: bool = False) -> EtcdServer:
        work_dir = tmp_path_factory.mktemp("etcd")
        files = make_tls(work_dir / "tls") if tls else None
        server = EtcdServer(work_dir / "server", tls=files)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def netns() -> Iterator[Callable[[], NetNS]]:
    """Make created network namespaces; all are deleted at teardown."""
    made: list[NetNS] = []

    def make() -> NetNS:
        ns = NetNS()
        made.append(ns)
        return ns.create()

    try:
        yield make
    finally:
        errors = []
        for ns in made:
            try:
                ns.delete()
            except RuntimeError as exc:  # keep deleting the others, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.hookimpl(trylast=True)  # after session fixtures have been torn down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net: sweep ``calt-`` namespaces and complain loudly about leaks.

    A namespace this session created and did not delete is a harness bug, so it fails
    the run; stale ones from an earlier, crashed run are only reported.
    """
    ours = set(live_namespaces())
    removed = cleanup_leftovers()
    if not removed:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"WARNING: deleted leftover network namespaces: {', '.join(removed)}"
    if reporter is not None:
        reporter.write_line("")  # the progress line may still be open
        reporter.write_sep("!", message, red=True, bold=True)
    else:
        print(message)
    if ours & set(removed) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
