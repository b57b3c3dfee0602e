"""Tables of the Neutron-server benchmarks (bench/neutron_api.py, bench/neutron_resync.py)
for bench/suite.py render."""

from __future__ import annotations

from typing import Any


def api_table(api: dict[str, Any]) -> list[str]:
    rows = [
        ("port create", "port_create"),
        ("security-group rule create", "sg_rule_create"),
    ]
    lines = [
        "### The Neutron server: what the calico driver adds to an API call",
        "",
        f"The real Neutron API, {api['calls']} calls of each kind one at a time, as ML2 with no "
        "mechanism driver and with `core_plugin = calico` (bench/neutron_api.py).",
        "",
        "| call | Neutron alone, median (p90) | with calico, median (p90) | added by the driver |",
        "|---|---:|---:|---:|",
    ]
    for label, key in rows:
        alone, calico = api["neutron_alone"][key], api["with_calico"][key]
        lines.append(
            f"| {label} | {alone['median_ms']:.0f} ms ({alone['p90_ms']:.0f}) "
            f"| {calico['median_ms']:.0f} ms ({calico['p90_ms']:.0f}) "
            f"| {api[f'{key}_added_ms']:+.0f} ms |"
        )
    lines.append("")
    return lines


def resync_table(resync: dict[str, Any]) -> list[str]:
    lines = [
        f"### The Neutron driver's resync: {resync['ports']:,} ports, "
        f"{resync['security_groups']:,} security groups",
        "",
        "One pass of calico.openstack.resync against a private etcd (Neutron's DB queries not "
        "included: bench/neutron_resync.py).",
        "",
        "| etcd API | pass | wall | CPU | etcd requests | objects written |",
        "|---|---|---:|---:|---|---:|",
    ]
    for api in ("v2", "v3"):
        if api not in resync:
            continue
        for label, key in (
            ("first (writes all)", "first"),
            ("nothing to change", "nothing_to_change"),
        ):
            one = resync[api][key]
            requests = ", ".join(f"{n:,} {kind}" for kind, n in one["etcd_requests"].items())
            lines.append(
                f"| {api} | {label} | {one['wall_s']:.2f} s | {one['cpu_s']:.2f} s "
                f"| {requests} | {one['objects_written']:,} |"
            )
    lines.append("")
    return lines
