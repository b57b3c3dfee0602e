"""What the full-stack OpenStack test composes: the compute host with Felix and the DHCP agent,
"VM" namespaces plugged as Nova plugs TAPs and configured by DHCP, a token-answering HTTP
server, and "expect allowed / expect denied" checks retried for a bounded time.

Every process here is started inside a lab namespace (``calt-``) and stopped by its PID; the
namespaces go with :meth:`FullStack.close`. Nothing touches the root network namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.flows import Flow, measure, settle
from calico.lab.neutron import NeutronServer
from calico.lab.probes import wait_until
from calico.lab.topology import ComputeHost, ExternalHost, Workload

ALLOW, DENY = True, False
SETTLE_TIMEOUT = 20.0  # a Neutron change reaching the kernel, on a loaded 2-core machine
DENY_CONFIRM = 2  # a denied row must stay denied for this many further probes
FELIX_START_TIMEOUT = 60.0
DHCP_TIMEOUT = 60.0  # from the first udhcpc attempt to a lease
AGENT_TYPE_FELIX = "Calico per-host agent (felix)"

# udhcpc's event script: configure the lease as a VM's DHCP client would (address with the
# subnet's prefix length, default route via the router) and report it in one parseable line.
UDHCPC_SCRIPT = """#!/bin/sh
if [ "$1" = bound ]; then
  ip addr add "$ip/$mask" dev "$interface"
  ip route replace default via "$router" dev "$interface"
  echo "LEASE ip=$ip mask=$mask router=$router"
fi
exit 0
"""


class DhcpAgent:
    """``calico-dhcp-agent`` (as ``python -m calico.dhcp.agent``) in the host namespace."""

    def __init__(self, host: ComputeHost, etcd_port: int, work_dir: Path):
        self.log_path = work_dir / "dhcp-agent.log"
        conf = work_dir / "dhcp-agent.conf"
        conf.write_text(
            f"[DEFAULT]\nhost = {host.hostname}\n\n"
            f"[calico]\netcd_host = 127.0.0.1\netcd_port = {etcd_port}\n"
        )
        # Outside pytest's private (0700) tree: dnsmasq re-reads its files after dropping root.
        self.state_dir = Path(tempfile.mkdtemp(prefix="calico-fullstack-dhcp-"))
        self.state_dir.chmod(0o755)
        argv = [
            sys.executable, "-m", "calico.dhcp.agent", "--config-file", str(conf),
            "--state-dir", str(self.state_dir), "--log-level", "DEBUG", "--log-dhcp",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = host.ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM by PID (the agent stops its dnsmasq), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.state_dir, ignore_errors=True)


class FullStack:
    """The compute host (Felix, DHCP agent, uplink to an external host), its VMs by name and
    the Neutron server they were made through; diagnostics for a failure."""

    def __init__(self, neutron: NeutronServer, etcd: EtcdServer, hostname: str, work_dir: Path):
        self.neutron = neutron
        self.etcd = etcd
        self.work_dir = work_dir
        self.host = ComputeHost(
            etcd, hostname=hostname, name_prefix="fs", work_dir=work_dir, external=True
        )
        assert self.host.external is not None
        self.ext: ExternalHost = self.host.external
        self.felix: FelixProcess | None = None
        self.agent: DhcpAgent | None = None
        self.vms: dict[str, Workload] = {}
        self.udhcpc_script = work_dir / "udhcpc.sh"
        self.udhcpc_script.write_text(UDHCPC_SCRIPT)
        self.udhcpc_script.chmod(0o755)

    # -- processes on the host -----------------------------------------------------------------

    def start_felix(self, **env: str) -> FelixProcess:
        """calico-felix in the host namespace, done with its first programming."""
        self.felix = self.host.start_felix(**env)
        self.felix.wait_for("Dataplane programmed", timeout=FELIX_START_TIMEOUT)
        return self.felix

    def start_dhcp_agent(self) -> DhcpAgent:
        self.agent = DhcpAgent(self.host, self.etcd.port, self.work_dir)
        return self.agent

    def require_running(self) -> None:
        if self.felix is None or self.felix.proc.poll() is not None:
            raise AssertionError("calico-felix is not running")
        if self.agent is None or self.agent.proc.poll() is not None:
            raise AssertionError("calico-dhcp-agent is not running")

    # -- VMs -------------------------------------------------------------------------------------

    def plug_vm(self, name: str, port: dict[str, Any]) -> Workload:
        """A VM for a Neutron port, as Nova plugs it: a veth whose host end is the TAP
        (``tap`` + port id[:11]) and whose VM end has the port's MAC and no address."""
        ip = port["fixed_ips"][0]["ip_address"]
        vm = self.host.add_workload(ip, port_id=port["id"], label=f"fs{name}", plugged=False)
        vm.mac = port["mac_address"]
        self.host.ns.add_veth_to(vm.ns, vm.tap, "eth0")
        vm.run(["ip", "link", "set", "eth0", "address", vm.mac])
        vm.ns.set_up("eth0")
        self.host.ns.set_up(vm.tap)  # libvirt brings the TAP up when the VM runs
        self.vms[name] = vm
        return vm

    def udhcpc(self, vm: Workload) -> dict[str, str] | None:
        """One udhcpc run (a few seconds) in the VM: the lease it configured, or None."""
        proc = vm.ns.run(
            ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "3", "-T", "1",
             "-A", "1", "-s", str(self.udhcpc_script)],
            check=False, timeout=60,
        )  # fmt: skip
        for line in proc.stdout.splitlines():
            if line.startswith("LEASE "):
                return dict(field.split("=", 1) for field in line.split()[1:])
        return None

    def dhcp(self, vm: Workload) -> dict[str, str]:
        """Retry udhcpc until a lease comes (dnsmasq may still be (re)starting for new TAPs)."""
        deadline = time.monotonic() + DHCP_TIMEOUT
        while True:
            self.require_running()
            lease = self.udhcpc(vm)
            if lease is not None:
                return lease
            if time.monotonic() >= deadline:
                raise AssertionError(f"{vm} got no DHCP lease in {DHCP_TIMEOUT} s")

    def addresses(self, vm: Workload) -> list[str]:
        out = vm.run(["ip", "-j", "-4", "addr", "show", "dev", "eth0"]).stdout
        return [
            f"{a['local']}/{a['prefixlen']}"
            for link in json.loads(out or "[]")
            for a in link.get("addr_info", [])
        ]

    # -- checks ----------------------------------------------------------------------------------

    def expect(
        self, what: str, rows: Sequence[tuple[Flow, bool]], require_path: bool = True
    ) -> None:
        """Every row reaches its expected result within SETTLE_TIMEOUT (rows that disagree are
        probed again, only they); denied rows then stay denied for DENY_CONFIRM more probes.

        ``require_path``: a denied row must also have a host route to its destination and a
        resolved neighbour at its source, so that only policy can have denied it."""
        self.require_running()
        expected = dict(rows)
        if len(expected) != len(rows):
            raise ValueError("a flow is listed twice")
        problems = settle(self.vms, expected, SETTLE_TIMEOUT, interval=0.3)
        denied = [flow for flow, allowed in expected.items() if not allowed]
        if not problems:
            for _ in range(DENY_CONFIRM):
                again = measure(self.vms, denied)
                problems += [
                    f"{flow}: denied, then allowed again" for flow in denied if again[flow]
                ]
        if require_path:
            problems += self._path_problems(denied)
        if problems:
            raise AssertionError(
                f"{what}: {len(problems)} problem(s) in {len(expected)} rows:\n"
                + "\n".join(problems)
            )

    def _path_problems(self, denied: Iterable[Flow]) -> list[str]:
        problems = []
        for flow in denied:
            src, dst = self.vms[flow.src], self.vms[flow.dst]
            if self.host.route_to(dst.ip) != dst.tap:
                problems.append(f"{flow}: no host route {dst.ip} dev {dst.tap} (not policy)")
            if not neighbour_resolved(src, dst.ip):
                problems.append(f"{flow}: {flow.src} never resolved {dst.ip} (not policy)")
        return problems

    def expect_allowed(self, what: str, attempt: Callable[[], bool]) -> None:
        self.require_running()
        if not wait_until(attempt, SETTLE_TIMEOUT, 0.5):
            raise AssertionError(f"expected allowed, got denied: {what}")

    def expect_denied(self, what: str, attempt: Callable[[], bool]) -> None:
        self.require_running()
        if not wait_until(lambda: not attempt(), SETTLE_TIMEOUT, 0.5):
            raise AssertionError(f"expected denied, got allowed: {what}")
        for _ in range(DENY_CONFIRM):
            if attempt():
                raise AssertionError(f"expected denied, allowed again: {what}")

    # -- diagnostics -----------------------------------------------------------------------------

    def diagnostics(self) -> str:
        """Felix's log, the DHCP agent's log, Neutron's log tails, the host's iptables-save
        and routes: printed by the test when it fails."""
        parts = []
        if self.felix is not None:
            lines = self.felix.text().splitlines()
            parts.append(
                f"=== calico-felix (exit status {self.felix.proc.poll()}), last 80 lines:\n"
                + "\n".join(lines[-80:])
            )
        if self.agent is not None:
            lines = self.agent.log().splitlines()
            parts.append(
                f"=== calico-dhcp-agent (exit status {self.agent.proc.poll()}), last 60 lines:\n"
                + "\n".join(lines[-60:])
            )
        parts.append("=== Neutron logs (tails):\n" + self.neutron.logs(lines=60))
        saved = self.host.run(["iptables-save"], check=False)
        parts.append(f"=== iptables-save (host namespace):\n{saved.stdout}{saved.stderr}")
        routes = self.host.run(["ip", "-4", "route", "show"], check=False).stdout
        parts.append(f"=== host routes:\n{routes}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop the agent, then Felix and every namespace (the host's close does those)."""
        try:
            if self.agent is not None:
                self.agent.stop()
        finally:
            self.host.close()


def neighbour_resolved(vm: Workload, addr: str) -> bool:
    """True if ``vm`` has a link-layer address for ``addr`` (the host answered its ARP)."""
    out = vm.run(["ip", "-j", "-4", "neigh", "show", addr], check=False).stdout
    return any(
        "lladdr" in n and not {"FAILED", "INCOMPLETE"} & set(n.get("state", []))
        for n in json.loads(out or "[]")
    )
