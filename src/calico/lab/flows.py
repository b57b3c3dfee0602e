"""Connectivity between lab VMs as data: flows, measured in parallel, settled against what is
expected (the demo's matrix and the end-to-end tests' allow/deny rows).

A :class:`Flow` names two VMs by name and what to send (``icmp``, or ``tcp``/``udp`` with a
port). :func:`measure` probes many flows at once; :func:`settle` re-probes only the flows that
disagree with their expected result until they agree or time runs out, and says which did not.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from calico.lab.probes import probe
from calico.lab.topology import Workload


@dataclass(frozen=True)
class Flow:
    """One probe: ``proto`` is icmp, tcp or udp (tcp/udp with a port), over IPv4 or IPv6."""

    src: str
    dst: str
    proto: str
    port: int | None = None
    v6: bool = False

    def __str__(self) -> str:
        what = self.proto if self.port is None else f"{self.proto}/{self.port}"
        return f"{self.src}->{self.dst} {what} v{6 if self.v6 else 4}"


def measure(vms: Mapping[str, Workload], flows: Iterable[Flow]) -> dict[Flow, bool]:
    """Probe every flow once, concurrently. Flows to the same (destination, protocol, port)
    run one after the other (their listeners would share a port); the groups run in parallel
    so that denied probes, each waiting out its timeout, do not add up."""
    groups: dict[tuple[str, str, int | None], list[Flow]] = {}
    for flow in flows:
        groups.setdefault((flow.dst, flow.proto, flow.port), []).append(flow)
    if not groups:
        return {}

    def run(group: list[Flow]) -> list[tuple[Flow, bool]]:
        return [(f, probe(vms[f.src], vms[f.dst], f.proto, v6=f.v6, port=f.port)) for f in group]

    with ThreadPoolExecutor(max_workers=min(len(groups), 16)) as pool:
        return dict(item for result in pool.map(run, groups.values()) for item in result)


def settle(
    vms: Mapping[str, Workload],
    expected: Mapping[Flow, bool],
    timeout: float,
    interval: float = 0.2,
) -> list[str]:
    """Probe until every flow has its expected result (re-probing only those that do not) or
    `timeout` passes; one line per flow that never agreed (empty when all did)."""
    deadline = time.monotonic() + timeout
    pending = list(expected)
    got: dict[Flow, bool] = {}
    while True:
        got.update(measure(vms, pending))
        pending = [flow for flow in pending if got[flow] != expected[flow]]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return [
        f"{flow}: expected {_verdict(expected[flow])}, got {_verdict(got[flow])}"
        for flow in pending
    ]


def _verdict(allowed: bool) -> str:
    return "allowed" if allowed else "denied"
