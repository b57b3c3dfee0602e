"""What the end-to-end modules share: a compute host with named VMs, a Felix, and connectivity
checks written as "expect allowed / expect denied" rows, retried for a bounded time.

A denied row counts only when the denial can only be the policy's: by default the check also
requires that Felix routed to the destination and that the source's gateway was answered by
proxy ARP/NDP (so the source's packets did leave towards the host).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

from calico.lab.dataplane_view import DataplaneView
from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.flows import Flow, settle
from calico.lab.probes import ping, wait_until
from calico.lab.topology import ComputeHost, Workload

ALLOW, DENY = True, False
SETTLE_TIMEOUT = 10.0  # how long a row may take to reach its expected result
FELIX_START_TIMEOUT = 40.0  # Felix start-up and first programming, on a busy machine


Expectation = tuple[Flow, bool]


def reset_etcd(etcd: EtcdServer) -> None:
    """The same clean slate as the ``etcd`` fixture, for a module-scoped lab whose Felix must
    not see ``/calico`` wiped under it between tests."""
    if not etcd.running:
        etcd.start()
    etcd.v2_delete("/calico", recursive=True)
    etcd.v3_delete("/calico", prefix=True)


class Lab:
    """A compute host in a namespace, its VMs by name, and the Felix running there."""

    def __init__(self, etcd: EtcdServer, work_dir: Path, hostname: str, name_prefix: str):
        self.etcd = etcd
        self.hostname = hostname
        self.host = ComputeHost(etcd, hostname=hostname, name_prefix=name_prefix, work_dir=work_dir)
        self.vms: dict[str, Workload] = {}
        self.felix: FelixProcess | None = None
        # Felix's chains and sets, read the same way for both rules backends.
        self.view = DataplaneView(self.host.ns)

    # -- datastore -----------------------------------------------------------------------------

    def put(self, key: str, value: object) -> None:
        self.etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))

    def delete(self, key: str, recursive: bool = False) -> None:
        self.etcd.v2_delete(key, recursive=recursive)

    def put_profile(
        self,
        name: str,
        rules: Mapping[str, object],
        tags: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        base = f"/calico/v1/policy/profile/{name}"
        self.put(f"{base}/rules", dict(rules))
        if tags is not None:
            self.put(f"{base}/tags", list(tags))
        if labels is not None:
            self.put(f"{base}/labels", dict(labels))

    def put_endpoint(
        self,
        vm: str,
        profiles: Sequence[str],
        labels: Mapping[str, str] | None = None,
        state: str = "active",
    ) -> None:
        workload = self.vms[vm]
        self.put(workload.endpoint_key(), workload.endpoint_json(profiles, labels, state))

    def delete_endpoint(self, vm: str) -> None:
        self.delete(self.vms[vm].endpoint_key())

    # -- set-up --------------------------------------------------------------------------------

    def add_vm(self, name: str, octet: int, plugged: bool = True) -> Workload:
        vm = self.host.add_workload(
            f"10.65.0.{octet}", f"fd00:65::{octet}", label=f"vm{name.lower()}", plugged=plugged
        )
        self.vms[name] = vm
        return vm

    def start_felix(self, **env: str) -> FelixProcess:
        """Start calico-felix (IPv6 on) and wait until its driver reports the first in-sync
        state programmed; FAIL with its log otherwise."""
        felix = self.host.start_felix(FELIX_IPV6SUPPORT="true", **env)
        self.felix = felix
        try:
            felix.wait_for("Dataplane programmed", timeout=FELIX_START_TIMEOUT)
        except AssertionError as e:
            pytest.fail(f"Felix did not program the host: {e}")
        if (said := self.view.running_in(felix.text())) is not None:
            pytest.fail(f"Felix runs another backend than {self.view.backend}: {said}")
        return felix

    def close(self) -> None:
        self.host.close()

    # -- Felix ---------------------------------------------------------------------------------

    def require_felix(self) -> None:
        if self.felix is None or self.felix.proc.poll() is not None:
            pytest.fail(f"calico-felix is not running\n{self.log_excerpt()}")

    def log_excerpt(self, lines: int = 40) -> str:
        if self.felix is None:
            return "(Felix was never started)"
        text = self.felix.text().splitlines()
        problems = [
            line for line in text if any(w in line for w in ("ERROR", "WARNING", "Traceback"))
        ]
        return (
            f"--- Felix exit status: {self.felix.proc.poll()}\n"
            f"--- ERROR/WARNING lines (last 20 of {len(problems)}):\n"
            + "\n".join(problems[-20:])
            + f"\n--- last {lines} lines of {self.felix.output}:\n"
            + "\n".join(text[-lines:])
        )

    def fail(self, message: str) -> None:
        routes = self.host.run(["ip", "route", "show"], check=False).stdout
        routes6 = self.host.run(["ip", "-6", "route", "show"], check=False).stdout
        pytest.fail(
            f"{message}\n--- host routes:\n{routes}{routes6}--- Felix:\n{self.log_excerpt()}"
        )

    # -- connectivity --------------------------------------------------------------------------

    def expect(
        self,
        expectations: Sequence[Expectation],
        timeout: float = SETTLE_TIMEOUT,
        require_path: bool = True,
        what: str = "",
        need_felix: bool = True,
    ) -> None:
        """FAIL unless every flow reaches its expected result within ``timeout``: flows that
        disagree are probed again (only they) until they agree or time runs out.

        ``require_path``: a denied flow must also have a host route to its destination and a
        resolved gateway at its source, so the denial can only be the policy's.
        ``need_felix=False``: Felix is meant to be down (the kernel state outlives it)."""
        if need_felix:
            self.require_felix()
        expected = dict(expectations)
        if len(expected) != len(expectations):
            raise ValueError("a flow is listed twice")
        problems = settle(self.vms, expected, timeout)
        if require_path:
            problems += self._path_problems(f for f, allowed in expected.items() if not allowed)
        if problems:
            heading = f"{what}: " if what else ""
            self.fail(
                f"{heading}{len(problems)} of {len(expected)} rows wrong:\n" + "\n".join(problems)
            )

    def _path_problems(self, denied: Iterable[Flow]) -> list[str]:
        problems = []
        for flow in denied:
            src, dst = self.vms[flow.src], self.vms[flow.dst]
            if self.host.route_to(dst.addr(flow.v6)) != dst.tap:
                problems.append(f"{flow}: no host route to {dst.addr(flow.v6)} (not policy)")
            if not src.gateway_resolved(flow.v6):
                problems.append(f"{flow}: {flow.src}'s gateway never answered (not policy)")
        return problems

    def wait_pings(self, src: str, dst: str, timeout: float = SETTLE_TIMEOUT) -> None:
        """The positive control: ``src`` pings ``dst`` over IPv4 and IPv6."""
        a, b = self.vms[src], self.vms[dst]
        for v6 in (False, True):
            if not wait_until(lambda v6=v6: ping(a, b, v6=v6), timeout, 0.3):
                self.fail(f"positive control: {src} never pinged {dst} (v{6 if v6 else 4})")
