"""The generated tables of the nftables backend (issue 17), beside the iptables backend's runs
of the same suite: cold start against each backend's own floor, change latency, the Neutron
peer. Read by bench/suite.py's render; results stems ``nft-dataplane-<N>`` and
``nft-neutron_peer`` (bench/dataplane.py and bench/neutron_peer.py with ``--backend
nftables``)."""

from __future__ import annotations

from typing import Any


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _verdict(met: bool) -> str:
    return "met" if met else "**miss**"


def _runs(results: dict[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    return {
        int(value["scale"]["local_endpoints"]): value
        for stem, value in results.items()
        if stem.startswith(prefix)
    }


def cold_start(results: dict[str, Any], targets: dict[str, float]) -> list[str]:
    nft = _runs(results, "nft-dataplane-")
    ipt = _runs(results, "dataplane-")
    if not nft:
        return []
    lines = [
        "### nftables backend (NFTablesMode=Enabled): cold start, both backends",
        "",
        "Same data set and lab as above; the nftables floor is `nft -f` of exactly the table "
        "Felix programmed (`nft list table inet felix`), into a fresh namespace. Targets at "
        f"1,000 and 3,000: ≥ {targets['nft_over_iptables_cold']:.0f}x faster than the iptables "
        f"backend, ≤ {targets['nft_cold_over_floor']}x its own floor.",
        "",
        "| local endpoints | rules / chains / set elements | nftables cold start | `nft -f` floor "
        "| cold / floor | iptables cold start | iptables / nftables | peak RSS felix + driver "
        "| target |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, run in sorted(nft.items()):
        scale = run["scale"]
        floor = float(run["floor"]["nft -f"]["total_s"])
        cold = float(run["cold_start_s"])
        other = ipt.get(n)
        speedup = float(other["cold_start_s"]) / cold if other else None
        rss = run.get("peak_rss_mb_after_start", {})
        target = ""
        if n in (1000, 3000):
            met = cold / floor <= targets["nft_cold_over_floor"]
            met = met and speedup is not None and speedup >= targets["nft_over_iptables_cold"]
            target = _verdict(met)
        lines.append(
            f"| {n:,} | {scale.get('rules', 0):,} / {scale.get('chains', 0):,} / "
            f"{scale.get('set_elements', 0):,} | {_ms(cold)} | {_ms(floor)} | {cold / floor:.1f}x "
            f"| {_ms(float(other['cold_start_s'])) if other else '—'} "
            f"| {f'{speedup:.1f}x' if speedup else '—'} | {rss.get('felix', 0):.0f} + "
            f"{rss.get('driver', 0):.0f} MB | {target} |"
        )
    return [*lines, ""]


def changes(results: dict[str, Any], targets: dict[str, float]) -> list[str]:
    nft = _runs(results, "nft-dataplane-")
    ipt = _runs(results, "dataplane-")
    run = nft.get(1000) or (nft[max(nft)] if nft else None)
    if run is None:
        return []
    n = int(run["scale"]["local_endpoints"])
    other = ipt.get(n, {}).get("change_latency", {})
    limit = targets["nft_change_median_ms"]
    lines = [
        f"### nftables backend: change latency at {n:,} local endpoints",
        "",
        "etcd write → the nf_tables commit that made the change visible (a watcher in the lab "
        "namespace reads the generation every millisecond; a listing confirms the change; "
        "bench/nft_kernel.py). The incremental floor is one `nft -f -` rewriting just the "
        f"changed chains (a process start included). Target: median < {limit:.0f} ms.",
        "",
        "| change | count | median | p99 | incremental floor (`nft -f -`) | iptables median "
        "| target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind, entry in run["change_latency"].items():
        median = float(entry["median_ms"])
        floor = entry.get("incremental_floor_ms")
        timeouts = int(entry.get("timeouts", 0))
        count = f"{entry['changes']} ({timeouts} timed out)" if timeouts else entry["changes"]
        ipt_median = other.get(kind, {}).get("median_ms")
        lines.append(
            f"| {kind} | {count} | {median:.1f} ms | {float(entry['p99_ms']):.1f} ms "
            f"| {f'{float(floor):.1f} ms' if floor else '—'} "
            f"| {f'{float(ipt_median):.1f} ms' if ipt_median else '—'} "
            f"| {_verdict(median < limit)} |"
        )
    return [*lines, ""]


def peer(results: dict[str, Any], targets: dict[str, float]) -> list[str]:
    run = results.get("nft-neutron_peer")
    if run is None:
        return []
    neutron, felix = run["neutron"], run["felix"]
    n = run["ports"]
    batch = float(neutron["batch_s"]) / float(felix["batch_s"])
    lines = [
        f"### nftables backend against Neutron's IptablesFirewallDriver ({n} ports)",
        "",
        "As the iptables table above, with calico-felix in NFTablesMode=Enabled. Of Felix's "
        f"burst, writing the {n} keys to etcd (8 writer processes, v2) took "
        f"{_ms(float(felix.get('batch_etcd_write_s', 0)))}. Target: the burst "
        f"≥ {targets['nft_peer_batch']:.0f}x faster than Neutron's.",
        "",
        "| operation | Neutron | calico-felix (nftables) | Neutron / Felix | target |",
        "|---|---:|---:|---:|---|",
        f"| batch (burst) of {n} ports | {_ms(float(neutron['batch_s']))} "
        f"| {_ms(float(felix['batch_s']))} | {batch:.1f}x "
        f"| {_verdict(batch >= targets['nft_peer_batch'])} |",
    ]
    for label, key in (("add 1 port", "add_one_s"), ("remove 1 port", "remove_one_s")):
        ratio = float(neutron[key]) / float(felix[key])
        lines.append(
            f"| {label} with {n} present | {_ms(float(neutron[key]))} "
            f"| {_ms(float(felix[key]))} | {ratio:.1f}x | |"
        )
    return [*lines, ""]


def render(results: dict[str, Any], targets: dict[str, float]) -> list[str]:
    return [*cold_start(results, targets), *changes(results, targets), *peer(results, targets)]
