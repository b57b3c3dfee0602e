"""Tests of the lab harness itself: real etcd, real TLS, real network namespaces.

Every other system test trusts this harness as its oracle, so these check the harness
against the outside world (etcdctl, curl-like raw requests, ``ip``, ``ping``, /proc),
not against itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from calico.lab.etcd_server import EtcdServer, free_port
from calico.lab.netns import (
    OWNER_DIR,
    PREFIX,
    NetNS,
    _process_identity,
    cleanup_leftovers,
    list_namespaces,
)

EtcdFactory = Callable[..., EtcdServer]
NetnsFactory = Callable[[], NetNS]


def _alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# -- etcd ---------------------------------------------------------------------------------


def test_etcd_serves_v2_and_v3_as_separate_stores(etcd: EtcdServer) -> None:
    assert etcd.client_url == f"http://127.0.0.1:{etcd.port}"
    assert (etcd.scheme, etcd.host) == ("http", "127.0.0.1")

    index = etcd.v2_index()
    assert etcd.v2_put("/calico/v1/x", "two") > index
    assert etcd.v2_get("/calico/v1/x") == "two"
    assert etcd.v2_index() > index

    revision = etcd.v3_revision()
    assert etcd.v3_put("/calico/v1/x", "three") == revision + 1
    assert etcd.v3_get("/calico/v1/x") == "three"
    assert etcd.v3_revision() == revision + 1

    # etcd 3.4 keeps v2 and v3 keys apart: neither write touched the other store.
    assert etcd.v2_get("/calico/v1/x") == "two"
    etcd.v3_put("/calico/v1/only-v3", "v")
    assert etcd.v2_get("/calico/v1/only-v3") is None
    etcd.v2_put("/calico/v1/only-v2", "v")
    assert etcd.v3_get("/calico/v1/only-v2") is None

    # Read back through a second, independent path: the raw v2 HTTP API and etcdctl.
    raw = requests.get(f"{etcd.client_url}/v2/keys/calico/v1/x", timeout=5).json()
    assert raw["node"]["value"] == "two"
    assert etcd.etcdctl("get", "--print-value-only", "/calico/v1/x").stdout == "three\n"


def test_etcd_helpers_delete_mkdir_ttl_and_odd_values(etcd: EtcdServer) -> None:
    etcd.v2_mkdir("/calico/dir")
    with pytest.raises(ValueError, match="directory"):
        etcd.v2_get("/calico/dir")
    etcd.v2_put("/calico/dir/a", "1")
    assert not etcd.v2_delete("/calico/missing")
    assert etcd.v2_delete("/calico/dir", recursive=True)
    assert etcd.v2_get("/calico/dir/a") is None

    etcd.v2_put("/calico/ttl", "soon gone", ttl=1)
    node = requests.get(f"{etcd.client_url}/v2/keys/calico/ttl", timeout=5).json()["node"]
    assert 0 < node["ttl"] <= 1

    # Values that look like flags, or hold newlines and non-ASCII, survive etcdctl.
    for value in ["-rf", "a\nb", "ü ∆", ""]:
        etcd.v3_put("/calico/odd", value)
        assert etcd.v3_get("/calico/odd") == value
    etcd.v3_put("/calico/p/1", "x")
    etcd.v3_put("/calico/p/2", "x")
    assert etcd.v3_delete("/calico/p/", prefix=True) == 2
    assert etcd.v3_delete("/calico/p/1") == 0


def test_etcd_fixture_starts_each_test_with_empty_calico(etcd: EtcdServer) -> None:
    etcd.v2_put("/calico/leftover", "x")
    etcd.v3_put("/calico/leftover", "x")
    etcd.v2_put("/other/kept", "x")  # outside /calico: the fixture must leave it alone
    etcd.v2_delete("/calico", recursive=True)
    etcd.v3_delete("/calico", prefix=True)
    assert etcd.v2_get("/calico/leftover") is None
    assert etcd.v3_get("/calico/leftover") is None
    assert etcd.v2_get("/other/kept") == "x"
    etcd.v2_delete("/other", recursive=True)


def test_restart_keeps_data_ports_and_url(etcd_factory: EtcdFactory) -> None:
    server = etcd_factory()
    url, old_pid = server.client_url, server.pid
    assert old_pid is not None and _alive(old_pid)
    server.v2_put("/calico/k", "v2 value")
    server.v3_put("/calico/k", "v3 value")

    server.restart()

    assert server.client_url == url
    assert server.pid is not None and server.pid != old_pid
    assert not _alive(old_pid)
    assert server.v2_get("/calico/k") == "v2 value"
    assert server.v3_get("/calico/k") == "v3 value"


def test_stop_is_idempotent_and_really_stops(etcd_factory: EtcdFactory) -> None:
    server = etcd_factory()
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()
    assert server.pid is None and not server.running
    assert not _alive(pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.client_url}/health", timeout=2)


def test_wipe_gives_an_empty_store(etcd_factory: EtcdFactory) -> None:
    server = etcd_factory()
    server.v3_put("/calico/k", "v")
    with pytest.raises(RuntimeError):
        server.wipe()  # refused while running
    server.stop()
    server.wipe()
    server.start()
    assert server.v3_get("/calico/k") is None


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", server.port))
        blocker.listen()
        with pytest.raises(RuntimeError, match="address already in use"):
            server.start(timeout=1)
    assert not server.running


def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    with EtcdServer(tmp_path, name="ctx") as server:
        pid = server.pid
        assert pid is not None
        assert server.v3_put("/k", "v") > 1
    assert server.pid is None and not _alive(pid)


def test_v3_compaction_removes_old_revisions(etcd_factory: EtcdFactory) -> None:
    server = etcd_factory()
    old = server.v3_put("/calico/k", "first")
    server.v3_put("/calico/k", "second")
    before = server.etcdctl("get", f"--rev={old}", "--print-value-only", "/calico/k")
    assert before.stdout == "first\n"

    server.v3_compact(server.v3_revision())

    after = server.etcdctl("get", f"--rev={old}", "/calico/k", check=False)
    assert after.returncode != 0
    assert "compacted" in after.stderr
    assert server.v3_get("/calico/k") == "second"


def test_tls_server_demands_a_client_certificate(etcd_factory: EtcdFactory) -> None:
    server = etcd_factory(tls=True)
    tls = server.tls
    assert tls is not None
    assert server.scheme == "https"
    assert server.client_url == f"https://127.0.0.1:{server.port}"
    ca = str(tls.ca_file)

    with pytest.raises(requests.ConnectionError):  # plain HTTP to the TLS port
        requests.get(f"http://127.0.0.1:{server.port}/v2/keys/", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):  # TLS, but no client certificate
        requests.get(f"{server.client_url}/v2/keys/", verify=ca, timeout=5)

    cert = (str(tls.client_cert), str(tls.client_key))
    resp = requests.get(f"{server.client_url}/health", verify=ca, cert=cert, timeout=5)
    assert resp.status_code == 200 and resp.json()["health"] == "true"

    # The helpers use the client certificate too, for v2 and for v3.
    server.v2_put("/calico/tls", "v2")
    server.v3_put("/calico/tls", "v3")
    assert (server.v2_get("/calico/tls"), server.v3_get("/calico/tls")) == ("v2", "v3")
    assert os.stat(tls.client_key).st_mode & 0o077 == 0


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


# -- network namespaces ---------------------------------------------------------------------


def test_netns_create_shows_up_with_lo_up(netns: NetnsFactory) -> None:
    ns = netns()
    assert ns.name.startswith(PREFIX) and len(ns.name) == len(PREFIX) + 6
    assert ns.name in list_namespaces()
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    assert ns.name in out
    lo = ns.run(["ip", "-o", "link", "show", "lo"]).stdout
    assert "UP" in lo.split("<", 1)[1].split(">", 1)[0]


def test_veth_pair_between_namespaces_carries_ping(netns: NetnsFactory) -> None:
    a, b = netns(), netns()
    a.add_veth_to(b, "veth-a", "veth-b")
    a.add_addr("veth-a", "10.65.0.1/24")
    b.add_addr("veth-b", "10.65.0.2/24")
    a.set_up("veth-a")
    b.set_up("veth-b")

    a.run(["ping", "-c1", "-W1", "10.65.0.2"])
    b.run(["ping", "-c1", "-W1", "10.65.0.1"])
    # Nothing leaked into the root namespace.
    root_links = subprocess.run(
        ["ip", "-o", "link"], check=True, capture_output=True, text=True
    ).stdout
    assert "veth-a" not in root_links and "veth-b" not in root_links


def test_netns_run_raises_with_stderr_on_failure(netns: NetnsFactory) -> None:
    ns = netns()
    with pytest.raises(subprocess.CalledProcessError) as info:
        ns.run(["ip", "link", "show", "no-such-dev"])
    assert ns.name in "".join(info.value.__notes__)
    assert ns.run(["false"], check=False).returncode == 1


def test_netns_deleted_even_when_with_block_raises() -> None:
    ns = NetNS()
    with pytest.raises(RuntimeError, match="boom"), ns:
        assert ns.name in list_namespaces()
        raise RuntimeError("boom")
    assert ns.name not in list_namespaces()
    ns.delete()  # already gone: still fine


def test_netns_delete_kills_popened_processes() -> None:
    with NetNS() as ns:
        proc = ns.popen(["sleep", "300"])
        # A daemon that escaped its parent: not a popen() child, but inside the namespace.
        ns.run(["sh", "-c", "setsid sleep 301 >/dev/null 2>&1 < /dev/null &"])
        deadline = time.monotonic() + 5
        while len(pids := ns._pids_inside()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid in pids and len(pids) == 2
        assert proc.poll() is None
    assert proc.poll() is not None
    for pid in pids:
        deadline = time.monotonic() + 2
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    assert ns.name not in list_namespaces()


def test_cleanup_leftovers_deletes_only_prefixed_namespaces() -> None:
    prefix = f"{PREFIX}sweep-{os.getpid()}-"
    ours = NetNS(f"{prefix}a").create()
    try:
        other = NetNS(f"{PREFIX}keep-{os.getpid()}").create()
        try:
            assert cleanup_leftovers(prefix) == [ours.name]
            assert ours.name not in list_namespaces()
            assert other.name in list_namespaces()
        finally:
            other.delete()
    finally:
        ours.delete()
    with pytest.raises(ValueError):
        cleanup_leftovers("")


def test_cleanup_leftovers_spares_namespaces_of_other_live_processes() -> None:
    """A concurrent session's namespaces survive our sweep; a dead session's do not."""
    prefix = f"{PREFIX}owner-{os.getpid()}-"
    with NetNS(f"{prefix}x") as ns:
        owner = subprocess.Popen(["sleep", "60"])
        try:
            (OWNER_DIR / ns.name).write_text(f"{_process_identity(owner.pid)}\n")
            assert cleanup_leftovers(prefix) == []
            assert ns.name in list_namespaces()
        finally:
            owner.kill()
            owner.wait()
        assert cleanup_leftovers(prefix) == [ns.name]
        assert ns.name not in list_namespaces()
        assert not (OWNER_DIR / ns.name).exists()


def test_atexit_safety_net_stops_forgotten_etcd_and_namespaces(tmp_path: Path) -> None:
    """A program that forgets stop()/delete() still leaves nothing behind at exit."""
    script = (
        "import sys; from pathlib import Path\n"
        "from calico.lab.etcd_server import EtcdServer\n"
        "from calico.lab.netns import NetNS\n"
        f"server = EtcdServer(Path({str(tmp_path)!r})).start()\n"
        "ns = NetNS().create()\n"
        "print(server.pid, ns.name, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    pid, name = out.split()
    assert name.startswith(PREFIX)
    assert not _alive(int(pid))
    assert name not in list_namespaces()
