"""A private, throw-away etcd cluster of several members on loopback, for tests and the demo.

Each member is Debian's ``etcd`` (3.4) as :class:`calico.lab.etcd_server.EtcdServer` runs it
(v2 and v3 APIs, zap log in its own directory), listening on 127.0.0.1 only, with its own
client and peer ports, chosen once and kept across restarts, as a real member's address is.
Data directories live under one work directory (a temporary one unless given, removed by
:meth:`EtcdCluster.stop`).

Members are killed (SIGKILL), stopped (SIGTERM) and started again by PID, one at a time or
several together, to take the leader away or the quorum: :meth:`EtcdCluster.leader` finds the
leader through the v3 maintenance status API, which answers even without a quorum.
:meth:`EtcdCluster.stop` (and leaving the ``with`` block, and the atexit hook of
:mod:`calico.lab.etcd_server`) stops every member on every path.

The data helpers (``v2_*``, ``v3_*``, ``etcdctl``) are the single server's, sent to the first
running member that answers; as there, they are the tests' oracle and never the product's
client. Lab namespaces reach every member through :mod:`calico.lab.relay`:
:class:`calico.lab.topology.ComputeHost` relays each of :attr:`EtcdCluster.ports` and gives
Felix all of :attr:`EtcdCluster.client_urls`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import requests

from calico.lab.etcd_server import EtcdServer, free_ports
from calico.lab.tls import TlsFiles

T = TypeVar("T")

START_TIMEOUT = 30.0
# Raft timings: short enough that losing the leader costs about a second, long enough that a
# busy two-core machine does not trigger elections by itself.
HEARTBEAT_MS = 100
ELECTION_MS = 1000


class EtcdMember(EtcdServer):
    """One member: an :class:`EtcdServer` whose initial cluster lists every member."""

    def __init__(
        self,
        cluster: EtcdCluster,
        work_dir: Path,
        name: str,
        tls: TlsFiles | None,
        ports: tuple[int, int],
    ):
        super().__init__(work_dir, tls=tls, name=name, ports=ports)
        self.cluster = cluster

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"EtcdMember({self.name!r}, {self.client_url}, {state})"

    def _cluster_flags(self) -> list[str]:
        return [
            f"--initial-cluster={self.cluster.initial_cluster}",
            # Ignored once the data directory exists (a restart rejoins as the same member).
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.cluster.token}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
        ]

    def launch(self) -> None:
        """Start the process without waiting: a new member is only healthy once a quorum of
        its peers runs, so the cluster launches them all, then waits."""
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._launch()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``/health`` is true (a leader and a quorum read); RuntimeError with the
        tail of the log otherwise."""
        problem = self._wait_healthy(time.monotonic() + timeout)
        if problem is not None:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            tail = "\n".join(log.splitlines()[-20:])
            raise RuntimeError(f"etcd {self.name} at {self.client_url}: {problem}\n{tail}")

    def status(self) -> dict[str, Any] | None:
        """The v3 maintenance status (``member_id``, ``leader``, ``raft_term``, ...; IDs as
        decimal strings), or None when the member does not answer. Needs no quorum."""
        if not self.running:
            return None
        try:
            resp = self._http.post(f"{self.client_url}/v3/maintenance/status", json={}, timeout=2)
            body = resp.json()
        except (requests.RequestException, ValueError):
            return None
        if resp.status_code != 200 or not isinstance(body, dict):
            return None
        header = body.get("header", {})
        return {
            "member_id": str(header.get("member_id", "")),
            "cluster_id": str(header.get("cluster_id", "")),
            "leader": str(body.get("leader", "0")),
            "raft_term": int(body.get("raftTerm", header.get("raft_term", 0)) or 0),
            "revision": int(header.get("revision", 0) or 0),
        }

    def is_leader(self) -> bool:
        status = self.status()
        return status is not None and status["leader"] == status["member_id"] != "0"


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 forming one cluster (three by default).

    ``work_dir``: where each member's data directory and logs go (``<work_dir>/<name>``); a
    temporary directory, removed by :meth:`stop`, when not given. ``tls``: the members serve
    clients over TLS with these files (peers talk plain HTTP on loopback).
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        size: int = 3,
        *,
        tls: TlsFiles | None = None,
        name: str = "lab",
    ):
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if work_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="calico-etcd-cluster-")
            work_dir = Path(self._own_tmp.name)
        self.work_dir = Path(work_dir)
        self.tls = tls
        # Every member's two ports at once: chosen member by member, two members were once
        # handed the same free port (etcd: "initial cluster ... has duplicate url").
        ports = free_ports(2 * size)
        self.members: tuple[EtcdMember, ...] = tuple(
            EtcdMember(
                self,
                self.work_dir / f"{name}{i}",
                f"{name}{i}",
                tls,
                (ports[2 * i - 2], ports[2 * i - 1]),
            )
            for i in range(1, size + 1)
        )
        # Unique to this cluster: two lab clusters (or runs) never mistake each other.
        self.token = f"lab-{os.getpid()}-{self.members[0].port}"

    def __repr__(self) -> str:
        return f"EtcdCluster({list(self.members)!r})"

    # -- addresses -----------------------------------------------------------------------

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def ports(self) -> list[int]:
        """Every member's client port (what a lab namespace's relays must forward)."""
        return [m.port for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints(self) -> str:
        """Every member's client URL, comma-separated: Felix's EtcdEndpoints, Neutron's
        ``[calico] etcd_endpoints``."""
        return ",".join(self.client_urls)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def running(self) -> list[EtcdMember]:
        """The members whose process is alive."""
        return [m for m in self.members if m.running]

    def member(self, name_or_port: str | int) -> EtcdMember:
        for m in self.members:
            if name_or_port in (m.name, m.port):
                return m
        raise KeyError(name_or_port)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> EtcdCluster:
        """Launch every member and wait until each is healthy; on failure stop them all."""
        try:
            self.start_members(self.members, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_members(self, members: Iterable[EtcdMember], timeout: float = START_TIMEOUT) -> None:
        """Start the given (stopped) members together, each on its own ports and data
        directory, and wait until each is healthy, which needs a quorum of the cluster."""
        chosen = list(members)
        for m in chosen:
            m.launch()
        for m in chosen:
            m.wait_healthy(timeout)

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL one member by PID: a crash."""
        member.kill()

    def stop_members(self, members: Iterable[EtcdMember]) -> None:
        """SIGTERM the given members by PID (a clean stop), each waited for."""
        for m in members:
            m.stop()

    def stop(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL after a grace period) and remove the
        temporary work directory if this cluster made it. Idempotent; keeps going on errors."""
        errors: list[BaseException] = []
        for m in self.members:
            try:
                m.stop()
            except Exception as exc:
                errors.append(exc)
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None
        if errors:
            raise errors[0]

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- raft ----------------------------------------------------------------------------

    def leader(self, timeout: float = 15.0) -> EtcdMember:
        """The running member that is the leader, waiting for an election if there is none
        yet; RuntimeError when none is elected in time (no quorum)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.running:
                if m.is_leader():
                    return m
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no etcd leader within {timeout} s: {self.running!r}")
            time.sleep(0.05)

    def has_leader(self) -> bool:
        return any(m.is_leader() for m in self.running)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running member is healthy (a leader, a quorum)."""
        for m in self.running:
            m.wait_healthy(timeout)

    # -- the data helpers, on any running member ------------------------------------------

    def _any(self, action: Callable[[EtcdServer], T]) -> T:
        """``action`` on the first running member that does not fail; the last error else."""
        error: Exception = RuntimeError("no etcd member is running")
        for m in self.running:
            try:
                return action(m)
            except (requests.RequestException, RuntimeError, subprocess.TimeoutExpired) as exc:
                error = exc
        raise error

    def v2_put(self, key: str, value: str, ttl: int | None = None) -> int:
        return self._any(lambda m: m.v2_put(key, value, ttl))

    def v2_get(self, key: str) -> str | None:
        return self._any(lambda m: m.v2_get(key))

    def v2_delete(self, key: str, recursive: bool = False) -> bool:
        return self._any(lambda m: m.v2_delete(key, recursive))

    def v3_put(self, key: str, value: str) -> int:
        return self._any(lambda m: m.v3_put(key, value))

    def v3_get(self, key: str) -> str | None:
        return self._any(lambda m: m.v3_get(key))

    def v3_delete(self, key: str, prefix: bool = False) -> int:
        return self._any(lambda m: m.v3_delete(key, prefix))

    def etcdctl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``etcdctl`` (API v3) against every member's URL, as an operator runs it."""
        return self.members[0].etcdctl(*args, input=input, check=check, endpoints=self.endpoints)
