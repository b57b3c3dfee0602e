"""The tables and the plot of bench/scale_curve.py's results (for bench/suite.py render)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def growth(points: list[dict[str, Any]], value: Any) -> float | None:
    """How much `value` grew from the smallest to the largest cloud, per endpoint: 1.0 is
    linear, below 1 better than linear."""
    if len(points) < 2:
        return None
    first, last = points[0], points[-1]
    size_ratio = last["endpoints"] / first["endpoints"]
    start, end = value(first), value(last)
    return round((end / start) / size_ratio, 2) if start else None


def _cpu_per_change(point: dict[str, Any]) -> float:
    return float(point["remote_change"]["cpu_ms_per_change"])


def measures() -> list[tuple[str, Any]]:
    return [
        ("start to programmed (s)", lambda p: p["start_to_programmed_s"]),
        ("RSS, Felix (MB)", lambda p: p["rss_mb_steady"].get("felix", 0.0)),
        ("RSS, driver (MB)", lambda p: p["rss_mb_steady"].get("driver", 0.0)),
        ("one remote change, median (ms)", lambda p: p["remote_change"]["median_ms"]),
        ("one remote change, p99 (ms)", lambda p: p["remote_change"]["p99_ms"]),
        ("CPU per remote change, Felix + driver (ms)", _cpu_per_change),
    ]


def tables(result: dict[str, Any]) -> list[str]:
    points = sorted(result["points"], key=lambda p: p["endpoints"])
    if not points:
        return []
    head = " | ".join(f"{p['endpoints']:,}" for p in points)
    lines = [
        "### The scale curve of a big cloud (one host, 100 local endpoints)",
        "",
        f"calico-felix with {result['local_endpoints']} local endpoints while the cloud grows "
        f"({result['hosts']:,} hosts; profiles, tags and selectors as the calc-graph benchmark). "
        "Growth: the change from the smallest to the largest cloud divided by the change in "
        "endpoints (1.0 = linear, below = better than linear).",
        "",
        f"| endpoints in the cloud | {head} | growth |",
        "|---|" + "---:|" * len(points) + "---:|",
        "| IP set members on this host | "
        + " | ".join(f"{p['ipset_members']:,}" for p in points)
        + " | |",
    ]
    for label, value in measures():
        cells = " | ".join(f"{value(p):,.1f}" for p in points)
        rate = growth(points, value)
        lines.append(f"| {label} | {cells} | {rate if rate is not None else ''} |")
    lines.append("")
    return lines


def plot(result: dict[str, Any], plt: Any, out_dir: Path) -> str | None:
    points = sorted(result["points"], key=lambda p: p["endpoints"])
    if not points:
        return None
    n = [p["endpoints"] for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].plot(n, [p["start_to_programmed_s"] for p in points], "o-")
    axes[0].set_title("start to programmed (s)")
    axes[1].plot(n, [p["rss_mb_steady"].get("felix", 0) for p in points], "o-", label="Felix")
    axes[1].plot(n, [p["rss_mb_steady"].get("driver", 0) for p in points], "s-", label="driver")
    axes[1].set_title("steady-state RSS (MB)")
    axes[1].legend(fontsize=8)
    axes[2].plot(n, [p["remote_change"]["median_ms"] for p in points], "o-", label="median")
    axes[2].plot(n, [p["remote_change"]["p99_ms"] for p in points], "^--", label="p99")
    axes[2].set_title("one remote change (ms)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("endpoints in the cloud")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "bench_scale_curve.png", dpi=100)
    plt.close(fig)
    return "bench_scale_curve"
