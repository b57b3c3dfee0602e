"""What an operator installs: the systemd unit, the logrotate config (run for real against a
log Felix is writing), the generated example felix.cfg and the Makefile target that
regenerates it."""

from __future__ import annotations

import configparser
import logging
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from calico.common import logs
from calico.felix.config import docs
from calico.felix.config.params import PARAMS

ROOT = docs.REPO_ROOT
UNIT = ROOT / "packaging/systemd/calico-felix.service"
LOGROTATE = ROOT / "packaging/logrotate/calico-felix"
INSTALLED_FELIX = "/usr/local/bin/calico-felix"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_restarts_felix_always_after_a_pause_once_the_network_is_up():
    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "5s"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"  # never give up restarting
    assert "network-online.target" in unit["Unit"]["After"].split()
    assert "network-online.target" in unit["Unit"]["Wants"].split()
    assert service["KillMode"] == "control-group"  # the dataplane driver goes with Felix
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    exec_start = service["ExecStart"].split()
    assert exec_start[0] == INSTALLED_FELIX
    assert exec_start[1:] == ["--config-file", "/etc/calico/felix.cfg"]


def test_unit_runs_the_console_script_the_package_installs():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["calico-felix"] == "calico.felix.cli:main"
    assert Path(INSTALLED_FELIX).name in scripts


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        # No systemd here: the key-by-key test above is the check.
        _unit()
        return
    # verify checks that ExecStart exists: point it at this checkout's console script.
    felix = Path(sys.executable).with_name("calico-felix")
    assert felix.exists()
    unit = tmp_path / "calico-felix.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_FELIX, str(felix)))
    proc = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    # It only warns about unknown keys or bad values: any mention of our file is a defect.
    output = proc.stdout + proc.stderr
    assert unit.name not in output, output


def test_systemd_analyze_verify_would_catch_a_bad_unit(tmp_path: Path):
    """The check above can fail: a misspelt key is reported."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        with pytest.raises(configparser.Error):
            configparser.ConfigParser(strict=True).read_string("[Service]\nA=1\nA=2\n")
        return
    felix = Path(sys.executable).with_name("calico-felix")
    unit = tmp_path / "calico-felix.service"
    text = UNIT.read_text().replace(INSTALLED_FELIX, str(felix))
    unit.write_text(text.replace("RestartSec=", "RestartSecs="))
    proc = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert "RestartSecs" in proc.stdout + proc.stderr


# -- logrotate, for real ------------------------------------------------------------------------


@pytest.fixture
def felix_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "log" / "felix.log"
    logs.configure(
        program="", screen=None, file_path=str(path), file_level="INFO", syslog_level=None
    )
    try:
        yield path
    finally:
        logs.configure(program="", screen=None, file_path=None, file_level=None, syslog_level=None)
        logging.getLogger().setLevel(logging.WARNING)  # as test_logs_and_checks.py does


def test_logrotate_config_rotates_and_felix_keeps_logging(felix_log: Path, tmp_path: Path):
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    assert Path(logrotate).exists(), "logrotate is a Debian package the Makefile installs"
    text = LOGROTATE.read_text()
    assert "/var/log/calico/felix.log {" in text
    directives = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "copytruncate" not in directives  # Felix reopens the file itself
    config = tmp_path / "logrotate.conf"
    config.write_text(text.replace("/var/log/calico/felix.log", str(felix_log)))
    config.chmod(0o644)  # logrotate refuses group/world-writable configs

    log = logging.getLogger("calico.test")
    log.info("before rotation")
    state = tmp_path / "logrotate.state"
    proc = subprocess.run(
        [logrotate, "--force", "--state", str(state), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rotated = felix_log.with_name("felix.log.1")  # delaycompress: the newest stays plain
    assert "before rotation" in rotated.read_text()
    assert not felix_log.exists()

    log.info("after rotation")
    assert "after rotation" in felix_log.read_text()
    assert "before rotation" not in felix_log.read_text()

    # A second rotation compresses the first.
    proc = subprocess.run(
        [logrotate, "--force", "--state", str(state), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert felix_log.with_name("felix.log.2.gz").exists()
    log.info("after the second rotation")
    assert "after the second rotation" in felix_log.read_text()


# -- The example felix.cfg and its regeneration -------------------------------------------------


def test_example_is_in_packaging_and_generated_with_the_reference():
    assert docs.EXAMPLE_PATH == Path("packaging/felix.cfg.example")
    assert (ROOT / docs.EXAMPLE_PATH).read_text() == docs.example_config()
    assert docs.stale_files(ROOT) == []


def test_example_gives_every_parameter_its_meaning():
    text = (ROOT / docs.EXAMPLE_PATH).read_text()
    flat = " ".join(line.removeprefix("#").strip() for line in text.splitlines())
    reference = (ROOT / docs.MARKDOWN_PATH).read_text()
    for param in PARAMS:
        assert " ".join(param.help.split()) in flat, param.name
        assert param.help.replace("|", "\\|") in reference, param.name


def test_make_docs_regenerates_both_files():
    makefile = (ROOT / "Makefile").read_text()
    lines = makefile.splitlines()
    target = lines.index("docs: venv")
    assert lines[target + 1] == "\t$(PY) -m calico.felix.config.docs --write"
    logical = makefile.replace("\\\n", " ").splitlines()  # join continued lines
    phony = next(line for line in logical if line.startswith(".PHONY:"))
    assert "docs" in phony.split()
    assert "logrotate" in makefile.split("DEB_PACKAGES :=")[1].split("\n\n")[0]


# -- calico-dhcp-agent's unit (docs/dhcp.md) ----------------------------------------------------

DHCP_UNIT = ROOT / "packaging/systemd/calico-dhcp-agent.service"
INSTALLED_DHCP_AGENT = "/usr/local/bin/calico-dhcp-agent"


def test_dhcp_agent_unit_restarts_on_failure_and_takes_dnsmasq_down_with_it():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(DHCP_UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    service = parser["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a bad configuration: no restart loop
    assert service["KillMode"] == "control-group"  # dnsmasq goes with the agent (issue 19)
    assert parser["Unit"]["StartLimitIntervalSec"] == "0"
    assert "network-online.target" in parser["Unit"]["After"].split()
    exec_start = service["ExecStart"].split()
    assert exec_start == [INSTALLED_DHCP_AGENT, "--config-file", "/etc/neutron/neutron.conf"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[Path(INSTALLED_DHCP_AGENT).name] == "calico.dhcp.agent:main"


def test_systemd_analyze_verify_accepts_the_dhcp_agent_unit(tmp_path: Path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return  # no systemd here: the key-by-key test above is the check
    agent = Path(sys.executable).with_name("calico-dhcp-agent")
    assert agent.exists()
    unit = tmp_path / DHCP_UNIT.name
    unit.write_text(DHCP_UNIT.read_text().replace(INSTALLED_DHCP_AGENT, str(agent)))
    proc = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert unit.name not in output, output


# -- calico-bgp's unit (docs/multihost.md) -------------------------------------------------------

BGP_UNIT = ROOT / "packaging/systemd/calico-bgp.service"
INSTALLED_BGP = "/usr/local/bin/calico-bgp"


def test_bgp_unit_restarts_on_failure_after_bird_and_the_network():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(BGP_UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    unit, service = parser["Unit"], parser["Service"]
    assert service["Restart"] == "on-failure"  # exit 1: restart; exit 0 (SIGTERM): stay down
    assert service["RestartPreventExitStatus"] == "2"  # bad configuration: no restart loop
    assert service["RestartSec"] == "5s"
    assert unit["StartLimitIntervalSec"] == "0"
    for target in ("bird.service", "network-online.target"):
        assert target in unit["After"].split() and target in unit["Wants"].split()
    assert service["KillMode"] == "control-group"  # the bird -p helper goes with it
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    exec_start = service["ExecStart"].split()
    assert exec_start == [INSTALLED_BGP, "--config-file", "/etc/calico/felix.cfg"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[Path(INSTALLED_BGP).name] == "calico.bgp.cli:main"


def test_bgp_unit_exit_codes_are_calico_bgps():
    from calico.bgp import cli, daemon

    assert (daemon.EXIT_STOPPED, daemon.EXIT_RESTART, cli.EXIT_BAD_CONFIG) == (0, 1, 2)


def test_systemd_analyze_verify_accepts_the_bgp_unit(tmp_path: Path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return  # no systemd here: the key-by-key test above is the check
    bgp = Path(sys.executable).with_name("calico-bgp")
    assert bgp.exists()
    unit = tmp_path / BGP_UNIT.name
    unit.write_text(BGP_UNIT.read_text().replace(INSTALLED_BGP, str(bgp)))
    proc = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert unit.name not in output, output


def test_makefile_installs_bird():
    makefile = (ROOT / "Makefile").read_text()
    assert "bird2" in makefile.split("DEB_PACKAGES :=")[1].split("\n\n")[0]


# -- A compute host's services together (docs/multihost.md) -------------------------------------

COMPUTE_HOST_UNITS = {
    "calico-felix.service": "calico.felix.cli:main",
    "calico-bgp.service": "calico.bgp.cli:main",
    "calico-dhcp-agent.service": "calico.dhcp.agent:main",
}


def _parsed(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_every_compute_host_daemon_has_a_unit_and_nothing_else_is_there():
    units = {p.name for p in (ROOT / "packaging/systemd").iterdir()}
    assert units == set(COMPUTE_HOST_UNITS)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, entry in COMPUTE_HOST_UNITS.items():
        exec_start = _parsed(ROOT / "packaging/systemd" / name)["Service"]["ExecStart"].split()
        script = Path(exec_start[0]).name
        assert exec_start[0] == f"/usr/local/bin/{script}" and scripts[script] == entry, name


def test_restart_semantics_fit_each_daemons_exit_codes():
    from calico.bgp import cli as bgp_cli
    from calico.bgp import daemon as bgp_daemon
    from calico.dhcp import agent
    from calico.felix import cli as felix_cli
    from calico.felix import daemon as felix_daemon

    # Felix: 0 stopped, 1 restart me, 2 bad configuration, which etcd can hold: always restart.
    assert (felix_daemon.EXIT_STOPPED, felix_daemon.EXIT_RESTART, felix_cli.EXIT_BAD_CONFIG) == (
        0,
        1,
        2,
    )
    felix = _parsed(UNIT)["Service"]
    assert felix["Restart"] == "always" and "RestartPreventExitStatus" not in felix
    # calico-bgp and the DHCP agent: 1 restart me, 2 bad local configuration (files, options,
    # no bird binary), which a restart cannot cure: restart on failure, not after exit 2.
    assert (bgp_daemon.EXIT_STOPPED, bgp_daemon.EXIT_RESTART, bgp_cli.EXIT_BAD_CONFIG) == (0, 1, 2)
    assert (agent.EXIT_OK, agent.EXIT_FAILED, agent.EXIT_BAD_CONFIG) == (0, 1, 2)
    for unit in (BGP_UNIT, DHCP_UNIT):
        service = _parsed(unit)["Service"]
        assert service["Restart"] == "on-failure", unit.name
        assert service["RestartPreventExitStatus"] == "2", unit.name
    for unit in (UNIT, BGP_UNIT, DHCP_UNIT):
        parsed = _parsed(unit)
        assert parsed["Service"]["RestartSec"] == "5s", unit.name
        assert parsed["Service"]["KillMode"] == "control-group", unit.name
        assert parsed["Unit"]["StartLimitIntervalSec"] == "0", unit.name
        assert "network-online.target" in parsed["Unit"]["After"].split(), unit.name


def test_only_calico_bgp_is_ordered_after_bird():
    for unit in (UNIT, DHCP_UNIT):
        text = unit.read_text()
        assert "bird" not in _parsed(unit)["Unit"].get("After", ""), unit.name
        assert "bird" not in _parsed(unit)["Unit"].get("Wants", ""), unit.name
        assert "Requires" not in text and "BindsTo" not in text, unit.name
    bgp = _parsed(BGP_UNIT)["Unit"]
    assert "bird.service" in bgp["After"].split() and "bird.service" in bgp["Wants"].split()
    assert "Requires" not in bgp and "BindsTo" not in bgp  # calico-bgp runs without BIRD too


def test_multihost_doc_lists_every_service_of_a_compute_host():
    doc = (ROOT / "docs/multihost.md").read_text()
    section = doc.split("## A compute host's services", 1)[1].split("\n## ", 1)[0]
    for name in COMPUTE_HOST_UNITS:
        assert f"(../packaging/systemd/{name})" in section, name
    assert "bird.service" in section and "bird2" in section
