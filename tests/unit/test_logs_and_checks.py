"""Logging targets and severities; the read-only host checks."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest

from calico.common import logs
from calico.felix import startup_checks


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logs.configure(program="", screen=None, file_path=None, file_level=None, syslog_level=None)
    # configure() with every target off silences the root logger; later tests' caplog needs
    # Python's default back.
    logging.getLogger().setLevel(logging.WARNING)


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


# -- Added for issue 5: every target at once, syslog for real, the early screen ----------------


def test_each_target_has_its_own_severity(tmp_path: Path, monkeypatch, capsys):
    syslog = _SyslogSink(tmp_path / "dev-log")
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(syslog.path))
    path = tmp_path / "felix.log"
    warnings = logs.configure(
        program="calico-felix",
        screen="WARNING",
        file_path=str(path),
        file_level="DEBUG",
        syslog_level="ERROR",
    )
    assert warnings == []
    log = logging.getLogger("calico.test")
    log.debug("d-msg")
    log.warning("w-msg")
    log.error("e-msg")
    file_text = path.read_text()
    assert all(m in file_text for m in ("d-msg", "w-msg", "e-msg"))
    out = capsys.readouterr().out
    assert "w-msg" in out and "e-msg" in out and "d-msg" not in out
    [datagram] = syslog.receive()
    # <facility/priority>program[pid]: module@line message
    assert re.fullmatch(r"<\d+>calico-felix\[\d+\]: test_logs_and_checks@\d+ e-msg\x00?", datagram)
    syslog.close()


def test_none_disables_file_and_syslog(tmp_path: Path, monkeypatch):
    syslog = _SyslogSink(tmp_path / "dev-log")
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(syslog.path))
    path = tmp_path / "felix.log"
    # LogSeverityFile=none and LogSeveritySys=none (the parameter type maps none to None).
    logs.configure(
        program="x", screen=None, file_path=str(path), file_level=None, syslog_level=None
    )
    logging.getLogger("calico.test").critical("nowhere")
    assert not path.exists()
    assert syslog.receive(timeout=0.2) == []
    # LogFilePath=none: no file even with a severity.
    logs.configure(program="x", screen=None, file_path=None, file_level="DEBUG", syslog_level=None)
    logging.getLogger("calico.test").critical("still nowhere")
    assert list(tmp_path.iterdir()) == [syslog.path]
    syslog.close()


def test_logrotate_rename_then_new_lines_go_to_a_new_file(tmp_path: Path):
    path = tmp_path / "felix.log"
    logs.configure(
        program="", screen=None, file_path=str(path), file_level="INFO", syslog_level=None
    )
    log = logging.getLogger("calico.test")
    log.info("first")
    path.rename(tmp_path / "felix.log.1")
    assert not path.exists()
    log.info("second")
    log.info("third")
    assert "first" not in path.read_text()
    assert "second" in path.read_text() and "third" in path.read_text()
    assert "second" not in (tmp_path / "felix.log.1").read_text()


def test_early_messages_go_to_the_screen_before_config_is_known(capsys):
    logs.configure_early({}, "FELIX_LOGSEVERITYSCREEN")
    logging.getLogger("calico.test").info("early info")
    logging.getLogger("calico.test").error("early error")
    out = capsys.readouterr().out
    assert "early error" in out and "early info" not in out  # ERROR until configured
    logs.configure_early({"FELIX_LOGSEVERITYSCREEN": "info"}, "FELIX_LOGSEVERITYSCREEN")
    logging.getLogger("calico.test").info("early info 2")
    assert "early info 2" in capsys.readouterr().out
    logs.configure_early({"FELIX_LOGSEVERITYSCREEN": "None"}, "FELIX_LOGSEVERITYSCREEN")
    logging.getLogger("calico.test").critical("silenced")
    assert capsys.readouterr().out == ""


class _SyslogSink:
    """A Unix datagram socket standing in for /dev/log."""

    def __init__(self, path: Path):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))

    def receive(self, timeout: float = 5.0) -> list[str]:
        self._sock.settimeout(timeout)
        got = []
        try:
            while True:
                got.append(self._sock.recv(65536).decode())
                self._sock.settimeout(0.2)
        except TimeoutError:
            return got

    def close(self) -> None:
        self._sock.close()
