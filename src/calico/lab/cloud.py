"""A small Calico cloud on one machine: an etcd (a cluster or one server), compute hosts on a
shared fabric (:mod:`calico.lab.fabric`), each running BIRD, ``calico-bgp`` and
``calico-felix``, and VMs on them, for the multi-host tests, the benchmarks and ``make demo``.

Layout::

    etcd (EtcdCluster of three members, or one EtcdServer) on 127.0.0.1 in the root namespace,
    reached from every host through its loopback relays (no link, no route in the root ns)

    +-- fabric: br0 198.18.0.254 -----------------------------------------------+
    |   p1            p2            p3      ...                                  |
    +---|-------------|-------------|--------------------------------------------+
      host 1        host 2        host 3       BIRD + calico-bgp (+ calico-felix)
      198.18.0.1    198.18.0.2    198.18.0.3   a BGP mesh (or clients of reflectors)
      VMs 10.65.1.x VMs 10.65.2.x ...          fd00:65::<host>:<n> for IPv6

Each compute host is a :class:`~calico.lab.fabric.FabricHost`. ``reflectors`` extra hosts
(after the compute hosts) can be route reflectors: then ``node_mesh`` is off and every compute
host peers with the reflectors only; reflectors run BIRD and calico-bgp but no Felix and no VM.

VMs are :class:`~calico.lab.topology.Workload` namespaces; :meth:`Cloud.add_vm` creates one
and writes its endpoint (what Neutron's driver writes), :meth:`Cloud.delete_vm` deletes the
endpoint (what Neutron does when the port goes) and then the VM.

:meth:`Cloud.close` (and leaving the ``with`` block) stops every process by PID and deletes
every namespace, on every path; a Ctrl-C during the clean-up is held back until it is done.
The etcd is the caller's: it is neither started nor stopped here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from calico.common.datamodel_v1 import ReadyKey
from calico.lab.bgp import CALICO_BGP
from calico.lab.fabric import Fabric, FabricHost
from calico.lab.felix import FelixProcess
from calico.lab.topology import Workload

BGP_GLOBAL = "/calico/bgp/v1/global"
BGP_HOST = "/calico/bgp/v1/host"
RR_CLUSTER_ID = "1.0.0.1"
START_TIMEOUT = 90.0  # every daemon on every host up, on a busy two-core machine
# A cloud's Felix: IPv6 on, no log file (its screen log is captured), a calmer refresh than the
# one-host lab's 5 s (several Felixes share two cores).
FELIX_ENV = {
    "FELIX_IPV6SUPPORT": "true",
    "FELIX_LOGFILEPATH": "none",
    "FELIX_IPTABLESREFRESHINTERVAL": "30",
}
BGP_PREFIXES = ("Mesh_", "Client_", "Reflector_", "Global_", "Node_")


def vm_addresses(host_index: int, n: int) -> tuple[str, str]:
    """The addresses of the ``n``-th VM (1-253) on the host with fabric index ``host_index``:
    10.65.<host>.<n> and fd00:65::<host>:<n>."""
    if not (1 <= n <= 253 and 1 <= host_index <= 253):
        raise ValueError(f"no VM address for host {host_index}, VM {n}")
    return f"10.65.{host_index}.{n}", f"fd00:65::{host_index:x}:{n:x}"


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) while the block runs, then deliver it: a clean-up must not be
    cut short. Only the main thread can do this; elsewhere the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


@dataclass
class Vm:
    """A VM of the cloud: its workload, its host, and what its endpoint says."""

    name: str
    host: FabricHost
    workload: Workload
    profiles: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return self.workload.ip

    @property
    def ip6(self) -> str | None:
        return self.workload.ip6


class Cloud:
    """``hosts`` compute hosts (and ``reflectors`` route reflectors) on one fabric, with the
    given ``etcd`` (an EtcdServer or an EtcdCluster, already started).

    ``hostnames``: the compute hosts' names (default ``compute-1``...). ``felix``: run
    calico-felix on the compute hosts. ``felix_env``: more FELIX_* for every Felix.
    ``bgp_args``: more calico-bgp options. Call :meth:`start` to run the daemons.
    """

    def __init__(
        self,
        etcd: Any,
        hosts: int = 3,
        *,
        reflectors: int = 0,
        hostnames: Sequence[str] | None = None,
        work_dir: Path | None = None,
        felix: bool = True,
        felix_env: Mapping[str, str] | None = None,
        bgp_args: Sequence[str] = (),
        v6: bool = True,
    ):
        names = list(hostnames or [f"compute-{i}" for i in range(1, hosts + 1)])
        if len(names) != hosts:
            raise ValueError(f"{hosts} hosts but {len(names)} host names")
        self.etcd = etcd
        self.v6 = v6
        self.run_felix = felix
        self.felix_env = {**FELIX_ENV, **(felix_env or {})}
        self.bgp_args = list(bgp_args) + ([] if v6 else ["--ip6", "none"])
        self.vms: dict[str, Vm] = {}
        self.felixes: dict[str, FelixProcess] = {}
        self.fabric = Fabric(etcd, work_dir=work_dir, v6=v6)
        try:
            self.hosts: list[FabricHost] = [self.fabric.add_host(name) for name in names]
            self.reflectors: list[FabricHost] = [
                self.fabric.add_host(f"reflector-{i}") for i in range(1, reflectors + 1)
            ]
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Cloud({len(self.hosts)} hosts, {len(self.reflectors)} reflectors)"

    @property
    def bgp_hosts(self) -> list[FabricHost]:
        return [*self.hosts, *self.reflectors]

    def host(self, hostname: str) -> FabricHost:
        for host in self.bgp_hosts:
            if host.hostname == hostname:
                return host
        raise KeyError(hostname)

    # -- the datastore --------------------------------------------------------------------------

    def put(self, key: str, value: object) -> None:
        """Write one key (v2 API, as the lab's Felix and calico-bgp read it); JSON unless a
        string is given."""
        self.etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))

    def delete(self, key: str, recursive: bool = False) -> None:
        self.etcd.v2_delete(key, recursive=recursive)

    def write_topology(self) -> None:
        """Ready, and the BGP topology: the mesh (the default), or reflectors without it."""
        self.put(ReadyKey().path, "true")
        if self.reflectors:
            self.put(f"{BGP_GLOBAL}/node_mesh", {"enabled": False})
            for rr in self.reflectors:
                self.put(f"{BGP_HOST}/{rr.hostname}/rr_cluster_id", RR_CLUSTER_ID)

    # -- the daemons ----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT, wait: bool = True) -> Cloud:
        """calico-bgp then BIRD on every host, and Felix on every compute host; with ``wait``,
        until every BGP session is Established and every Felix has programmed its host."""
        self.write_topology()
        for host in self.bgp_hosts:
            self.start_bgp(host)
        for host in self.bgp_hosts:
            host.bgp[-1].wait_for(r"Wrote .*bird\.conf", timeout=timeout)
            host.start_bird()
        if self.run_felix:
            for host in self.hosts:
                self.start_felix(host)
        if wait:
            self.wait_ready(timeout)
        return self

    def start_bgp(self, host: FabricHost) -> None:
        host.start_calico_bgp(*self.bgp_args)

    def start_felix(self, host: FabricHost, **env: str) -> FelixProcess:
        felix = host.start_felix({**self.felix_env, **env})
        self.felixes[host.hostname] = felix
        return felix

    def add_host(self, hostname: str, start: bool = True) -> FabricHost:
        """A new compute host on the fabric; with ``start``, joining the running cloud
        (:meth:`start_host`)."""
        host = self.fabric.add_host(hostname)
        self.hosts.append(host)
        if start:
            self.start_host(host)
        return host

    def start_host(self, host: FabricHost) -> None:
        """calico-bgp, then BIRD once its file is written, then Felix (not waited for)."""
        self.start_bgp(host)
        host.bgp[-1].wait_for(r"Wrote .*bird\.conf", timeout=START_TIMEOUT)
        host.start_bird()
        if self.run_felix:
            self.start_felix(host)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for host in self.bgp_hosts:
            self.wait_sessions(host, max(1.0, deadline - time.monotonic()))
        for felix in self.felixes.values():
            felix.wait_for("Dataplane programmed", timeout=max(1.0, deadline - time.monotonic()))

    def expected_sessions(self, host: FabricHost) -> int:
        """How many BGP sessions ``host`` has once everything is up."""
        families = 2 if self.v6 else 1
        if not self.reflectors:
            peers = len(self.hosts) - 1
        elif host in self.reflectors:
            peers = len(self.bgp_hosts) - 1
        else:
            peers = len(self.reflectors)
        return peers * families

    def sessions(self, host: FabricHost) -> dict[str, tuple[str, str]]:
        """The BGP protocols of ``host``'s BIRD: name -> (state, info)."""
        if host.bird is None or host.bird.pid is None:
            return {}
        return {
            name: value
            for name, value in host.bird.protocols().items()
            if name.startswith(BGP_PREFIXES)
        }

    def established(self, host: FabricHost) -> int:
        return sum(info == "Established" for _, info in self.sessions(host).values())

    def wait_sessions(self, host: FabricHost, timeout: float = START_TIMEOUT) -> float:
        """Wait until every expected session of ``host`` is Established; the seconds taken."""
        wanted = self.expected_sessions(host)
        return wait(
            lambda: self.established(host) >= wanted,
            timeout,
            f"{host.hostname}: {wanted} BGP sessions Established ({self.sessions(host)})",
            interval=0.1,
        )

    def bgp_status(self, host: FabricHost) -> str:
        """``calico-bgp status`` on ``host``, as an operator runs it there."""
        assert host.bird is not None
        argv = [CALICO_BGP, "status", "--bird-socket", str(host.bird.socket)]
        proc = host.ns.run(argv, check=False)
        return proc.stdout + proc.stderr

    # -- VMs ----------------------------------------------------------------------------------

    def add_vm(
        self,
        name: str,
        host: FabricHost,
        profiles: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        n: int | None = None,
        write: bool = True,
    ) -> Vm:
        """A VM on ``host`` (its ``n``-th address, default the next free) and, with ``write``,
        its endpoint in etcd."""
        if name in self.vms:
            raise ValueError(f"VM {name!r} exists")
        if n is None:
            n = 1 + sum(vm.host is host for vm in self.vms.values())
        ip, ip6 = vm_addresses(host.index, n)
        label = "".join(c for c in name if c.isalnum())[:10] or "vm"
        workload = host.add_workload(ip, ip6 if self.v6 else None, label=label)
        vm = Vm(name, host, workload, list(profiles), dict(labels or {}))
        self.vms[name] = vm
        if write:
            self.write_endpoint(name)
        return vm

    def write_endpoint(
        self,
        name: str,
        profiles: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """(Re)write a VM's endpoint, with new profiles or labels if given."""
        vm = self.vms[name]
        if profiles is not None:
            vm.profiles = list(profiles)
        if labels is not None:
            vm.labels = dict(labels)
        key = vm.workload.endpoint_key(vm.host.hostname)
        self.put(key, vm.workload.endpoint_json(vm.profiles, vm.labels))

    def delete_endpoint(self, name: str) -> None:
        vm = self.vms[name]
        self.delete(vm.workload.endpoint_key(vm.host.hostname))

    def delete_vm(self, name: str, endpoint: bool = True) -> None:
        """The endpoint deleted from etcd (unless ``endpoint`` is false: already done), then
        the VM's namespace (its TAP goes with it)."""
        if endpoint:
            self.delete_endpoint(name)
        vm = self.vms.pop(name)
        vm.host.workloads.remove(vm.workload)
        vm.workload.close()

    def workloads(self) -> dict[str, Workload]:
        """VM name -> workload, as :mod:`calico.lab.flows` takes them."""
        return {name: vm.workload for name, vm in self.vms.items()}

    # -- routes ---------------------------------------------------------------------------------

    def learned(self, host: FabricHost, ip: str) -> bool:
        """Whether BIRD installed a route to ``ip`` in ``host``'s kernel."""
        return host_route(host, ip, "bird")

    def routed_everywhere(self, vm: Vm) -> bool:
        """Felix's route on the VM's host and BIRD's on every other compute host (both
        families)."""
        ips = [vm.ip, *([vm.ip6] if vm.ip6 else [])]
        return all(host_route(vm.host, ip, "80") for ip in ips) and all(
            self.learned(host, ip) for host in self.hosts if host is not vm.host for ip in ips
        )

    def withdrawn_everywhere(self, vm: Vm) -> bool:
        ips = [vm.ip, *([vm.ip6] if vm.ip6 else [])]
        return not any(
            host_route(host, ip, "80" if host is vm.host else "bird")
            for host in self.hosts
            for ip in ips
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every daemon by PID and delete every namespace (the fabric's close), holding
        back Ctrl-C until done."""
        with interrupts_held():
            self.fabric.close()

    def __enter__(self) -> Cloud:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def host_route(host: FabricHost, ip: str, proto: str) -> bool:
    """Whether ``host``'s main table has the host route to ``ip`` with that protocol."""
    family = "-6" if ":" in ip else "-4"
    argv = ["ip", "-j", family, "route", "show", "exact", ip, "proto", proto]
    out = host.ns.run(argv, check=False).stdout
    return bool(json.loads(out or "[]"))


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll until ``predicate()`` is true; the seconds it took. AssertionError after timeout
    (naming ``what``)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)
    return time.monotonic() - started
