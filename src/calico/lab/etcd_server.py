"""A private, throw-away, single-member etcd server on loopback, for tests and the demo.

It runs Debian's ``etcd`` 3.4 binary with both the v2 API (``--enable-v2=true``; 3.4 turns
it off by default) and the v3 API.  In 3.4 those are two SEPARATE key spaces: a key written
with v2 is invisible to v3 and vice versa.

The data helpers (``v2_*``, ``v3_*``) deliberately avoid the product's own etcd client: they
are the independent oracle tests check the product against.  v2 goes over plain
``requests``; v3 goes through ``etcdctl``.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

from calico.lab.process import end_process
from calico.lab.tls import TlsFiles

HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0
_HTTP_TIMEOUT = 5.0

# Every etcd this process started and has not stopped yet, so the atexit hook below can
# kill them if a caller forgets (or crashes before) stop().
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_forgotten() -> None:
    """Safety net: kill, by PID, any etcd this process started and never stopped."""
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _live.discard(proc)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free loopback TCP ports.

    All sockets stay open until every port is chosen, so the kernel cannot hand out the
    same port twice.  Another process could still take a port before etcd binds it; that
    window is small and start() reports it clearly.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def _tail(path: Path, start: int = 0, lines: int = 30) -> str:
    """The last ``lines`` lines of ``path`` written after byte offset ``start``."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class EtcdServer:
    """One etcd member listening only on 127.0.0.1, with its data under ``work_dir``.

    Ports are chosen once, here, and kept for the object's lifetime so that restart()
    brings the server back on the same URL, as a real etcd restart would.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        tls: TlsFiles | None = None,
        name: str = "lab",
        ports: tuple[int, int] | None = None,
    ):
        """`ports`: (client, peer), when the caller chose them (a cluster picks all of its
        members' ports at once, so that no two members are handed the same free port)."""
        self.work_dir = Path(work_dir)
        self.tls = tls
        self.name = name
        self.port, self.peer_port = ports if ports is not None else free_ports(2)
        self.data_dir = self.work_dir / "data"
        # etcd's own (zap) log, and stdout/stderr, which catch flag errors and Go panics
        # that happen before or outside the logger.
        self.log_file = self.work_dir / "etcd.log"
        self.output_file = self.work_dir / "etcd.out"
        self._proc: subprocess.Popen[bytes] | None = None
        # trust_env=False: a proxy set in the environment must never see loopback traffic.
        self._generation = 0
        self._http = requests.Session()
        self._http.trust_env = False
        if tls is not None:
            self._http.verify = str(tls.ca_file)
            self._http.cert = (str(tls.client_cert), str(tls.client_key))

    # -- addresses -----------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def host(self) -> str:
        return HOST

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def peer_url(self) -> str:
        # Peer traffic stays plain HTTP even with TLS: one member, loopback only.
        return f"http://{HOST}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        """PID of the running etcd, or None when stopped."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------

    def _argv(self) -> list[str]:
        argv = [
            "etcd",
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            *self._cluster_flags(),
            "--enable-v2=true",
            # Tests compact explicitly; automatic compaction would make them flaky.
            "--auto-compaction-retention=0",
            # 3.4 defaults to capnslog, which can only log to stdout/stderr/journald;
            # a log file needs zap.  (3.4 spells it --log-outputs; --log-output is the
            # deprecated 3.3 spelling.)
            "--logger=zap",
            f"--log-outputs={self.log_file}",
        ]
        if self.tls is not None:
            # Note: in 3.4 --trusted-ca-file alone already makes client certificates
            # mandatory; --client-cert-auth states it explicitly.
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca_file}",
                "--client-cert-auth=true",
            ]
        return argv

    def _cluster_flags(self) -> list[str]:
        """The initial cluster (this member alone) and the raft timings."""
        return [
            f"--initial-cluster={self.name}={self.peer_url}",
            "--initial-cluster-state=new",
            # A token unique to this server: two lab clusters never mistake each other.
            f"--initial-cluster-token=lab-{os.getpid()}-{self.port}-{self._generation}",
            # A lone member has no peers to miss heartbeats, but on every start it still
            # waits about one election timeout before electing itself (3.4's "tick
            # advance" does not skip that after a restart), so keep the timeout short.
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ]

    def _launch(self) -> None:
        # etcd refuses to start when an ETCD_* variable duplicates a flag, and the
        # caller's environment must not change how the lab server behaves anyway.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with self.output_file.open("ab") as out:
            self._proc = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        _live.add(self._proc)

    def _healthy(self) -> bool:
        try:
            resp = self._http.get(f"{self.client_url}/health", timeout=1)
        except requests.RequestException:
            return False
        return resp.status_code == 200 and resp.json().get("health") == "true"

    def start(self, timeout: float = 15.0) -> EtcdServer:
        """Launch etcd and wait until ``/health`` says it is healthy (it has a leader).

        If etcd's port is briefly still taken (e.g. just after stop() during restart())
        the launch is retried until ``timeout``; any other failure raises RuntimeError at
        once with the tail of etcd's log.
        """
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            marks = _size(self.log_file), _size(self.output_file)
            self._launch()
            problem = self._wait_healthy(deadline)
            if problem is None:
                return self
            self.stop()
            logs = _tail(self.log_file, marks[0]) + "\n" + _tail(self.output_file, marks[1])
            if "address already in use" in logs and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise RuntimeError(f"etcd {self.name} at {self.client_url}: {problem}\n{logs}")

    def _wait_healthy(self, deadline: float) -> str | None:
        """None once healthy, else why not (exited, or still unhealthy at the deadline)."""
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                return f"exited with status {code} during start-up"
            if self._healthy():
                return None
            if time.monotonic() >= deadline:
                return "not healthy before the start-up timeout"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM etcd (by PID), give it STOP_TIMEOUT seconds, then SIGKILL.  Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        end_process(proc, timeout=STOP_TIMEOUT)
        _live.discard(proc)

    def kill(self) -> None:
        """SIGKILL etcd by PID (a crash: no clean shutdown) and reap it.  Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _live.discard(proc)

    def restart(self, timeout: float = 15.0) -> EtcdServer:
        """Stop and start again: same ports, same data dir, new PID."""
        self.stop()
        return self.start(timeout)

    def wipe(self) -> None:
        """Delete the data dir so the next start() begins with an empty cluster."""
        if self.running:
            raise RuntimeError("stop etcd before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        # The cluster ID derives from the token: a rebuilt etcd gets a new one, as in life.
        self._generation += 1

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- v2 oracle (plain HTTP) ------------------------------------------------------------

    def _v2_url(self, key: str) -> str:
        return f"{self.client_url}/v2/keys/{quote(key.lstrip('/'))}"

    def _v2(self, method: str, key: str, **kw: Any) -> requests.Response:
        resp = self._http.request(method, self._v2_url(key), timeout=_HTTP_TIMEOUT, **kw)
        if resp.status_code >= 400 and resp.status_code != 404:
            raise RuntimeError(f"etcd v2 {method} {key}: HTTP {resp.status_code} {resp.text}")
        return resp

    def v2_put(self, key: str, value: str, ttl: int | None = None) -> int:
        """Set a v2 key; return its modifiedIndex."""
        data = {"value": value} if ttl is None else {"value": value, "ttl": str(ttl)}
        return int(self._v2("PUT", key, data=data).json()["node"]["modifiedIndex"])

    def v2_mkdir(self, key: str) -> int:
        """Create a v2 directory; return its modifiedIndex."""
        return int(self._v2("PUT", key, data={"dir": "true"}).json()["node"]["modifiedIndex"])

    def v2_get(self, key: str) -> str | None:
        """Value of a v2 key, None if it does not exist; ValueError for a directory."""
        resp = self._v2("GET", key)
        if resp.status_code == 404:
            return None
        node = resp.json()["node"]
        if node.get("dir"):
            raise ValueError(f"v2 key {key} is a directory")
        return str(node["value"])

    def v2_delete(self, key: str, recursive: bool = False) -> bool:
        """Delete a v2 key (or a whole directory tree); False if it did not exist."""
        params = {"recursive": "true"} if recursive else {}
        return self._v2("DELETE", key, params=params).status_code != 404

    def v2_index(self) -> int:
        """The v2 store's current index (``X-Etcd-Index`` header)."""
        return int(self._v2("GET", "/").headers["X-Etcd-Index"])

    # -- v3 oracle (etcdctl) ---------------------------------------------------------------

    def etcdctl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        endpoints: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl`` (API v3) against this server (or the comma-separated
        ``endpoints``, with this server's TLS files); RuntimeError on failure if check."""
        argv = ["etcdctl", f"--endpoints={endpoints or self.client_url}", "--dial-timeout=3s"]
        if self.tls is not None:
            argv += [
                f"--cacert={self.tls.ca_file}",
                f"--cert={self.tls.client_cert}",
                f"--key={self.tls.client_key}",
            ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
        env["ETCDCTL_API"] = "3"
        proc = subprocess.run(
            [*argv, *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def _etcdctl_json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.etcdctl("-w", "json", *args).stdout))

    def v3_put(self, key: str, value: str) -> int:
        """Set a v3 key; return the new store revision."""
        # "--" ends the options, so keys and values starting with "-" are not taken for
        # flags.  (Not stdin: etcdctl 3.4 rejects an empty value read from stdin.)
        return int(self._etcdctl_json("put", "--", key, value)["header"]["revision"])

    def v3_get(self, key: str) -> str | None:
        """Value of a v3 key, or None if it does not exist."""
        kvs = self._etcdctl_json("get", "--", key).get("kvs", [])
        # JSON output omits an empty value altogether.
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def v3_delete(self, key: str, prefix: bool = False) -> int:
        """Delete a v3 key (or every key starting with ``key``); return how many went."""
        flags = ["--prefix"] if prefix else []
        return int(self._etcdctl_json("del", *flags, "--", key).get("deleted", 0))

    def v3_revision(self) -> int:
        """The v3 store's current revision."""
        return int(self._etcdctl_json("get", "--limit=1", "--", "/")["header"]["revision"])

    def v3_compact(self, revision: int) -> None:
        """Compact v3 history up to ``revision`` and wait until it is physically gone."""
        self.etcdctl("compaction", "--physical", str(revision))
