"""The heavier parts of bench/multihost.py: routes at scale on three hosts, and a bigger cloud
(compute hosts behind two route reflectors) with a host joining it. See bench/multihost.py."""

from __future__ import annotations

import functools
import json
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calico.common.datamodel_v1 import WorkloadEndpointKey
from calico.lab.cloud import Cloud
from calico.lab.fabric import FabricHost
from calico.lab.felix import FelixProcess
from calico.lab.watch import PingStream, RouteMonitor
from multihost import (
    BGP_ARGS,
    PING_INTERVAL,
    SAMPLE_TIMEOUT,
    cpu_s,
    etcd_cluster,
    load,
    progress,
    rss_mb,
    summary,
    tap_sysctls_first,
    wait_for,
)

ROUTE_TIMEOUT = 600.0


def scale_ip(host_index: int, i: int) -> str:
    """The ``i``-th (0-based, < 1,000) scale address of a host: four /24s per host."""
    return f"10.65.{(host_index - 1) * 4 + i // 250}.{i % 250 + 1}"


def batch(host: FabricHost, lines: list[str]) -> None:
    """``ip -batch -`` inside the host."""
    proc = host.ns.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -batch in {host.hostname}: {proc.stderr[-500:]}")


def route_count(host: FabricHost, proto: str) -> int:
    out = host.ns.run(["ip", "-4", "route", "show", "proto", proto], check=False).stdout
    return len(out.splitlines())


def bird_memory(host: FabricHost) -> dict[str, float]:
    """BIRD's own account (`show memory`, Total) and its RSS, in MB."""
    assert host.bird is not None
    out = host.bird.birdc("show", "memory").stdout
    total = 0.0
    if match := re.search(r"^Total:\s+([\d.]+)\s+(\w+)", out, flags=re.MULTILINE):
        value, unit = float(match.group(1)), match.group(2)
        total = value * {"B": 1 / 2**20, "kB": 1 / 2**10, "MB": 1.0, "GB": 2**10}.get(unit, 0)
    return {"show_memory_mb": round(total, 2), "rss_mb": rss_mb(host.bird.pid)}


def wait_counts(cloud: Cloud, own: int, learnt: int, started: float) -> dict[str, float]:
    """Seconds (from ``started``) until each host has ``own`` Felix routes and ``learnt``
    BIRD routes (IPv4)."""
    done: dict[str, float] = {}
    while len(done) < len(cloud.hosts):
        for host in cloud.hosts:
            if host.hostname in done:
                continue
            if route_count(host, "80") >= own and route_count(host, "bird") >= learnt:
                done[host.hostname] = round(time.monotonic() - started, 3)
        if time.monotonic() - started > ROUTE_TIMEOUT:
            raise RuntimeError(f"routes not everywhere within {ROUTE_TIMEOUT} s: {done}")
        time.sleep(0.05)
    return done


# -- routes at scale ----------------------------------------------------------------------------


def scale(work: Path, per_host: int) -> dict[str, Any]:
    return {
        "hosts": 3,
        "per_host": per_host,
        "bgp_only": _scale_bgp_only(work / "bgp", per_host),
        "with_felix": _scale_with_felix(work / "felix", per_host),
    }


def _scale_bgp_only(work: Path, per_host: int) -> dict[str, Any]:
    """TAP-like veths with `proto 80` routes added by hand: BGP's part alone."""
    with (
        etcd_cluster(work) as etcd,
        Cloud(etcd, 3, work_dir=work / "cloud", felix=False, v6=False, bgp_args=BGP_ARGS) as cloud,
    ):
        cloud.start(timeout=180)
        before = {h.hostname: bird_memory(h) for h in cloud.hosts}
        for host in cloud.hosts:
            links = [f"link add t{i:04d} type veth peer name t{i:04d}p" for i in range(per_host)]
            links += [f"link set t{i:04d}{end} up" for i in range(per_host) for end in ("", "p")]
            batch(host, links)
        cpu_before = {h.hostname: cpu_s(h.bird.pid if h.bird else None) for h in cloud.hosts}
        progress(f"scale, BGP alone: {per_host} routes on each of 3 hosts")
        started = time.monotonic()
        procs = [
            host.ns.popen(["ip", "-batch", "-"], stdin=subprocess.PIPE, text=True)
            for host in cloud.hosts
        ]
        for host, proc in zip(cloud.hosts, procs, strict=True):
            lines = [
                f"route add {scale_ip(host.index, i)}/32 dev t{i:04d} proto 80"
                for i in range(per_host)
            ]
            assert proc.stdin is not None
            proc.stdin.write("\n".join(lines) + "\n")
            proc.stdin.close()
        for proc in procs:
            proc.wait()
        added = time.monotonic() - started
        everywhere = wait_counts(cloud, per_host, 2 * per_host, started)
        after = {h.hostname: bird_memory(h) for h in cloud.hosts}
        cpu = {
            h.hostname: round(cpu_s(h.bird.pid if h.bird else None) - cpu_before[h.hostname], 2)
            for h in cloud.hosts
        }
        # Withdrawal: every route of the first host deleted at once.
        first = cloud.hosts[0]
        started = time.monotonic()
        batch(first, [f"route del {scale_ip(first.index, i)}/32" for i in range(per_host)])
        others = cloud.hosts[1:]
        withdrawn = wait_for(
            lambda: all(route_count(h, "bird") <= per_host for h in others),
            ROUTE_TIMEOUT,
            "the first host's routes withdrawn",
            step=0.05,
        )
    return {
        "routes_added_s": round(added, 3),
        "everywhere_s": everywhere,
        "all_everywhere_s": max(everywhere.values()),
        "withdrawn_everywhere_s": round(withdrawn, 3),
        "bird_memory_before": before,
        "bird_memory_after": after,
        "bird_cpu_s": cpu,
    }


def _endpoint(host: FabricHost, tap: str, ip: str) -> tuple[str, str]:
    key = WorkloadEndpointKey(host.hostname, "openstack", str(uuid.uuid4()), str(uuid.uuid4()))
    mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
    value = {
        "state": "active",
        "name": tap,
        "mac": mac,
        "profile_ids": ["open"],
        "ipv4_nets": [f"{ip}/32"],
        "ipv4_gateway": "169.254.1.1",
    }
    return key.path, json.dumps(value)


def _scale_with_felix(work: Path, per_host: int) -> dict[str, Any]:
    """The whole path: endpoints written to etcd, each host's Felix programs its TAPs and
    routes, BIRD carries them."""
    env = {"FELIX_IPV6SUPPORT": "false", "FELIX_IPTABLESREFRESHINTERVAL": "0"}
    with (
        etcd_cluster(work) as etcd,
        Cloud(
            etcd, 3, work_dir=work / "cloud", v6=False, felix_env=env, bgp_args=BGP_ARGS
        ) as cloud,
    ):
        cloud.start(timeout=180)
        keys: list[tuple[str, str]] = []
        for host in cloud.hosts:
            taps = [f"tap{host.index:02d}{i:04d}bench" for i in range(per_host)]
            links = [f"link add {t} type veth peer name v{t[3:9]}" for t in taps]
            links += [f"link set {name} up" for t in taps for name in (t, f"v{t[3:9]}")]
            batch(host, links)
            keys += [_endpoint(host, t, scale_ip(host.index, i)) for i, t in enumerate(taps)]
        # Interleave the hosts' endpoints, as many Neutron servers' writes would.
        order = [keys[i + h * per_host] for i in range(per_host) for h in range(3)]
        progress(f"scale, with Felix: writing {len(order)} endpoints")
        started = time.monotonic()
        for key, value in order:
            etcd.v2_put(key, value)
        written = time.monotonic() - started
        everywhere = wait_counts(cloud, per_host, 2 * per_host, started)
        memory = {h.hostname: bird_memory(h) for h in cloud.hosts}
        felix = {h: felix_rss(f) for h, f in cloud.felixes.items()}
    return {
        "etcd_writes_s": round(written, 3),
        "everywhere_s": everywhere,
        "all_everywhere_s": max(everywhere.values()),
        "bird_memory_after": memory,
        "felix_rss_mb": felix,
    }


def driver_pid(felix: FelixProcess) -> int | None:
    """Felix's dataplane driver (its child running calico.felix.driver)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == felix.proc.pid and b"felix.driver" in cmdline:
            return int(entry.name)
    return None


def felix_rss(felix: FelixProcess) -> dict[str, float]:
    return {"felix": rss_mb(felix.proc.pid), "driver": rss_mb(driver_pid(felix))}


# -- a bigger cloud -------------------------------------------------------------------------------


def etcd_connections(host: FabricHost, ports: list[int]) -> int:
    """TCP connections from this host's daemons to etcd (through its relays)."""
    out = host.ns.run(["ss", "-Htn", "state", "established"], check=False).stdout
    wanted = {str(p) for p in ports}
    return sum(line.split()[-1].rsplit(":", 1)[-1] in wanted for line in out.splitlines())


def bigger_cloud(
    work: Path,
    hosts: int,
    samples: int,
    background: int,
    sysctls_first: bool = False,
    reflectors: int = 2,
) -> dict[str, Any]:
    """``hosts`` compute hosts behind ``reflectors`` route reflectors (0: a full mesh)."""
    result: dict[str, Any] = {
        "compute_hosts": hosts,
        "reflectors": reflectors,
        "background": background,
        "tap_sysctls_first": sysctls_first,
    }
    env = {"FELIX_IPTABLESREFRESHINTERVAL": "60"}
    with (
        etcd_cluster(work) as etcd,
        Cloud(
            etcd,
            hosts,
            reflectors=reflectors,
            work_dir=work / "cloud",
            felix_env=env,
            bgp_args=BGP_ARGS,
        ) as cloud,
    ):
        started = time.monotonic()
        cloud.start(timeout=900)
        result["start_s"] = round(time.monotonic() - started, 1)
        progress(f"cloud: up in {result['start_s']} s; VMs and {background} routes per host")
        for host in cloud.hosts:
            batch(host, ["link add bgx0 type veth peer name bgx0p", "link set bgx0 up"])
            batch(
                host,
                [
                    f"route add 10.65.{100 + host.index}.{i + 1}/32 dev bgx0 proto 80"
                    for i in range(background)
                ],
            )
        probes = [cloud.add_vm(f"probe{h.index}", h, ["open"]) for h in cloud.hosts]
        targets = [
            cloud.add_vm(f"new{i}", cloud.hosts[i % hosts], ["open"], write=False)
            for i in range(samples)
        ]
        wait_for(lambda: all(cloud.routed_everywhere(p) for p in probes), 120, "probes routed")
        monitors = {h.hostname: RouteMonitor(h.ns) for h in cloud.hosts}
        reach_all: list[float] = []
        reach_each: list[float] = []
        route_all: list[float] = []
        try:
            for vm in targets:
                if sysctls_first:
                    tap_sysctls_first(vm.host, vm.workload.tap)
                sources = [p for p in probes if p.host is not vm.host]
                streams = [PingStream(p.workload.ns, vm.ip, PING_INTERVAL * 5) for p in sources]
                try:
                    time.sleep(0.1)
                    sent = time.time()
                    cloud.write_endpoint(vm.name)
                    wait_for(
                        functools.partial(_all_replied, streams),
                        SAMPLE_TIMEOUT,
                        f"{vm.ip} reached from every host",
                    )
                    replies = [float(s.first_reply() or 0) - sent for s in streams]
                finally:
                    for stream in streams:
                        stream.close()
                reach_each += replies
                reach_all.append(max(replies))
                learnt = [
                    monitors[p.host.hostname].wait_first(vm.ip, proto="bird") - sent
                    for p in sources
                ]
                route_all.append(max(learnt))
                time.sleep(0.2)
        finally:
            for monitor in monitors.values():
                monitor.close()
        result["vm_added"] = {
            "samples": samples,
            "reachable_from_all": summary(reach_all),
            "reachable_from_each": summary(reach_each),
            "route_on_all": summary(route_all),
        }
        result["footprint"] = footprint(cloud, etcd.ports, idle=10.0)
        result["join"] = join(cloud, background)
    result["load_after"] = load()
    return result


def _all_replied(streams: list[PingStream]) -> bool:
    return all(stream.first_reply() is not None for stream in streams)


def footprint(cloud: Cloud, ports: list[int], idle: float) -> dict[str, Any]:
    """Sessions, etcd connections, memory, and CPU over ``idle`` seconds of each daemon kind."""
    # Without reflectors (a mesh), the last compute host stands in the reflector's column.
    client, rr = cloud.hosts[0], (cloud.reflectors or cloud.hosts)[-1]
    pids: dict[str, list[int | None]] = {
        "bird (client)": [h.bird.pid if h.bird else None for h in cloud.hosts],
        "bird (reflector)": [h.bird.pid if h.bird else None for h in cloud.reflectors or [rr]],
        "calico-bgp": [h.bgp[-1].proc.pid for h in cloud.bgp_hosts],
        "calico-felix": [f.proc.pid for f in cloud.felixes.values()],
        "felix driver": [driver_pid(f) for f in cloud.felixes.values()],
    }
    before = {kind: sum(cpu_s(p) for p in group) for kind, group in pids.items()}
    time.sleep(idle)
    return {
        "sessions": {"client": cloud.established(client), "reflector": cloud.established(rr)},
        "etcd_connections": {
            "client": etcd_connections(client, ports),
            "reflector": etcd_connections(rr, ports),
        },
        "rss_mb_mean": {
            kind: round(sum(rss_mb(p) for p in group) / max(1, len(group)), 1)
            for kind, group in pids.items()
        },
        "bird_memory": {"client": bird_memory(client), "reflector": bird_memory(rr)},
        "idle_cpu_percent_each": {
            kind: round((sum(cpu_s(p) for p in group) - before[kind]) / idle * 100 / len(group), 2)
            for kind, group in pids.items()
        },
        "idle_window_s": idle,
    }


def join(cloud: Cloud, background: int) -> dict[str, Any]:
    """A new compute host joins: from its daemons' start until its BIRD has every route."""
    vms = sum(vm.host in cloud.hosts for vm in cloud.vms.values())
    expected = background * len(cloud.hosts) + vms  # IPv4 routes from the others
    host = cloud.add_host(f"compute-{len(cloud.hosts) + 1}", start=False)
    progress(f"cloud: {host.hostname} joins, expecting {expected} routes")
    started = time.monotonic()
    cloud.start_host(host)
    felix = cloud.felixes[host.hostname]
    checks: dict[str, Callable[[], bool]] = {
        "sessions_s": lambda: cloud.established(host) >= cloud.expected_sessions(host),
        "every_route_s": lambda: route_count(host, "bird") >= expected,
        "felix_programmed_s": lambda: "Dataplane programmed" in felix.text(),
    }
    seen: dict[str, float] = {}
    while len(seen) < len(checks):  # each first seen, polled together
        for name, check in checks.items():
            if name not in seen and check():
                seen[name] = round(time.monotonic() - started, 3)
        if time.monotonic() - started > ROUTE_TIMEOUT:
            raise RuntimeError(f"{host.hostname} not joined within {ROUTE_TIMEOUT} s: {seen}")
        time.sleep(0.02)
    return {"routes": expected, **seen}
