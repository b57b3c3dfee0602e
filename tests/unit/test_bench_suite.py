"""The benchmark suite's rendering (bench/suite.py) on a recorded sample: no kernel, no etcd.

The sample (bench_sample.json) is one small real run of each benchmark, keyed by the results
file stem it would have in bench/results/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import suite  # noqa: E402 - bench/ is not a package; its directory is put on the path first

SAMPLE = Path(__file__).with_name("bench_sample.json")
HAND_WRITTEN = "# Benchmarks\n\nHand-written text that rendering must keep.\n"


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "results"
    directory.mkdir()
    for stem, value in json.loads(SAMPLE.read_text()).items():
        (directory / f"{stem}.json").write_text(json.dumps(value))
    return directory


def test_tables_and_plots_render_into_the_document(results_dir: Path, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(HAND_WRITTEN)
    img = tmp_path / "img"
    suite.render(results_dir, img, doc)
    text = doc.read_text()
    assert text.startswith(HAND_WRITTEN.rstrip())
    assert text.count(suite.BEGIN) == 1 and text.count(suite.END) == 1
    for heading in (
        "### Felix cold start against the kernel floor",
        "### Change latency at",
        "### Calculation graph alone",
        "### Datastore: snapshot of",
        "### Against Neutron's IptablesFirewallDriver",
        "### Idle cost at",
    ):
        assert heading in text
    assert "Command: `make bench" in text
    pngs = sorted(path.name for path in img.glob("*.png"))
    assert pngs == [
        "bench_change_latency.png",
        "bench_cold_start.png",
        "bench_datastore.png",
        "bench_peer.png",
    ]
    for name in pngs:
        assert (img / name).read_bytes().startswith(b"\x89PNG")
        assert f"(img/{name})" in text


def test_render_again_replaces_only_the_generated_section(results_dir: Path) -> None:
    # Tables only (plots are covered above): splice a section in, then splice it again.
    section = suite.render_markdown(suite.load_results(results_dir), ["bench_peer"])
    first = suite.splice(HAND_WRITTEN, section)
    second = suite.splice(first + "\n## Written after the section\n", section)
    assert second.count(suite.BEGIN) == 1
    assert second.endswith("## Written after the section\n")
    assert second.replace("\n## Written after the section\n", "") == first


def test_stale_results_outside_the_run_plan_are_ignored(results_dir: Path) -> None:
    (results_dir / "dataplane-99999.json").write_text("{}")  # not in the sample's plan
    assert "dataplane-99999" not in suite.load_results(results_dir)


def scale_point(endpoints: int, start_s: float, change_ms: float) -> dict[str, object]:
    return {
        "endpoints": endpoints,
        "ipset_members": endpoints * 3,
        "start_to_programmed_s": start_s,
        "rss_mb_steady": {"felix": 50.0, "driver": 40.0},
        "remote_change": {"median_ms": change_ms, "p99_ms": change_ms * 2, "cpu_ms_per_change": 4},
    }


def test_scale_curve_table_says_how_each_measure_grew(tmp_path: Path) -> None:
    import scale_report

    result = {
        "local_endpoints": 100,
        "hosts": 1000,
        # Out of order on purpose: the table sorts by size.
        "points": [scale_point(100_000, 20.0, 30.0), scale_point(10_000, 2.0, 30.0)],
    }
    text = "\n".join(scale_report.tables(result))
    assert "| endpoints in the cloud | 10,000 | 100,000 | growth |" in text
    assert "| start to programmed (s) | 2.0 | 20.0 | 1.0 |" in text  # linear
    assert "| one remote change, median (ms) | 30.0 | 30.0 | 0.1 |" in text  # flat
    assert "| IP set members on this host | 30,000 | 300,000 | |" in text
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert scale_report.plot(result, plt, tmp_path) == "bench_scale_curve"
    assert (tmp_path / "bench_scale_curve.png").read_bytes().startswith(b"\x89PNG")


def test_neutron_server_tables() -> None:
    import neutron_report

    timing = {"median_ms": 100.0, "p90_ms": 120.0}
    api = {
        "calls": 50,
        "neutron_alone": {"port_create": timing, "sg_rule_create": timing},
        "with_calico": {
            "port_create": {"median_ms": 160.0, "p90_ms": 170.0},
            "sg_rule_create": {"median_ms": 90.0, "p90_ms": 95.0},
        },
        "port_create_added_ms": 60.0,
        "sg_rule_create_added_ms": -10.0,
    }
    text = "\n".join(neutron_report.api_table(api))
    assert "| port create | 100 ms (120) | 160 ms (170) | +60 ms |" in text
    assert "| security-group rule create | 100 ms (120) | 90 ms (95) | -10 ms |" in text
    one = {"wall_s": 2.5, "cpu_s": 2.0, "etcd_requests": {"create": 12000}, "objects_written": 12}
    none = {"wall_s": 0.5, "cpu_s": 0.4, "etcd_requests": {"get": 4}, "objects_written": 0}
    resync = {
        "ports": 10000,
        "security_groups": 1000,
        "v2": {"first": one, "nothing_to_change": none},
    }
    text = "\n".join(neutron_report.resync_table(resync))
    assert "10,000 ports, 1,000 security groups" in text
    assert "| v2 | first (writes all) | 2.50 s | 2.00 s | 12,000 create | 12 |" in text
    assert "| v2 | nothing to change | 0.50 s | 0.40 s | 4 get | 0 |" in text
