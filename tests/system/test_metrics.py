"""Prometheus metrics of both processes (felix.md §6.4; docs/design/status.md): the real
calico-felix in a namespace, scraped over HTTP from inside that namespace, before and after a
datastore change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.probes import wait_until
from calico.lab.topology import ComputeHost

HOST = "metrics-host-1"
FELIX_PORT = 9191  # not the defaults, to prove the parameters are used
DRIVER_PORT = 9192
CONVERGENCE_COUNT = "felix_dataplane_convergence_seconds_count"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def host(etcd: EtcdServer, tmp_path: Path) -> Iterator[ComputeHost]:
    with ComputeHost(etcd, hostname=HOST, name_prefix="mt", work_dir=tmp_path) as h:
        yield h


def scrape(host: ComputeHost, port: int) -> Samples | None:
    proc = host.run(["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}/metrics"], False)
    if proc.returncode != 0:
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(proc.stdout):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples | None, name: str, **labels: str) -> float:
    assert samples is not None
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_both_processes_serve_metrics_that_move_with_updates(
    host: ComputeHost, etcd: EtcdServer
) -> None:
    a = host.add_workload("10.65.0.2", label="mta")
    b = host.add_workload("10.65.0.3", label="mtb")
    etcd.v2_put("/calico/v1/Ready", "true")
    rules = {"inbound_rules": [{"src_tag": "web"}], "outbound_rules": [{}]}
    etcd.v2_put("/calico/v1/policy/profile/web/rules", json.dumps(rules))
    etcd.v2_put("/calico/v1/policy/profile/web/tags", json.dumps(["web"]))
    etcd.v2_put(a.endpoint_key(HOST), a.endpoint_json(["web"]))
    felix: FelixProcess = host.start_felix(
        FELIX_PROMETHEUSMETRICSENABLED="true",
        FELIX_PROMETHEUSMETRICSPORT=str(FELIX_PORT),
        FELIX_DATAPLANEDRIVERPROMETHEUSMETRICSPORT=str(DRIVER_PORT),
    )
    felix.wait_for("Dataplane programmed", timeout=30)

    def converged(count: float) -> bool:
        samples = scrape(host, DRIVER_PORT)  # None until the server answers
        return samples is not None and value(samples, CONVERGENCE_COUNT) >= count

    assert wait_until(lambda: converged(1), 20, 0.5), felix.text()[-3000:]
    f0, d0 = scrape(host, FELIX_PORT), scrape(host, DRIVER_PORT)
    assert f0 is not None and d0 is not None

    # Felix: process metrics and what it synced and sent.
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names(f0)
    assert value(f0, "felix_in_sync") == 1 and value(f0, "felix_resync_state") == 3
    assert value(f0, "felix_resyncs_started_total") >= 1
    assert value(f0, "felix_datastore_updates_total") >= 4  # Ready, rules, tags, endpoint
    assert value(f0, "felix_local_endpoints", kind="workload") == 1
    assert value(f0, "felix_active_profiles") == 1
    assert value(f0, "felix_ipsets") >= 1 and value(f0, "felix_ipset_members") >= 1
    # The driver: its own registry, with its own process metrics and kernel-command metrics.
    assert "process_cpu_seconds_total" in names(d0)
    assert "felix_datastore_updates_total" not in names(d0)
    assert value(d0, "felix_dataplane_iptables_restore_runs_total", ip_version="4") >= 1
    assert value(d0, "felix_dataplane_iptables_restore_seconds_count", ip_version="4") >= 1
    assert value(d0, "felix_dataplane_ipset_runs_total", command="restore") >= 1
    assert value(d0, "felix_dataplane_convergence_seconds_sum") > 0

    # A new endpoint in the datastore: the counters and gauges move, and the batch that carried
    # it is timed from Felix's receipt to the driver's programming.
    etcd.v2_put(b.endpoint_key(HOST), b.endpoint_json(["web"]))
    before = value(d0, CONVERGENCE_COUNT)
    assert wait_until(lambda: converged(before + 1), 20, 0.5), felix.text()[-3000:]

    def endpoints() -> float:
        samples = scrape(host, FELIX_PORT)
        return -1 if samples is None else value(samples, "felix_local_endpoints", kind="workload")

    assert wait_until(lambda: endpoints() == 2, 10, 0.5)
    f1, d1 = scrape(host, FELIX_PORT), scrape(host, DRIVER_PORT)
    assert value(f1, "felix_datastore_updates_total") > value(f0, "felix_datastore_updates_total")
    assert value(f1, "felix_ipset_members") > value(f0, "felix_ipset_members")
    assert value(f1, "felix_dataplane_messages_sent_total") > value(
        f0, "felix_dataplane_messages_sent_total"
    )
    restores = "felix_dataplane_iptables_restore_runs_total"
    assert value(d1, restores, ip_version="4") > value(d0, restores, ip_version="4")
    assert felix.proc.poll() is None
