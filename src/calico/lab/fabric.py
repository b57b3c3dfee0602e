"""A small cloud on one machine: compute hosts (network namespaces) on a shared fabric segment,
a bridge inside a fabric namespace; each host can run BIRD, calico-bgp and calico-felix.

Layout (every box is a namespace this module creates and always deletes; the root namespace
is never touched)::

    +-- fabric ------------------------------------------------------------+
    |  br0  198.18.0.254/24  fd00:18::fe/64  (the top-of-rack router's     |
    |       address: the hosts' default gateway; BIRD can run here too)    |
    |    p1          p2          p3        (one veth port per host)        |
    +----|-----------|-----------|------------------------------------------+
       eth0        eth0        eth0
     host 1      host 2      host 3      198.18.0.<i>/24, fd00:18::<i>/64,
     (ComputeHost: relay to etcd,         default routes via the fabric,
      VMs, Felix, BIRD, calico-bgp)       forwarding on

:class:`FabricHost` is a :class:`calico.lab.topology.ComputeHost` (so VMs, Felix and the etcd
relay work as on the one-host lab) whose uplink is the fabric instead of a dead end.
``start_bird`` / ``start_calico_bgp`` run BIRD and calico-bgp in it with files in its work
directory (:mod:`calico.lab.bgp`); ``add_felix_route`` makes what Felix makes for a workload
without running Felix: a TAP-like veth and a ``proto 80`` host route to it. With Felix
(``start_felix``) and VMs (``add_workload``) the hosts carry packets between VMs on different
hosts (IPv4 and IPv6). ``relay_to(port)`` reaches more etcd members (an etcd cluster: pass
``FELIX_ETCDENDPOINTS`` listing them to ``start_felix`` and ``start_calico_bgp``).

Addresses: hosts 198.18.0.1-253 (198.18.0.0/15, the benchmarking range), fd00:18::/64;
workloads 10.65.0.0/16 and fd00:65::/64.

The fabric does not forward: traffic a host sends to its default gateway for an address no
host has a route for ends there.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from calico.lab.bgp import BgpProcess, BirdProcess, kernel_routes
from calico.lab.netns import PREFIX, NetNS
from calico.lab.relay import LoopbackRelay
from calico.lab.topology import ComputeHost

FABRIC_V4 = "198.18.0."
FABRIC_V6 = "fd00:18::"
PREFIX_LEN_V4 = 24
PREFIX_LEN_V6 = 64
GATEWAY_INDEX = 254
RTPROT_FELIX = "80"


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def host_ip(index: int, v6: bool = False) -> str:
    return f"{FABRIC_V6}{index:x}" if v6 else f"{FABRIC_V4}{index}"


class Fabric:
    """The fabric namespace and its bridge, and the hosts on it.

    ``etcd``: an :class:`~calico.lab.etcd_server.EtcdServer` every host reaches at
    127.0.0.1:<port> through its relay. ``work_dir``: where each host's files go (a temporary
    directory by default, removed by :meth:`close`).
    """

    def __init__(self, etcd: Any = None, work_dir: Path | None = None, v6: bool = True):
        self.etcd = etcd
        self.v6 = v6
        self.hosts: list[FabricHost] = []
        self.bird: BirdProcess | None = None
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if work_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="calico-fabric-")
            work_dir = Path(self._own_tmp.name)
        self.work_dir = work_dir
        self.ns = NetNS(f"{PREFIX}fab-{secrets.token_hex(3)}")
        try:
            self.ns.create()
            _ip("-n", self.ns.name, "link", "add", "br0", "type", "bridge")
            self.ns.set_up("br0")
            self.ns.add_addr("br0", f"{self.gateway}/{PREFIX_LEN_V4}")
            if v6:
                _ip("-n", self.ns.name, "-6", "addr", "add",
                    f"{self.gateway6}/{PREFIX_LEN_V6}", "dev", "br0", "nodad")  # fmt: skip
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Fabric({self.ns.name!r}, {len(self.hosts)} hosts)"

    @property
    def gateway(self) -> str:
        return host_ip(GATEWAY_INDEX)

    @property
    def gateway6(self) -> str:
        return host_ip(GATEWAY_INDEX, v6=True)

    def add_host(self, hostname: str | None = None, index: int | None = None) -> FabricHost:
        """A new compute host on the fabric (index: the last octet of its address)."""
        used = {h.index for h in self.hosts}
        if index is None:
            index = next(i for i in range(1, GATEWAY_INDEX) if i not in used)
        if index in used or not 1 <= index < GATEWAY_INDEX:
            raise ValueError(f"host index {index} is taken or out of range")
        work_dir = self.work_dir / f"h{index}"
        work_dir.mkdir(parents=True, exist_ok=True)
        host = FabricHost(self, index, hostname or f"host{index}", work_dir)
        self.hosts.append(host)
        return host

    def start_bird(self, config: str, graceful: bool = False) -> BirdProcess:
        """BIRD in the fabric namespace (the top-of-rack router) with the given file."""
        if self.bird is None:
            self.bird = BirdProcess(self.ns, self.work_dir / "fabric", name="tor")
        self.bird.config.write_text(config)
        return self.bird.start(graceful=graceful, router_id=self.gateway)

    def close(self) -> None:
        """Stop everything, delete every namespace; keep going on errors, raise the first."""
        errors: list[BaseException] = []
        for host in self.hosts:
            try:
                host.close()
            except Exception as exc:
                errors.append(exc)
        self.hosts = []
        steps = [self.bird.stop] if self.bird is not None else []
        for step in [*steps, self.ns.delete]:
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
        if errors:
            raise errors[0]

    def __enter__(self) -> Fabric:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FabricHost(ComputeHost):
    """A compute host whose uplink ``eth0`` is a port of the fabric's bridge."""

    def __init__(self, fabric: Fabric, index: int, hostname: str, work_dir: Path):
        self.fabric = fabric
        self.index = index
        self.ip = host_ip(index)
        self.ip6: str | None = host_ip(index, v6=True) if fabric.v6 else None
        self.bird: BirdProcess | None = None
        self.bgp: list[BgpProcess] = []
        self.relays: list[LoopbackRelay] = []
        super().__init__(
            etcd=fabric.etcd, hostname=hostname, name_prefix=f"h{index}", work_dir=work_dir
        )
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"FabricHost({self.hostname!r}, {self.ip}, ns={self.ns.name!r})"

    def _attach(self) -> None:
        fab, me = self.fabric.ns.name, self.ns.name
        _ip("-n", me, "link", "del", "uplink0")  # ComputeHost's dead end, and its default routes
        port = f"p{self.index}"
        self.fabric.ns.add_veth_to(self.ns, port, "eth0")
        _ip("-n", fab, "link", "set", port, "master", "br0")
        self.fabric.ns.set_up(port)
        self.ns.set_up("eth0")
        self.ns.add_addr("eth0", f"{self.ip}/{PREFIX_LEN_V4}")
        _ip("-n", me, "route", "add", "default", "via", self.fabric.gateway, "proto", "static")
        if self.ip6 is not None:
            _ip("-n", me, "-6", "addr", "add", f"{self.ip6}/{PREFIX_LEN_V6}", "dev", "eth0",
                "nodad")  # fmt: skip
            _ip("-n", me, "-6", "route", "add", "default", "via", self.fabric.gateway6,
                "proto", "static")  # fmt: skip

    def relay_to(self, port: int) -> LoopbackRelay:
        """127.0.0.1:<port> in this host reaches 127.0.0.1:<port> in the root namespace (for
        more etcd members than the fabric's own; closed by :meth:`close`)."""
        relay = LoopbackRelay(self.ns.name, port)
        self.relays.append(relay)
        return relay

    # -- what Felix would program, without Felix ---------------------------------------------

    def add_tap(self, name: str) -> str:
        """A TAP-like interface (one end of a veth pair whose other end is also here), up."""
        _ip("-n", self.ns.name, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        self.ns.set_up(f"{name}p")
        self.ns.set_up(name)
        return name

    def add_felix_route(self, ip: str, dev: str) -> None:
        """``ip route replace <ip>/32 dev <dev> proto 80``, as Felix does for a workload."""
        family = "-6" if ":" in ip else "-4"
        plen = 128 if ":" in ip else 32
        _ip("-n", self.ns.name, family, "route", "replace", f"{ip}/{plen}", "dev", dev,
            "proto", RTPROT_FELIX)  # fmt: skip

    def del_felix_route(self, ip: str) -> None:
        family = "-6" if ":" in ip else "-4"
        _ip("-n", self.ns.name, family, "route", "del", ip, "proto", RTPROT_FELIX)

    def bird_routes(self, v6: bool = False) -> dict[str, Any]:
        """The routes BIRD installed in this host's kernel (``proto bird``)."""
        return kernel_routes(self.ns, v6=v6, proto="bird")

    # -- BIRD and calico-bgp -----------------------------------------------------------------------

    def start_bird(self, graceful: bool = True) -> BirdProcess:
        """BIRD on this host's file (``bird.conf`` in its work directory: the file
        calico-bgp writes); started again after :meth:`BirdProcess.kill`/``stop``."""
        if self.bird is None:
            self.bird = BirdProcess(self.ns, self.work_dir, name="bird")
        return self.bird.start(graceful=graceful, router_id=self.ip)

    def calico_bgp_args(self, *extra: str) -> list[str]:
        bird = self.bird or BirdProcess(self.ns, self.work_dir, name="bird")
        args = ["-c", str(self.work_dir / "absent.cfg"), "--bird-config", str(bird.config)]
        args += ["--bird-socket", str(bird.socket), "--bird-log", str(bird.log)]
        args += ["--poll-interval", "1"]
        return [*args, *extra]

    def start_calico_bgp(self, *extra: str, env: dict[str, str] | None = None) -> BgpProcess:
        """calico-bgp in this host (Felix's environment: its etcd, its host name), writing the
        file :meth:`start_bird` runs BIRD on; stopped by :meth:`close`."""
        output = self.work_dir / f"calico-bgp-{len(self.bgp)}.log"
        process = BgpProcess(self.ns, self.felix_env(env), self.calico_bgp_args(*extra), output)
        self.bgp.append(process)
        return process

    def close(self) -> None:
        errors: list[BaseException] = []
        for process in self.bgp:
            try:
                process.stop()
            except Exception as exc:
                errors.append(exc)
        steps = [self.bird.stop] if self.bird is not None else []
        for step in [*steps, *(relay.close for relay in self.relays)]:
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        try:
            super().close()
        except Exception as exc:
            errors.append(exc)
        if errors:
            raise errors[0]
