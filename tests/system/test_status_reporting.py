"""Felix's status reports in a real etcd, written by the real calico-felix in a namespace
(felix.md §6.1, §6.2, §2.8; docs/design/status.md), over both etcd APIs.

Every value Felix wrote is read back from etcd's history (v2: `waitIndex` replays; v3: reads at
past revisions), so the tests see each write, not just whichever one a poll happened to catch.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.probes import wait_until
from calico.lab.topology import ComputeHost

HOST = "status-host-1"
STATUS = f"/calico/felix/v1/host/{HOST}/status"
LAST = f"/calico/felix/v1/host/{HOST}/last_reported_status"
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Store:
    """The test's view of etcd through one API."""

    def __init__(self, etcd: EtcdServer, api: str):
        self.etcd, self.api = etcd, api

    def put(self, key: str, value: str) -> None:
        (self.etcd.v2_put if self.api == "v2" else self.etcd.v3_put)(key, value)

    def delete(self, key: str) -> None:
        (self.etcd.v2_delete if self.api == "v2" else self.etcd.v3_delete)(key)

    def get(self, key: str) -> str | None:
        return (self.etcd.v2_get if self.api == "v2" else self.etcd.v3_get)(key)

    def revision(self) -> int:
        return self.etcd.v2_index() if self.api == "v2" else self.etcd.v3_revision()

    def ttl(self, key: str) -> int | None:
        """The key's TTL as granted (v3: its lease's), None if it has none."""
        if self.api == "v2":
            node = requests.get(self.etcd._v2_url(key), timeout=10).json()["node"]
            return node.get("ttl")
        kvs = self.etcd._etcdctl_json("get", "--", key).get("kvs", [])
        lease = int(kvs[0].get("lease", 0)) if kvs else 0
        if not lease:
            return None
        info = self.etcd._etcdctl_json("lease", "timetolive", format(lease, "x"))
        return int(info.get("granted-ttl", info.get("grantedTTL", 0)))

    def history(self, key: str, since: int) -> list[str]:
        """Every value written to key after revision `since`, oldest first."""
        values: list[str] = []
        if self.api == "v2":
            index, last = since + 1, self.etcd.v2_index()
            while index <= last:
                params: dict[str, Any] = {"wait": "true", "waitIndex": index}
                body = requests.get(self.etcd._v2_url(key), params=params, timeout=10).json()
                node = body["node"]
                if body["action"] in ("set", "create", "update"):
                    values.append(node["value"])
                index = int(node["modifiedIndex"]) + 1
            return values
        previous = None
        for revision in range(since + 1, self.etcd.v3_revision() + 1):
            kvs = self.etcd._etcdctl_json("get", f"--rev={revision}", "--", key).get("kvs", [])
            if kvs and int(kvs[0]["mod_revision"]) != previous:
                previous = int(kvs[0]["mod_revision"])
                values.append(base64.b64decode(kvs[0]["value"]).decode())
        return values


@pytest.fixture(params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def host(etcd: EtcdServer, tmp_path: Path) -> Iterator[ComputeHost]:
    with ComputeHost(etcd, hostname=HOST, name_prefix="st", work_dir=tmp_path) as h:
        yield h


def start(host: ComputeHost, api: str, **env: str) -> FelixProcess:
    Store(host.etcd, api).put("/calico/v1/Ready", "true")
    return host.start_felix(FELIX_DATAPLANEDRIVER="etcdv2" if api == "v2" else "etcdv3", **env)


def alive(felix: FelixProcess) -> bool:
    if felix.proc.poll() is not None:
        pytest.fail(f"calico-felix exited ({felix.proc.returncode}):\n{felix.text()[-3000:]}")
    return True


def test_liveness_keys_ttl_first_update_and_interval(
    host: ComputeHost, api: str, etcd: EtcdServer
) -> None:
    store = Store(etcd, api)
    since = store.revision()
    # TTL 1 is not longer than the longest gap between reports (1 s + 10 % jitter + 2 s of
    # slack for the write): the rule makes it ceil(3.1) + 1 = 5 (more than 1 * 5 // 2).
    felix = start(host, api, FELIX_REPORTINGINTERVALSECS="1", FELIX_REPORTINGTTLSECS="1")
    assert wait_until(lambda: alive(felix) and len(store.history(STATUS, since)) >= 4, 30, 0.5)

    # v2 shows the seconds left (rounded up), v3 the lease's granted TTL.
    assert store.ttl(STATUS) in ((4, 5) if api == "v2" else (5,))
    assert store.ttl(LAST) is None
    reports = [json.loads(v) for v in store.history(STATUS, since)]
    for report in reports:
        assert set(report) == {"time", "uptime", "first_update"}
        assert TIME_RE.match(report["time"]), report
        assert isinstance(report["uptime"], float | int) and report["uptime"] >= 0
    assert [r["first_update"] for r in reports] == [True] + [False] * (len(reports) - 1)
    # Every ReportingIntervalSecs (+0-10 % jitter), measured by Felix's own uptime.
    gaps = [b["uptime"] - a["uptime"] for a, b in itertools.pairwise(reports)]
    assert all(0.95 <= gap <= 3.0 for gap in gaps), gaps
    # last_reported_status carries the same values, without a TTL.
    last = [json.loads(v) for v in store.history(LAST, since)]
    assert last[: len(reports)] == reports[: len(last)]

    # When Felix stops, `status` lapses with its TTL; `last_reported_status` stays.
    assert felix.stop() == 0
    assert wait_until(lambda: store.get(STATUS) is None, 15, 0.5), "status outlived its TTL"
    final = store.get(LAST)
    assert final is not None and json.loads(final)["first_update"] is False


def test_zero_interval_disables_liveness(host: ComputeHost, etcd: EtcdServer) -> None:
    felix = start(host, "v2", FELIX_REPORTINGINTERVALSECS="0")
    felix.wait_for("Dataplane programmed", timeout=30)
    felix.wait_for("status reporting is disabled", timeout=5)
    assert etcd.v2_get(STATUS) is None and etcd.v2_get(LAST) is None


def test_liveness_survives_etcd_refusing_writes(host: ComputeHost, etcd: EtcdServer) -> None:
    """Felix's status directory is a plain key, so every status write fails: Felix logs, keeps
    retrying, and still programs and runs."""
    etcd.v2_put(f"/calico/felix/v1/host/{HOST}", "not a directory")
    felix = start(host, "v2", FELIX_REPORTINGINTERVALSECS="1")
    felix.wait_for("Dataplane programmed", timeout=30)
    felix.wait_for(r"Could not write Felix status to etcd \(will retry\)(.|\n)*"
                   r"Could not write Felix status to etcd", timeout=20)  # fmt: skip
    assert alive(felix)
    etcd.v2_delete(f"/calico/felix/v1/host/{HOST}")
    assert wait_until(lambda: etcd.v2_get(STATUS) is not None, 20, 0.5), felix.text()[-2000:]
    assert json.loads(etcd.v2_get(STATUS) or "{}")["first_update"] is True


def test_endpoint_status_up_down_removed_and_stale_cleanup(
    host: ComputeHost, api: str, etcd: EtcdServer
) -> None:
    store = Store(etcd, api)
    vm = host.add_workload("10.65.0.2", label="stvm")
    status_key = (
        f"/calico/felix/v1/host/{HOST}/workload/openstack/{vm.workload_id}/endpoint/{vm.port_id}"
    )
    stale_key = f"/calico/felix/v1/host/{HOST}/workload/openstack/gone-vm/endpoint/gone-port"
    other_host_key = "/calico/felix/v1/host/other-host/workload/openstack/w/endpoint/e"
    store.put(stale_key, json.dumps({"status": "up"}))  # from a previous run
    store.put(other_host_key, json.dumps({"status": "up"}))  # not ours
    store.put(vm.endpoint_key(HOST), vm.endpoint_json([]))

    def status() -> str | None:
        value = store.get(status_key)
        return None if value is None else json.loads(value)["status"]

    felix = start(
        host,
        api,
        FELIX_ENDPOINTREPORTINGENABLED="true",
        FELIX_ENDPOINTREPORTINGDELAYSECS="0.1",
        FELIX_REPORTINGINTERVALSECS="0",
    )
    assert wait_until(lambda: alive(felix) and status() == "up", 30, 0.25), felix.text()[-3000:]
    assert wait_until(lambda: store.get(stale_key) is None, 15, 0.25), "stale status kept"
    assert store.get(other_host_key) is not None

    host.run(["ip", "link", "set", vm.tap, "down"])  # the VM's host-side veth
    assert wait_until(lambda: alive(felix) and status() == "down", 15, 0.25), felix.text()[-3000:]
    host.run(["ip", "link", "set", vm.tap, "up"])
    assert wait_until(lambda: alive(felix) and status() == "up", 15, 0.25), felix.text()[-3000:]

    store.delete(vm.endpoint_key(HOST))
    assert wait_until(lambda: alive(felix) and store.get(status_key) is None, 15, 0.25)
    if api == "v2":  # empty parent directories are pruned up to the host's directory
        workload_dir = f"/calico/felix/v1/host/{HOST}/workload"
        assert wait_until(lambda: _v2_missing(etcd, workload_dir), 10, 0.25)
        assert etcd.v2_get(other_host_key) is not None


def _v2_missing(etcd: EtcdServer, path: str) -> bool:
    return requests.get(etcd._v2_url(path), timeout=10).status_code == 404


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_status_key_never_lapses_between_healthy_reports(
    etcd: EtcdServer, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, item 8: a TTL just above the interval passed the old check, but reports come
    up to JITTER late, so the key lapsed between two healthy reports. Here the jitter is made
    large (100 %) and always at its maximum, with a TTL just above the interval: the key must
    be present every time it is sampled once it was first written."""
    from calico.common.etcd import connect
    from calico.common.etcd.base import EtcdSettings
    from calico.felix import status

    monkeypatch.setattr(status, "JITTER", 1.0)
    monkeypatch.setattr(status, "REPORT_SLACK_SECS", 0.5)
    store = Store(etcd, api)
    key = "/calico/felix/v1/host/ttl-host/status"
    store.delete(key)
    reporter = status.StatusReporter(
        connect(api, EtcdSettings((etcd.client_url,))),
        "ttl-host",
        interval=2,
        ttl=3,  # above the interval, below the longest gap (2 s + 100 % jitter)
        endpoint_reporting=False,
        endpoint_delay=1.0,
        started_at=0.0,
        jitter=lambda: 0.999,
    )
    reporter.start()
    try:
        assert wait_until(lambda: store.get(key) is not None, 10, 0.1)
        missing = []
        for _ in range(100):  # 10 s: two or three reports
            if store.get(key) is None:
                missing.append(_)
            time.sleep(0.1)
        assert not missing, f"the status key lapsed at samples {missing}"
    finally:
        reporter.stop()
