"""The many-hosts section of docs/benchmarks.md' generated tables, from bench/multihost.py's
JSON (rendered by bench/suite.py; pure: no kernel, no etcd)."""

from __future__ import annotations

from typing import Any


def _ms(entry: dict[str, Any], key: str = "median_ms") -> str:
    value = entry.get(key)
    return "—" if value is None else f"{float(value):,.1f} ms"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:,.2f} s"


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def tables(result: dict[str, Any]) -> list[str]:
    """Markdown lines: a heading and one table per part that ran."""
    lines = [
        "### Many hosts: BGP with BIRD, Felix on every host (issue 14)",
        "",
        "`bench/multihost.py`" + (" --quick" if result.get("quick") else "") + ": lab hosts on "
        "a fabric, each running BIRD 2.0.12 and calico-bgp (and calico-felix where said), a "
        "three-member etcd cluster. Load average (1/5/15 min) before "
        f"{_load(result.get('load_before'))}, after {_load(result.get('load_after'))}; "
        f"{result.get('duration_s', '?')} s in all.",
        "",
    ]
    if "convergence" in result:
        lines += _convergence(result["convergence"])
    if "scale" in result:
        lines += _scale(result["scale"])
    if "cloud" in result:
        lines += _cloud(result["cloud"])
    return lines


_CONVERGENCE_ROWS = [
    ("etcd write (the PUT's round trip)", "etcd_write"),
    ("Felix's route in A's kernel", "felix_route_a"),
    ("BIRD's route in B's kernel", "bird_route_b"),
    ("B's route after A's (BIRD learning + BGP + install)", "bgp_hop"),
    ("first echo reply at B's VM (reachable)", "reachable_from_b"),
    ("deleted: Felix's route gone on A", "felix_route_gone_a"),
    ("deleted: BIRD's route gone on B", "bird_route_gone_b"),
    ("B's withdrawal after A's", "withdraw_hop"),
]


def _convergence(conv: dict[str, Any]) -> list[str]:
    measures = conv["measures"]
    lines = [
        f"Cross-host convergence: a VM added on host A, reached from host B ({conv['samples']} "
        f"VMs; ping every {conv['ping_interval_ms']:g} ms; BIRD's kernel `scan time` "
        f"{conv.get('bird_scan_time_s')} s"
        + (
            "; the TAP's proxy ARP turned on before the write"
            if conv.get("tap_sysctls_first")
            else ""
        )
        + "). From the start of the etcd write:",
        "",
        "| measure | median | p99 | min | max | samples over 500 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in _CONVERGENCE_ROWS:
        entry = measures.get(key, {})
        lines.append(
            f"| {label} | {_ms(entry)} | {_ms(entry, 'p99_ms')} | {_ms(entry, 'min_ms')} "
            f"| {_ms(entry, 'max_ms')} | {entry.get('over_500ms', '—')} |"
        )
    return [*lines, ""]


def _memory(entry: dict[str, dict[str, float]]) -> str:
    rss = [v["rss_mb"] for v in entry.values()]
    own = [v["show_memory_mb"] for v in entry.values()]
    return f"{max(own):.1f} MB (RSS {max(rss):.1f} MB)" if rss else "—"


def _scale(scale: dict[str, Any]) -> list[str]:
    bgp, felix = scale["bgp_only"], scale["with_felix"]
    n = scale["per_host"]
    return [
        f"Routes at scale: {n:,} VMs on each of {scale['hosts']} hosts; every host ends with "
        f"{n * scale['hosts']:,} IPv4 routes ({n:,} its own, {2 * n:,} from BIRD). BGP alone: "
        f"TAP-like veths and `proto 80` routes added by one `ip -batch` per host. With Felix: "
        f"{n * scale['hosts']:,} endpoints written to etcd (one profile), each host's Felix "
        "programs its TAPs.",
        "",
        "| measure | BGP alone | with Felix |",
        "|---|---:|---:|",
        f"| writing the endpoints to etcd | — | {_s(felix.get('etcd_writes_s'))} |",
        f"| adding the routes (`ip -batch`) | {_s(bgp.get('routes_added_s'))} | — |",
        f"| every route on every host | {_s(bgp.get('all_everywhere_s'))} "
        f"| {_s(felix.get('all_everywhere_s'))} |",
        f"| one host's {n:,} routes deleted: gone from the others "
        f"| {_s(bgp.get('withdrawn_everywhere_s'))} | — |",
        f"| BIRD's memory before (`show memory`) | {_memory(bgp['bird_memory_before'])} | — |",
        f"| BIRD's memory after, largest host | {_memory(bgp['bird_memory_after'])} "
        f"| {_memory(felix['bird_memory_after'])} |",
        f"| BIRD's CPU while learning, largest host | {max(bgp['bird_cpu_s'].values()):.2f} s "
        "| — |",
        "",
    ]


def _cloud(cloud: dict[str, Any]) -> list[str]:
    added, join, fp = cloud["vm_added"], cloud["join"], cloud["footprint"]
    hosts = cloud["compute_hosts"]
    rss, cpu = fp["rss_mb_mean"], fp["idle_cpu_percent_each"]
    rrs = cloud["reflectors"]
    topology = (
        f"behind {rrs} route reflectors (BIRD and calico-bgp), no mesh"
        if rrs
        else ("in a full mesh (no reflector)")
    )
    lines = [
        f"A bigger cloud: {hosts} compute hosts (Felix, BIRD, calico-bgp; one probe VM and "
        f"{cloud['background']} extra `proto 80` routes each) {topology}; up "
        f"{cloud['start_s']} s after the daemons started. One VM added on one host, "
        f"{added['samples']} times"
        + (" (its proxy ARP on before the write)" if cloud.get("tap_sysctls_first") else "")
        + ":",
        "",
        "| measure | median | p99 | max | samples over 500 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("BIRD's route on every other host", "route_on_all"),
        (f"an echo reply at every other host ({hosts - 1} VMs pinging)", "reachable_from_all"),
        ("an echo reply at one other host (each host a sample)", "reachable_from_each"),
    ):
        entry = added[key]
        lines.append(
            f"| {label} | {_ms(entry)} | {_ms(entry, 'p99_ms')} | {_ms(entry, 'max_ms')} "
            f"| {entry.get('over_500ms', '—')} |"
        )
    lines += [
        "",
        f"A host joining ({join['routes']:,} IPv4 routes to learn): every BGP session up "
        f"{_s(join['sessions_s'])}, every route {_s(join['every_route_s'])}, Felix "
        f"programmed {_s(join['felix_programmed_s'])} after its daemons started.",
        "",
        "| per host | compute host | " + ("reflector |" if rrs else "another compute host |"),
        "|---|---:|---:|",
        f"| BGP sessions (IPv4 + IPv6) | {fp['sessions']['client']} "
        f"| {fp['sessions']['reflector']} |",
        f"| TCP connections to etcd | {fp['etcd_connections']['client']} "
        f"| {fp['etcd_connections']['reflector']} |",
        f"| BIRD RSS | {rss['bird (client)']:.1f} MB | {rss['bird (reflector)']:.1f} MB |",
        f"| calico-bgp RSS | {rss['calico-bgp']:.1f} MB | {rss['calico-bgp']:.1f} MB |",
        f"| calico-felix + driver RSS | {rss['calico-felix']:.1f} + "
        f"{rss['felix driver']:.1f} MB | — |",
        f"| idle CPU over {fp['idle_window_s']:.0f} s, BIRD / calico-bgp / Felix + driver "
        f"| {cpu['bird (client)']:.2f} / {cpu['calico-bgp']:.2f} / "
        f"{cpu['calico-felix'] + cpu['felix driver']:.2f} % "
        f"| {cpu['bird (reflector)']:.2f} / {cpu['calico-bgp']:.2f} / — % |",
        "",
    ]
    return lines
