"""calico-dhcp-agent's configuration and its view of etcd (the Syncer listener), no processes."""

from __future__ import annotations

import importlib.util
import json
import logging
import tomllib
from pathlib import Path

import pytest

import calico.dhcp
from calico.common.datamodel_v1 import DhcpSubnetKey, WorkloadEndpointKey
from calico.common.etcd.syncer import SyncStatus
from calico.dhcp import agent as agent_module
from calico.dhcp import interface
from calico.dhcp.agent import DhcpState, load_config, main
from calico.dhcp.dnsmasq import DnsmasqConfig
from calico.dhcp.model import parse_dhcp_endpoint

EP = WorkloadEndpointKey("h1", "openstack", "vm-1", "port-1")
OTHER = WorkloadEndpointKey("h2", "openstack", "vm-2", "port-2")
EP2 = WorkloadEndpointKey("h1", "openstack", "vm-3", "port-3")
SUBNET = DhcpSubnetKey("s4")
SUBNET_JSON = json.dumps({"network_id": "n1", "cidr": "10.65.0.0/24", "gateway_ip": "10.65.0.1"})


def endpoint_json(mac: str = "02:00:00:00:00:01") -> str:
    return json.dumps(
        {
            "state": "active",
            "name": "tapport-1",
            "mac": mac,
            "ipv4_nets": ["10.65.0.2/32"],
            "ipv4_subnet_ids": ["s4"],
        }
    )


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_defaults_are_the_contract(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "empty.conf", "")])
    assert config.etcd.endpoints == ("http://localhost:4001",)
    assert (config.etcd.key_file, config.etcd.cert_file, config.etcd.ca_file) == (None,) * 3
    assert config.etcd_api == "v2"
    assert config.lease_seconds == 86400
    assert config.hostname  # the system's host name
    assert load_config([]) == config


def test_config_from_neutron_files(tmp_path: Path) -> None:
    neutron = write(
        tmp_path,
        "neutron.conf",
        "[DEFAULT]\nhost = compute-7\ndhcp_lease_duration = 600\n"
        "log_format = %(message)s\n"  # not interpolated
        "[calico]\netcd_host = etcd.example\netcd_port = 2379\n",
    )
    override = write(
        tmp_path,
        "ml2.ini",
        "[calico]\netcd_host = fd00::1\netcd_ca_cert_file = /ca.pem\netcd_api_version = v3\n",
    )
    config = load_config([neutron, override])
    assert config.hostname == "compute-7"
    assert config.lease_seconds == 600
    assert config.etcd.endpoints == ("https://[fd00::1]:2379",)  # a TLS file means https
    assert config.etcd.ca_file == "/ca.pem"
    assert config.etcd_api == "v3"


def test_config_etcd_cluster_endpoints_override_host_and_port(tmp_path: Path) -> None:
    # neutron.conf names one etcd; a later file (or the same one) lists the cluster's members.
    neutron = write(tmp_path, "neutron.conf", "[calico]\netcd_host = etcd0\netcd_port = 2379\n")
    cluster = write(
        tmp_path,
        "cluster.ini",
        "[calico]\netcd_endpoints = http://10.0.0.1:2379, http://10.0.0.2:2379/,\n"
        "  http://[fd00::3]:2379\n",
    )
    config = load_config([neutron, cluster])
    assert config.etcd.endpoints == (
        "http://10.0.0.1:2379",
        "http://10.0.0.2:2379",
        "http://[fd00::3]:2379",
    )
    # An empty list is "not set": host and port again.
    empty = write(tmp_path, "empty.ini", "[calico]\netcd_endpoints =\n")
    assert load_config([neutron, cluster, empty]).etcd.endpoints == ("http://etcd0:2379",)


def test_config_etcd_cluster_over_tls(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "neutron.conf",
        "[calico]\netcd_endpoints = https://e1:2379,https://e2:2379\n"
        "etcd_key_file = /k.pem\netcd_cert_file = /c.pem\netcd_ca_cert_file = /ca.pem\n",
    )
    etcd = load_config([path]).etcd
    assert etcd.endpoints == ("https://e1:2379", "https://e2:2379")
    assert (etcd.key_file, etcd.cert_file, etcd.ca_file) == ("/k.pem", "/c.pem", "/ca.pem")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[calico]\netcd_port = x\n", "etcd_port"),
        ("[calico]\netcd_port = 70000\n", "etcd_port"),
        ("[calico]\netcd_endpoints = http://a:1,https://b:2\n", "etcd_endpoints: .*same scheme"),
        ("[calico]\netcd_endpoints = a:2379\n", "etcd_endpoints: .*http or https"),
        ("[calico]\netcd_endpoints = http://a:2379/v2\n", "etcd_endpoints: .*no path"),
        ("[calico]\netcd_endpoints = http://a:99999\n", "etcd_endpoints: .*port"),
        ("[calico]\netcd_endpoints = ,\n", "etcd_endpoints: no etcd endpoints"),
        (
            "[calico]\netcd_endpoints = http://a:1\netcd_ca_cert_file = /ca.pem\n",
            "etcd_endpoints: TLS files are set but the endpoints use http://",
        ),
        ("[calico]\netcd_api_version = v4\n", "etcd_api_version"),
        ("[DEFAULT]\ndhcp_lease_duration = 5\n", "dhcp_lease_duration"),
        ("no section\n", "no section headers"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        load_config([write(tmp_path, "bad.conf", text)])


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_config([str(tmp_path / "absent.conf")])
    assert main(["--config-file", str(tmp_path / "absent.conf")]) == 2


def test_state_keeps_own_endpoints_and_subnets() -> None:
    state = DhcpState("h1")
    state.on_updates([(EP.path, endpoint_json()), (SUBNET.path, SUBNET_JSON)])
    assert state.changed.is_set()
    assert state.wanted(86400) is None  # not in sync yet: never serve a partial snapshot
    state.on_status(SyncStatus.IN_SYNC)
    wanted = state.wanted(86400)
    assert wanted is not None
    assert wanted.hosts == ("02:00:00:00:00:01,10.65.0.2,host-10-65-0-2",)
    assert [i.taps for i in wanted.interfaces] == [("tapport-1",)]

    # Other hosts' endpoints and unrelated keys do not count as changes.
    state.changed.clear()
    state.on_updates(
        [
            (OTHER.path, endpoint_json()),
            ("/calico/v1/policy/profile/p/rules", "{}"),
            ("/calico/felix/v1/host/h1/status", "{}"),
        ]
    )
    assert not state.changed.is_set()
    assert list(state.endpoints) == [EP]

    # An invalid value counts as a deletion; so does a real deletion.
    state.on_updates([(EP.path, endpoint_json(mac="nonsense"))])
    assert state.changed.is_set() and state.endpoints == {}
    state.on_updates([(EP.path, endpoint_json()), (SUBNET.path, "{bad")])
    assert state.subnets == {}
    assert state.wanted(86400) == DnsmasqConfig()
    state.on_updates([(SUBNET.path, SUBNET_JSON)])
    assert state.wanted(86400) != DnsmasqConfig()
    state.on_updates([(EP.path, None)])
    assert state.wanted(86400) == DnsmasqConfig()


def test_neutron_is_optional() -> None:
    # Without Neutron the package and the interface module still import, and asking for the
    # driver names the missing extra; with it (the openstack extra), the driver is Neutron's kind.
    assert calico.dhcp.__doc__
    has_neutron = importlib.util.find_spec("neutron") is not None
    assert interface.NEUTRON_AVAILABLE is has_neutron
    if has_neutron:
        from neutron.agent.linux.interface import LinuxInterfaceDriver

        assert issubclass(interface.neutron_driver_class(), LinuxInterfaceDriver)
    else:
        with pytest.raises(ImportError, match="openstack"):
            interface.neutron_driver_class()


def test_entry_points_declared() -> None:
    project = tomllib.loads(Path(__file__).parents[2].joinpath("pyproject.toml").read_text())
    assert project["project"]["scripts"]["calico-dhcp-agent"] == "calico.dhcp.agent:main"
    drivers = project["project"]["entry-points"]["neutron.interface_drivers"]
    assert drivers["RoutedInterfaceDriver"] == "calico.dhcp.interface:RoutedInterfaceDriver"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_bad_objects_are_logged_once_with_their_key_and_the_rest_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 12: an invalid value, a bad key of this host's and an invalid subnet key are each
    logged once, quoted; every other endpoint is still served."""
    caplog.set_level(logging.WARNING, logger="calico.dhcp.agent")
    state = DhcpState("h1")
    state.on_status(SyncStatus.IN_SYNC)
    hostile_fqdn = json.dumps({**json.loads(endpoint_json()), "fqdn": "x\n02:00:00:00:00:09"})
    bad_key = "/calico/v1/host/h1/workload/openstack/vm\nx/endpoint/p"
    bad_subnet_key = "/calico/dhcp/v1/subnet/s\n4"
    updates = [
        (EP.path, endpoint_json()),
        (SUBNET.path, SUBNET_JSON),
        (EP2.path, hostile_fqdn),
        (bad_key, endpoint_json()),
        (bad_subnet_key, SUBNET_JSON),
        ("/calico/v1/host/h2/workload/openstack/vm\nx/endpoint/p", endpoint_json()),
    ]
    state.on_updates(updates)
    wanted = state.wanted(86400)
    assert wanted is not None
    assert wanted.hosts == ("02:00:00:00:00:01,10.65.0.2,host-10-65-0-2",)
    logged = _warnings(caplog)
    assert len(logged) == 3, logged
    assert all("\n" not in line for line in logged)
    assert any(repr(EP2.path) in line and "fqdn" in line for line in logged)
    assert any(repr(bad_key) in line for line in logged)
    assert any(repr(bad_subnet_key) in line for line in logged)

    # The same values again (a resync) log nothing new; a fix and a new break log again.
    caplog.clear()
    state.on_updates(updates)
    assert state.wanted(86400) == wanted
    assert _warnings(caplog) == []
    state.on_updates([(EP2.path, None)])
    state.on_updates([(EP2.path, hostile_fqdn)])
    assert len(_warnings(caplog)) == 1


def test_refusals_by_the_renderer_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Two endpoints claiming one MAC: the conflict is logged once, naming both keys."""
    caplog.set_level(logging.WARNING, logger="calico.dhcp.agent")
    state = DhcpState("h1")
    state.on_status(SyncStatus.IN_SYNC)
    twin = json.dumps({**json.loads(endpoint_json()), "ipv4_nets": ["10.65.0.3/32"]})
    state.on_updates([(EP.path, endpoint_json()), (EP2.path, twin), (SUBNET.path, SUBNET_JSON)])
    for _ in range(3):
        wanted = state.wanted(86400)
        assert wanted is not None and len(wanted.hosts) == 1
    (line,) = _warnings(caplog)
    assert repr(EP2.path) in line and EP.path in line


def test_an_unexpected_parse_failure_is_isolated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A value that makes the parser raise something other than InvalidValue (a bug) is left
    out like an invalid one; the agent keeps the rest."""
    caplog.set_level(logging.WARNING, logger="calico.dhcp.agent")

    def broken(raw_json: str, key: WorkloadEndpointKey) -> object:
        if key == EP2:
            raise RecursionError("deep")
        return parse_dhcp_endpoint(raw_json, key)

    monkeypatch.setattr(agent_module, "parse_dhcp_endpoint", broken)
    state = DhcpState("h1")
    state.on_status(SyncStatus.IN_SYNC)
    other = json.dumps(
        {**json.loads(endpoint_json("02:00:00:00:00:02")), "ipv4_nets": ["10.65.0.3/32"]}
    )
    state.on_updates([(EP.path, endpoint_json()), (EP2.path, other), (SUBNET.path, SUBNET_JSON)])
    wanted = state.wanted(86400)
    assert wanted is not None and len(wanted.hosts) == 1
    assert any("RecursionError" in line for line in _warnings(caplog))
