"""Usage reporting (felix.md §6.3): the request, the reply's warnings, the schedule, and that
a dead or hanging server costs nothing but a log line. A fake server on loopback stands in
for the real one (no internet here)."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from calico.felix import usage
from calico.felix.calc.graph import CalcGraph
from calico.felix.config.loader import ConfigErrors, resolve
from calico.felix.config.params import BY_NAME
from calico.lab.usage_server import PATH, FakeUsageServer

UPSTREAM_URL = "https://usage.projectcalico.org/UsageCheck/calicoVersionCheck"


def settings(url: str, **overrides: object) -> usage.UsageSettings:
    values: dict[str, object] = {
        "url": url,
        "version": "9.8.7",
        "cluster_guid": "c0ffee",
        "cluster_type": "openstack,test",
        "initial_delay": 0.0,
        "interval": 3600.0,
    }
    values.update(overrides)
    return usage.UsageSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FakeUsageServer]:
    with FakeUsageServer() as fake:
        yield fake


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port that completes TCP connections (the kernel's backlog) but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- Parameters ---------------------------------------------------------------------------------


def test_parameters_and_their_defaults():
    config = resolve({}, {})
    assert config["UsageReportingEnabled"] is True
    assert config["UsageReportingURL"] == UPSTREAM_URL
    assert config["UsageReportingInitialDelaySecs"] == 300.0
    assert config["UsageReportingIntervalSecs"] == 86400.0
    assert config["ClusterGUID"] == "baddecaf"
    assert config["ClusterType"] == ""
    s = usage.UsageSettings.from_config(config, "1.2.3")
    assert s == usage.UsageSettings(UPSTREAM_URL, "1.2.3", "baddecaf", "", 300.0, 86400.0)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "usage.example.com", "http://"]
)
def test_only_http_and_https_urls_are_accepted(url: str):
    with pytest.raises(ConfigErrors) as e:
        resolve({"UsageReportingURL": url}, {})
    assert "UsageReportingURL" in str(e.value.problems[0])
    assert BY_NAME["UsageReportingURL"].type.parse("http://[::1]:8080/x?a=b") == (
        "http://[::1]:8080/x?a=b"
    )


def test_interval_must_be_at_least_a_second():
    with pytest.raises(ConfigErrors):
        resolve({"UsageReportingIntervalSecs": "0"}, {})


# -- The request and the reply ------------------------------------------------------------------


def test_report_url_carries_the_four_parameters():
    url = usage.report_url(settings(UPSTREAM_URL), 42)
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == UPSTREAM_URL
    assert urllib.parse.parse_qs(parts.query) == {
        "version": ["9.8.7"],
        "guid": ["c0ffee"],
        "type": ["openstack,test"],
        "size": ["42"],
    }


def test_empty_cluster_type_is_reported_as_unknown_and_a_base_query_is_kept():
    url = usage.report_url(settings("http://h/check?token=abc", cluster_type=""), 0)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["type"] == ["unknown"]
    assert query["token"] == ["abc"]
    assert query["size"] == ["0"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"usage_warning": "Upgrade now: CVE-1"}', ["Upgrade now: CVE-1"]),
        (b'{"warnings": ["a", " ", "b"], "other": "x"}', ["a", "b"]),
        (b'{"usage_warning": ""}', []),
        (b'{"usage_warning": 7}', []),
        (b'{"latest": "3.0"}', []),
        (b"[1, 2]", []),
        (b"<html>oops</html>", []),
        (b"\xff\xfe", []),
        (b"[" * 100_000, []),  # deeper than json can recurse
    ],
)
def test_warnings_in_reply(body: bytes, expected: list[str]):
    assert usage.warnings_in_reply(body) == expected


def test_report_reaches_the_server_and_its_warning_is_logged(
    server: FakeUsageServer, caplog: pytest.LogCaptureFixture
):
    server.reply = {"usage_warning": "Calico 9.8.7 has a security vulnerability; upgrade"}
    caplog.set_level(logging.INFO, logger="calico.felix.usage")
    assert usage.send_report(settings(server.url()), 5)
    [request] = server.wait_for(1)
    assert request.path == PATH
    assert request.param("version") == "9.8.7"
    assert request.param("guid") == "c0ffee"
    assert request.param("type") == "openstack,test"
    assert request.param("size") == "5"
    assert set(request.query) == {"version", "guid", "type", "size"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "Usage server warning: Calico 9.8.7 has a security vulnerability; upgrade"
    ]


def test_a_reply_without_warnings_logs_no_warning(
    server: FakeUsageServer, caplog: pytest.LogCaptureFixture
):
    server.reply = {"latest_version": "9.9.9"}
    caplog.set_level(logging.INFO, logger="calico.felix.usage")
    assert usage.send_report(settings(server.url()), 1)
    assert any("Sending usage report" in r.getMessage() for r in caplog.records)  # captured
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unreachable_server_is_an_info_line_not_an_error(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="calico.felix.usage")
    started = time.monotonic()
    assert not usage.send_report(settings(f"http://127.0.0.1:{closed_port()}{PATH}"), 1)
    assert time.monotonic() - started < 5
    failures = [r for r in caplog.records if "Usage report failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_hanging_server_times_out(hanging_port: int, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="calico.felix.usage")
    started = time.monotonic()
    url = f"http://127.0.0.1:{hanging_port}{PATH}"
    assert not usage.send_report(settings(url), 1, timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 5
    assert any("timed out" in r.getMessage() for r in caplog.records)


def test_an_http_error_status_is_a_failed_report(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="calico.felix.usage")
    with socket.socket() as s:  # a one-shot server that answers 500
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]

        def answer() -> None:
            conn, _ = s.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 500 Oops\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        assert not usage.send_report(settings(f"http://127.0.0.1:{port}{PATH}"), 1)
        thread.join(5)
    assert any("HTTP Error 500" in r.getMessage() for r in caplog.records)


# -- The schedule -------------------------------------------------------------------------------


def test_delays_have_bounded_jitter():
    reporter = usage.UsageReporter(
        settings("http://x/", initial_delay=300.0, interval=86400.0), lambda: 0, random.Random(1)
    )
    firsts = [reporter.first_delay() for _ in range(500)]
    nexts = [reporter.next_delay() for _ in range(500)]
    assert all(300.0 <= d <= 330.0 for d in firsts)
    assert all(0.9 * 86400 <= d <= 1.1 * 86400 for d in nexts)
    # Really jittered: spread over most of the range, both sides of the interval.
    assert max(firsts) - min(firsts) > 20
    assert min(nexts) < 0.92 * 86400 and max(nexts) > 1.08 * 86400


def test_reporter_sends_first_report_then_repeats_with_the_current_size(
    server: FakeUsageServer,
):
    sizes = iter(range(1, 100))
    reporter = usage.UsageReporter(
        settings(server.url(), initial_delay=0.0, interval=0.2), lambda: next(sizes)
    )
    reporter.start()
    try:
        requests = server.wait_for(3, timeout=30)
    finally:
        reporter.stop(timeout=10)
    assert [r.param("size") for r in requests[:3]] == ["1", "2", "3"]
    count = len(server.requests)
    time.sleep(0.6)  # stopped: no more reports
    assert len(server.requests) == count


def test_first_report_waits_for_the_initial_delay(server: FakeUsageServer):
    reporter = usage.UsageReporter(
        settings(server.url(), initial_delay=3600.0, interval=3600.0), lambda: 1
    ).start()
    time.sleep(0.5)
    reporter.stop(timeout=5)
    assert server.requests == []


def test_a_failing_size_callback_does_not_end_reporting(
    server: FakeUsageServer, caplog: pytest.LogCaptureFixture
):
    calls = []

    def size() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return 4

    caplog.set_level(logging.INFO, logger="calico.felix.usage")
    reporter = usage.UsageReporter(
        settings(server.url(), initial_delay=0.0, interval=0.2), size
    ).start()
    try:
        [request, *_] = server.wait_for(1, timeout=30)
    finally:
        reporter.stop(timeout=10)
    assert request.param("size") == "4"
    assert any("Usage report failed unexpectedly" in r.getMessage() for r in caplog.records)


def test_start_if_enabled_honours_the_switch(server: FakeUsageServer):
    off = resolve({"UsageReportingEnabled": "false", "UsageReportingURL": server.url()}, {})
    assert usage.start_if_enabled(off, "1.0", lambda: 1) is None
    on = resolve(
        {
            "UsageReportingURL": server.url(),
            "UsageReportingInitialDelaySecs": "0",
            "ClusterGUID": "feed",
            "ClusterType": "k",
        },
        {},
    )
    reporter = usage.start_if_enabled(on, "1.0", lambda: 2)
    assert reporter is not None
    try:
        [request, *_] = server.wait_for(1)
    finally:
        reporter.stop(timeout=10)
    assert (request.param("guid"), request.param("type"), request.param("size")) == (
        "feed",
        "k",
        "2",
    )
    time.sleep(0.3)
    assert len(server.requests) == 1  # a day until the next one


# -- Cluster size: distinct hosts the calc graph has seen ---------------------------------------


def _wep(name: str) -> str:
    return json.dumps(
        {"state": "active", "name": name, "mac": "02:00:00:00:00:01", "profile_ids": []}
    )


def test_num_hosts_counts_distinct_hosts_with_endpoints_or_a_bird_ip():
    graph = CalcGraph("h1", ("tap",))
    assert graph.num_hosts() == 0

    def wep(host: str, ep: str) -> str:
        return f"/calico/v1/host/{host}/workload/openstack/w/endpoint/{ep}"

    graph.on_update(wep("h1", "e1"), _wep("tap1"))
    graph.on_update(wep("h2", "e1"), _wep("tap1"))
    graph.on_update(wep("h2", "e2"), _wep("tap2"))
    graph.on_update("/calico/v1/host/h2/bird_ip", "198.18.0.2")
    graph.on_update("/calico/v1/host/h3/bird_ip", "198.18.0.3")
    graph.on_update("/calico/v1/host/h4/endpoint/eth0", json.dumps({"name": "eth0"}))
    graph.on_update("/calico/v1/host/h5/config/LogSeverityFile", "INFO")  # config only
    assert graph.num_hosts() == 4

    graph.on_update(wep("h2", "e1"), None)
    assert graph.num_hosts() == 4  # h2 still has e2 and a bird_ip
    graph.on_update(wep("h2", "e2"), None)
    graph.on_update("/calico/v1/host/h2/bird_ip", None)
    graph.on_update("/calico/v1/host/h3/bird_ip", "not-an-ip")  # invalid = deleted
    assert graph.num_hosts() == 2
    graph.flush()  # the graph's own bookkeeping is unaffected by the count
    assert graph.num_hosts() == 2
