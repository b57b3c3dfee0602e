"""What the multi-host tests share: a small cloud (``calico.lab.cloud``: compute hosts on a
fabric, each with BIRD, calico-bgp and calico-felix) on the session's etcd, and connectivity
checks written as allowed / denied rows, retried for a bounded time.

A denied row counts only when the denial can only be policy: the source's host must have a
route to the destination (BIRD's, from BGP, for a VM on another host), the destination's host
Felix's route to its TAP, and the source's gateway must have answered (proxy ARP / NDP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pytest

from calico.lab.cloud import Cloud, Vm, host_route
from calico.lab.dataplane_view import DataplaneView
from calico.lab.etcd_server import EtcdServer
from calico.lab.flows import Flow, settle
from calico.lab.probes import ping, wait_until

ALLOW, DENY = True, False
SETTLE_TIMEOUT = 15.0
Expectation = tuple[Flow, bool]


def reset_etcd(etcd: EtcdServer) -> None:
    """The ``etcd`` fixture's clean slate, for a module-scoped cloud."""
    if not etcd.running:
        etcd.start()
    etcd.v2_delete("/calico", recursive=True)
    etcd.v3_delete("/calico", prefix=True)


@contextlib.contextmanager
def cloud_on(etcd: EtcdServer, hosts: int = 3) -> Iterator[Cloud]:
    """A started cloud of ``hosts`` compute hosts: everything stopped and deleted when the
    block ends, also when it fails."""
    reset_etcd(etcd)
    with Cloud(etcd, hosts) as cloud:
        try:
            cloud.start()
        except AssertionError as exc:
            pytest.fail(f"the cloud did not start: {exc}\n{logs(cloud)}")
        yield cloud
    reset_etcd(etcd)


def put_profile(cloud: Cloud, name: str, rules: Mapping[str, object]) -> None:
    base = f"/calico/v1/policy/profile/{name}"
    cloud.put(f"{base}/rules", dict(rules))
    cloud.put(f"{base}/tags", [name])


def logs(cloud: Cloud, lines: int = 25) -> str:
    """The tail of every daemon's output, for a failure message."""
    parts = []
    for host in cloud.bgp_hosts:
        felix = cloud.felixes.get(host.hostname)
        if felix is not None:
            tail = "\n".join(felix.text().splitlines()[-lines:])
            parts.append(f"--- Felix on {host.hostname} (exit {felix.proc.poll()}):\n{tail}")
        for bgp in host.bgp:
            tail = "\n".join(bgp.text().splitlines()[-lines // 2 :])
            parts.append(f"--- calico-bgp on {host.hostname}:\n{tail}")
        parts.append(f"--- {host.hostname} sessions: {cloud.sessions(host)}")
        routes = host.ns.run(["ip", "route"], check=False).stdout
        routes6 = host.ns.run(["ip", "-6", "route"], check=False).stdout
        parts.append(f"--- {host.hostname} routes:\n{routes}{routes6}")
    return "\n".join(parts)


def path_problems(cloud: Cloud, flows: Iterable[Flow]) -> list[str]:
    """Why a denied flow might be denied for another reason than policy."""
    problems = []
    for flow in flows:
        src, dst = cloud.vms[flow.src], cloud.vms[flow.dst]
        addr = dst.workload.addr(flow.v6)
        if not host_route(dst.host, addr, "80"):
            problems.append(f"{flow}: no Felix route to {addr} on {dst.host.hostname}")
        if src.host is not dst.host and not host_route(src.host, addr, "bird"):
            problems.append(f"{flow}: no BGP route to {addr} on {src.host.hostname}")
        if not src.workload.gateway_resolved(flow.v6):
            problems.append(f"{flow}: {flow.src}'s gateway never answered")
    return problems


def expect(
    cloud: Cloud, expectations: Sequence[Expectation], what: str, timeout: float = SETTLE_TIMEOUT
) -> None:
    """FAIL unless every flow reaches its expected result within ``timeout``."""
    expected = dict(expectations)
    assert len(expected) == len(expectations), "a flow is listed twice"
    for host, felix in cloud.felixes.items():
        if felix.proc.poll() is not None:
            pytest.fail(f"{what}: Felix on {host} exited\n{logs(cloud)}")
    problems = settle(cloud.workloads(), expected, timeout)
    problems += path_problems(cloud, [f for f, allowed in expected.items() if not allowed])
    if problems:
        pytest.fail(
            f"{what}: {len(problems)} of {len(expected)} rows wrong:\n"
            + "\n".join(problems)
            + "\n"
            + logs(cloud)
        )


def wait_pings(cloud: Cloud, src: Vm, dst: Vm, timeout: float = SETTLE_TIMEOUT) -> None:
    """The positive control: ``src`` pings ``dst`` over IPv4 and IPv6."""
    for v6 in (False, True):
        if not wait_until(lambda v6=v6: ping(src.workload, dst.workload, v6=v6), timeout, 0.2):
            pytest.fail(f"{src.name} never pinged {dst.name} (v{6 if v6 else 4})\n{logs(cloud)}")


def set_members(cloud: Cloud, hostname: str) -> dict[str, set[str]]:
    """Felix's IP sets on a host and their members (either rules backend)."""
    return DataplaneView(cloud.host(hostname).ns).sets()


def wait_routed(cloud: Cloud, timeout: float = 20.0) -> None:
    """Wait until every VM has Felix's route on its host and BIRD's on the others."""
    if not wait_until(
        lambda: all(cloud.routed_everywhere(vm) for vm in cloud.vms.values()), timeout, 0.05
    ):
        pytest.fail(f"not every VM is routed everywhere within {timeout} s\n{logs(cloud)}")
