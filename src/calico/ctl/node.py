"""`calicoctl node status`: one host's Felix, from the status keys it writes under
/calico/felix/v1 (felix.md §2.8, §6.1), and its BGP sessions, from `calico-bgp status` (which
asks BIRD) when that program is installed and BIRD answers on this host.

`alive` means the TTL'd status key exists: Felix wrote it less than ReportingTTLSecs ago.
`last_reported_status` has no TTL and says when Felix was last seen, even after it stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common.etcd.base import KVStore
from calico.ctl import output
from calico.ctl.store import etcd_call
from calico.ctl.workload_endpoints import read_statuses

BGP_PROGRAM = "calico-bgp"
BGP_TIMEOUT = 10.0


@dataclass(frozen=True)
class BgpStatus:
    running: bool
    text: str  # calico-bgp's table, or why BGP is not running


def _decode(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"unreadable": raw}
    return value if isinstance(value, dict) else {"unreadable": raw}


def _age(when: object, now: datetime) -> str | None:
    if not isinstance(when, str):
        return None
    try:
        then = datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return _duration((now - then).total_seconds()) + " ago"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d"] if days else []
    return " ".join([*parts, f"{hours}h", f"{minutes}m", f"{secs}s"])


def felix_status(client: KVStore, host: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    alive_raw = etcd_call("reading Felix's status", client.get, dm.FelixStatusKey(host).path)
    last_raw = etcd_call("reading Felix's status", client.get, dm.FelixLastStatusKey(host).path)
    last = _decode(last_raw) or _decode(alive_raw)
    counts: dict[str, int] = {}
    for key, reported in read_statuses(client, host).items():
        if isinstance(key, dm.WorkloadEndpointStatusKey | dm.HostEndpointStatusKey):
            counts[reported] = counts.get(reported, 0) + 1
    out: dict[str, Any] = {"host": host, "alive": alive_raw is not None}
    if last is not None:
        out["last_report"] = last.get("time")
        out["last_report_age"] = _age(last.get("time"), now)
        out["uptime"] = last.get("uptime")
    out["endpoints"] = dict(sorted(counts.items()))
    return out


def bgp_status(bird_socket: str | None) -> BgpStatus:
    """calico-bgp's answer for this host's BIRD; why BGP is not running otherwise."""
    program = shutil.which(BGP_PROGRAM) or str(Path(sys.executable).with_name(BGP_PROGRAM))
    if not Path(program).exists():
        return BgpStatus(False, f"BGP is not running ({BGP_PROGRAM} is not installed)")
    argv = [program, "status"] + (["--bird-socket", bird_socket] if bird_socket else [])
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=BGP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return BgpStatus(False, f"BGP is not running ({BGP_PROGRAM} status failed: {e})")
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no answer"
        return BgpStatus(False, f"BGP is not running ({why})")
    return BgpStatus(True, proc.stdout)


def status(
    client: KVStore, host: str, local_host: str, fmt: str, bird_socket: str | None = None
) -> str:
    felix = felix_status(client, host)
    bgp = (
        bgp_status(bird_socket)
        if host == local_host
        else BgpStatus(False, f"BGP state is only known on {host} itself (run it there)")
    )
    if fmt in ("json", "yaml"):
        data = {"felix": felix, "bgp": {"running": bgp.running, "status": bgp.text}}
        return output.dump([data], fmt)
    counts = felix["endpoints"]
    endpoints = ", ".join(f"{n} {s}" for s, n in counts.items()) if counts else "none reported"
    uptime = felix.get("uptime")
    pairs: list[tuple[str, object]] = [
        ("host", host),
        ("alive", "yes" if felix["alive"] else "no (no live status key: Felix is not reporting)"),
        (
            "last report",
            f"{felix.get('last_report')} ({felix.get('last_report_age')})"
            if felix.get("last_report")
            else "never",
        ),
        ("uptime", _duration(uptime) if isinstance(uptime, int | float) else None),
        ("endpoints", endpoints),
    ]
    text = "Felix\n" + _indent(output.key_values(pairs))
    return text + "\nBGP\n" + _indent(bgp.text)


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())
