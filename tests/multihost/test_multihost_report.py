"""The many-hosts benchmark's tables (bench/multihost_report.py, wired into bench/suite.py's
render) on a recorded quick run of bench/multihost.py: no kernel, no etcd."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import multihost_report  # noqa: E402 - bench/ is not a package; its directory is put on the path
import suite  # noqa: E402

SAMPLE = json.loads(Path(__file__).with_name("multihost_sample.json").read_text())


def test_every_part_has_its_table() -> None:
    text = "\n".join(multihost_report.tables(SAMPLE))
    assert text.startswith("### Many hosts")
    assert "--quick" in text and "Load average (1/5/15 min) before" in text
    for row in (
        "| first echo reply at B's VM (reachable) |",
        "| B's route after A's (BIRD learning + BGP + install) |",
        "| every route on every host |",
        "| BIRD's memory after, largest host |",
        "| an echo reply at every other host (3 VMs pinging) |",
        "| BGP sessions (IPv4 + IPv6) | 4 | 10 |",
    ):
        assert row in text
    assert "A host joining (89 IPv4 routes to learn)" in text
    widths = {line.count("|") for line in text.splitlines() if line.startswith("| measure")}
    assert widths == {7, 4, 6}  # convergence, scale, cloud


def test_parts_that_did_not_run_are_left_out() -> None:
    only = {k: v for k, v in SAMPLE.items() if k not in ("scale", "cloud")}
    text = "\n".join(multihost_report.tables(only))
    assert "Cross-host convergence" in text and "Routes at scale" not in text


def test_the_suite_plans_it_and_renders_it() -> None:
    assert ("multihost", "multihost.py", []) in suite.FULL
    assert ("multihost", "multihost.py", ["--quick"]) in suite.QUICK
    section = suite.render_markdown({"multihost": SAMPLE}, [])
    assert "### Many hosts: BGP with BIRD" in section
