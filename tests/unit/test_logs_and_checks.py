"""Logging targets and severities; the read-only host checks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from calico.common import logs
from calico.felix import startup_checks


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logs.configure(program="", screen=None, file_path=None, file_level=None, syslog_level=None)


def test_file_target_honours_its_severity_and_creates_the_directory(tmp_path: Path, capsys):
    path = tmp_path / "sub" / "felix.log"
    logs.configure(
        program="calico-felix",
        screen=None,
        file_path=str(path),
        file_level="WARNING",
        syslog_level=None,
    )
    log = logging.getLogger("calico.test")
    log.info("quiet info")
    log.warning("loud warning")
    text = path.read_text()
    assert "loud warning" in text and "[WARNING]" in text
    assert "quiet info" not in text
    assert capsys.readouterr().out == ""  # screen is off


def test_file_survives_logrotate_moving_it(tmp_path: Path):
    path = tmp_path / "felix.log"
    logs.configure(
        program="", screen=None, file_path=str(path), file_level="INFO", syslog_level=None
    )
    logging.getLogger("calico.test").info("before")
    path.rename(tmp_path / "felix.log.1")
    logging.getLogger("calico.test").info("after")
    assert "after" in path.read_text()
    assert "before" in (tmp_path / "felix.log.1").read_text()


def test_screen_target_and_none(tmp_path: Path, capsys):
    logs.configure(program="", screen="ERROR", file_path=None, file_level=None, syslog_level=None)
    logging.getLogger("calico.test").warning("not shown")
    logging.getLogger("calico.test").error("shown")
    out = capsys.readouterr().out
    assert "shown" in out and "not shown" not in out
    logs.configure(program="", screen=None, file_path=None, file_level=None, syslog_level=None)
    logging.getLogger("calico.test").critical("nothing anywhere")
    assert capsys.readouterr().out == ""


def test_unopenable_log_file_is_a_warning_not_a_crash(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    warnings = logs.configure(
        program="",
        screen=None,
        file_path=str(blocker / "felix.log"),
        file_level="INFO",
        syslog_level=None,
    )
    assert any("cannot open log file" in w for w in warnings)


def test_syslog_without_a_socket_is_a_warning(monkeypatch):
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", "/nonexistent/dev-log")
    warnings = logs.configure(
        program="x", screen=None, file_path=None, file_level=None, syslog_level="ERROR"
    )
    assert warnings == ["no syslog socket at /nonexistent/dev-log; syslog logging is off"]


def _reader(values: dict[str, int]):
    return values.get


def test_host_checks_pass_on_a_good_host():
    errors, warnings = startup_checks.check_host(
        False,
        which=lambda c: f"/usr/sbin/{c}",
        read_int=_reader(
            {startup_checks.CONNTRACK_MAX: 1_000_000, startup_checks.RP_FILTER_ALL: 1}
        ),
    )
    assert errors == [] and warnings == []


def test_missing_commands_are_errors():
    errors, _ = startup_checks.check_host(
        False, which=lambda c: None if c == "ipset" else "/x", read_int=_reader({})
    )
    assert errors == ["required command 'ipset' not found on PATH (install iptables and ipset)"]


def test_small_conntrack_table_is_a_warning_with_advice():
    _, warnings = startup_checks.check_host(
        False, which=lambda c: "/x", read_int=_reader({startup_checks.CONNTRACK_MAX: 65536})
    )
    (warning,) = warnings
    assert "65536" in warning and "sysctl -w net.netfilter.nf_conntrack_max=1000000" in warning


def test_loose_rpf_refuses_unless_ignored():
    read = _reader({startup_checks.RP_FILTER_ALL: 2})
    errors, _ = startup_checks.check_host(False, which=lambda c: "/x", read_int=read)
    assert len(errors) == 1 and "IgnoreLooseRPF" in errors[0]
    errors, _ = startup_checks.check_host(True, which=lambda c: "/x", read_int=read)
    assert errors == []
