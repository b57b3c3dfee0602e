"""Felix configuration: precedence, defaults, every kind of bad value, ini quirks, `none`."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from calico.felix.config import params
from calico.felix.config.loader import (
    ConfigErrors,
    ConfigFileError,
    Source,
    filter_etcd,
    read_env,
    read_file,
    resolve,
)

# The seed's defaults, as parsed values (the contract; keep exactly).
SPEC_DEFAULTS = {
    "DataplaneDriver": "etcdv2",
    "LogFilePath": "/var/log/calico/felix.log",
    "LogSeveritySys": "ERROR",
    "LogSeverityFile": "INFO",
    "LogSeverityScreen": "ERROR",
    "StartupCleanupDelay": 30,
    "PrometheusMetricsEnabled": False,
    "PrometheusMetricsPort": 9091,
    "UsageReportingEnabled": True,
    "FailsafeInboundHostPorts": [22],
    "FailsafeOutboundHostPorts": [2379, 2380, 4001, 7001],
    "ReportingIntervalSecs": 30,
    "ReportingTTLSecs": 90,
    "EtcdEndpoints": ["http://localhost:4001"],
    "EtcdScheme": "http",
    "EtcdKeyFile": None,
    "EtcdCertFile": None,
    "EtcdCaFile": "/etc/ssl/certs/ca-certificates.crt",
    "DefaultEndpointToHostAction": "DROP",
    "IptablesMarkMask": 0xFF000000,
    "IptablesRefreshInterval": 60,
    "MaxIpsetSize": 1048576,
    "NFTablesMode": "Disabled",
    "DataplaneDriverPrometheusMetricsPort": 9092,
    "MetadataAddr": "127.0.0.1",
    "MetadataPort": 8775,
    # From the reference, beyond the seed table.
    "InterfacePrefix": ["cali"],
    "EndpointReportingEnabled": False,
    "EndpointReportingDelaySecs": 1.0,
    "DropActionOverride": "DROP",
    "IgnoreLooseRPF": False,
    "Ipv6Support": "auto",
    "HostInterfacePollInterval": 10,
    "ClusterGUID": "baddecaf",
    "ClusterType": "",
    "EtcdAddr": "localhost:4001",
    # Our extensions, not in the spec (usage reporting; see docs/operations.md).
    "UsageReportingURL": "https://usage.projectcalico.org/UsageCheck/calicoVersionCheck",
    "UsageReportingInitialDelaySecs": 300.0,
    "UsageReportingIntervalSecs": 86400.0,
}


def test_every_default_matches_the_spec():
    config = resolve({}, {})
    for name, expected in SPEC_DEFAULTS.items():
        assert config[name] == expected, name
        assert config.source(name) == Source.DEFAULT
    assert config["FelixHostname"] == socket.gethostname()


def test_table_declares_each_parameter_once_with_help():
    names = [p.name for p in params.PARAMS]
    assert len(names) == len(set(names))
    assert set(SPEC_DEFAULTS) | {"FelixHostname"} == set(names)
    for p in params.PARAMS:
        assert p.help.strip().endswith("."), p.name


@pytest.mark.parametrize(
    ("sources", "expected_source", "expected"),
    [
        ({"env": "1", "file": "2", "host": "3", "global": "4"}, Source.ENV, 1),
        ({"file": "2", "host": "3", "global": "4"}, Source.FILE, 2),
        ({"host": "3", "global": "4"}, Source.ETCD_HOST, 3),
        ({"global": "4"}, Source.ETCD_GLOBAL, 4),
        ({}, Source.DEFAULT, 30),
    ],
)
def test_precedence_first_source_wins(sources, expected_source, expected):
    def one(key):
        return {"ReportingIntervalSecs": sources[key]} if key in sources else {}

    config = resolve(one("env"), one("file"), one("host"), one("global"))
    assert config["ReportingIntervalSecs"] == expected
    assert config.source("ReportingIntervalSecs") == expected_source


def test_a_bad_value_in_a_higher_source_is_an_error_not_a_fall_through():
    with pytest.raises(ConfigErrors) as e:
        resolve({"MetadataPort": "x"}, {"MetadataPort": "80"})
    assert [p.name for p in e.value.problems] == ["MetadataPort"]


def test_env_names_are_felix_prefix_plus_upper_case():
    env = {
        "FELIX_METADATAADDR": "10.65.0.1",
        "FELIX_ETCDSCHEME": "https",
        "FELIX_LogSeverityScreen": "debug",  # wrong case: not ours
        "FELIX_UNKNOWN": "1",
        "OTHER": "x",
    }
    assert read_env(env) == {"MetadataAddr": "10.65.0.1", "EtcdScheme": "https"}


def test_empty_env_value_is_unset():
    assert read_env({"FELIX_METADATAADDR": "  "}) == {}


def test_datastore_type_is_an_alias_of_dataplane_driver():
    config = resolve(read_env({"FELIX_DATASTORETYPE": "etcdv3"}), {})
    assert config["DataplaneDriver"] == "etcdv3"
    # The canonical name wins when both are set.
    env = {"FELIX_DATASTORETYPE": "etcdv3", "FELIX_DATAPLANEDRIVER": "etcdv2"}
    assert resolve(read_env(env), {})["DataplaneDriver"] == "etcdv2"


def test_kubernetes_datastore_is_accepted_and_ignores_the_etcd_files():
    # The etcd files are not used with the Kubernetes datastore (docs/kubernetes.md), so an
    # unreadable one is no reason to refuse.
    config = resolve({"DataplaneDriver": "kubernetes", "EtcdCaFile": "/nonexistent/ca.pem"}, {})
    assert config["DataplaneDriver"] == "kubernetes"


# -- Local-only parameters ---------------------------------------------------------------------

LOCAL_ONLY = [
    "EtcdAddr",
    "EtcdScheme",
    "EtcdEndpoints",
    "EtcdKeyFile",
    "EtcdCertFile",
    "EtcdCaFile",
    "FelixHostname",
    "DataplaneDriver",
]


def test_local_only_flags_match_the_contract():
    assert sorted(p.name for p in params.PARAMS if p.local_only) == sorted(LOCAL_ONLY)


@pytest.mark.parametrize("name", [*LOCAL_ONLY, "DatastoreType"])
def test_local_only_parameters_in_etcd_are_ignored_with_a_warning(name, caplog):
    with caplog.at_level(logging.WARNING):
        kept = filter_etcd({name: "http://etcd9:2379"}, "etcd global config")
    assert kept == {}
    assert f"Ignoring {name}" in caplog.text
    # Even if passed through, resolve never reads local-only parameters from etcd.
    param = params.BY_SPELLING[name]
    config = resolve({}, {}, {param.name: "bogus"}, {param.name: "bogus"})
    assert config.source(param.name) == Source.DEFAULT


def test_unknown_etcd_keys_are_ignored_and_names_are_case_sensitive(caplog):
    with caplog.at_level(logging.WARNING):
        kept = filter_etcd({"metadataport": "1", "MetadataPort": "2", "Bogus": "x"}, "etcd")
    assert kept == {"MetadataPort": "2"}
    assert "metadataport" in caplog.text and "Bogus" in caplog.text


# -- Bad values of every kind ----------------------------------------------------------------

BAD_VALUES = [
    ("ReportingIntervalSecs", "thirty", "not an integer"),
    ("ReportingIntervalSecs", "-1", "at least 0"),
    ("MetadataPort", "0", "at least 1"),
    ("MetadataPort", "65536", "at most 65535"),
    ("PrometheusMetricsPort", "http", "not an integer"),
    ("UsageReportingEnabled", "maybe", "not a boolean"),
    ("EndpointReportingDelaySecs", "soon", "not a number"),
    ("EndpointReportingDelaySecs", "-0.5", "at least 0"),
    ("EndpointReportingDelaySecs", "nan", "finite"),
    ("LogSeverityScreen", "LOUD", "not one of DEBUG"),
    ("DefaultEndpointToHostAction", "REJECT", "not one of DROP, RETURN, ACCEPT"),
    ("DropActionOverride", "LOG", "not one of"),
    ("DataplaneDriver", "consul", "not one of etcdv2"),
    ("EtcdScheme", "ftp", "not one of http, https"),
    ("FailsafeInboundHostPorts", "22,ssh", "port 'ssh'"),
    ("FailsafeOutboundHostPorts", "70000", "at most 65535"),
    ("IptablesMarkMask", "0x3", "2 bits set; Felix needs 3"),
    ("IptablesMarkMask", "0x1ff000000", "32-bit"),
    ("IptablesMarkMask", "0", "32-bit"),
    ("IptablesMarkMask", "mask", "not an integer"),
    ("MaxIpsetSize", "0", "at least 1"),
    ("EtcdAddr", "etcd", "host:port"),
    ("EtcdAddr", "etcd:port", "port"),
    ("EtcdEndpoints", "etcd:2379", "scheme must be http or https"),
    ("EtcdEndpoints", "http://a:2379,https://b:2379", "same scheme"),
    ("EtcdEndpoints", "http://a:2379/v2", "no path"),
    ("FelixHostname", "bad host", "not a hostname"),
    ("InterfacePrefix", "tap,this-is-far-too-long", "1-15 characters"),
    ("InterfacePrefix", ",", "no prefixes"),
    ("MetadataAddr", "not an address!", "not an IP address"),
    ("Ipv6Support", "sometimes", "not auto, true or false"),
    ("ClusterGUID", " ", "must not be empty"),
]


@pytest.mark.parametrize(("name", "raw", "reason"), BAD_VALUES)
def test_bad_values_are_reported_with_name_value_and_source(name, raw, reason):
    with pytest.raises(ConfigErrors) as e:
        resolve({}, {name: raw}, file_path="/etc/calico/felix.cfg")
    (problem,) = e.value.problems
    line = str(problem)
    assert line.startswith(f"{name}={raw!r} (from config file /etc/calico/felix.cfg)")
    assert reason in line


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigErrors) as e:
        resolve({"MetadataPort": "x", "LogSeverityFile": "y"}, {"MaxIpsetSize": "-3"})
    assert {p.name for p in e.value.problems} == {"MetadataPort", "LogSeverityFile", "MaxIpsetSize"}
    env_line = next(str(p) for p in e.value.problems if p.name == "MetadataPort")
    assert "(from env FELIX_METADATAPORT)" in env_line


def test_mark_mask_with_few_bits_is_a_warning():
    config = resolve({"IptablesMarkMask": "0x7"}, {})
    assert config["IptablesMarkMask"] == 7
    assert any("IptablesMarkMask" in w and "8 are recommended" in w for w in config.warnings)
    assert not resolve({}, {}).warnings or all(
        "IptablesMarkMask" not in w for w in resolve({}, {}).warnings
    )


def test_integers_accept_hex_and_leading_zeros():
    config = resolve({"MaxIpsetSize": "0x100", "StartupCleanupDelay": "010"}, {})
    assert config["MaxIpsetSize"] == 256
    assert config["StartupCleanupDelay"] == 10


@pytest.mark.parametrize(
    ("raw", "expected"), [("TRUE", True), ("yes", True), ("1", True), ("f", False), ("No", False)]
)
def test_booleans(raw, expected):
    assert resolve({"UsageReportingEnabled": raw}, {})["UsageReportingEnabled"] is expected


def test_choices_and_levels_are_case_insensitive_and_canonicalised():
    config = resolve(
        {
            "DefaultEndpointToHostAction": "accept",
            "DropActionOverride": "log-and-drop",
            "LogSeverityFile": "warn",
            "LogSeveritySys": "Critical",
        },
        {},
    )
    assert config["DefaultEndpointToHostAction"] == "ACCEPT"
    assert config["DropActionOverride"] == "LOG-and-DROP"
    assert config["LogSeverityFile"] == "WARNING"
    assert config["LogSeveritySys"] == "CRITICAL"


# -- `none` -------------------------------------------------------------------------------------


def test_none_values():
    config = resolve(
        {
            "LogFilePath": "none",
            "LogSeverityFile": "NONE",
            "LogSeveritySys": "None",
            "LogSeverityScreen": "none",
            "MetadataAddr": "NoNe",
            "FailsafeInboundHostPorts": "none",
            "FailsafeOutboundHostPorts": "None",
        },
        {},
    )
    for name in ("LogFilePath", "LogSeverityFile", "LogSeveritySys", "LogSeverityScreen"):
        assert config[name] is None, name
    assert config["MetadataAddr"] is None
    assert config["FailsafeInboundHostPorts"] == []
    assert config["FailsafeOutboundHostPorts"] == []


def test_none_ca_file_disables_verification_even_for_https():
    config = resolve({"EtcdEndpoints": "https://etcd:2379", "EtcdCaFile": "none"}, {})
    assert config["EtcdCaFile"] is None


# -- etcd endpoints and TLS ---------------------------------------------------------------------


def test_endpoints_default_to_scheme_and_addr():
    config = resolve({"EtcdAddr": "etcd1:2379", "EtcdScheme": "https", "EtcdCaFile": "none"}, {})
    assert config["EtcdEndpoints"] == ["https://etcd1:2379"]
    assert config.source("EtcdEndpoints") == Source.DEFAULT


def test_endpoints_override_addr_and_scheme():
    config = resolve(
        {"EtcdEndpoints": "http://etcd1:2379, http://etcd2:2379/", "EtcdAddr": "x:1"}, {}
    )
    assert config["EtcdEndpoints"] == ["http://etcd1:2379", "http://etcd2:2379"]


def test_tls_files_both_or_neither(tmp_path: Path):
    key = tmp_path / "key.pem"
    key.write_text("k")
    with pytest.raises(ConfigErrors) as e:
        resolve({"EtcdKeyFile": str(key)}, {})
    assert "set without EtcdCertFile" in str(e.value)
    with pytest.raises(ConfigErrors) as e:
        resolve({"EtcdCertFile": str(key)}, {})
    assert "set without EtcdKeyFile" in str(e.value)


def test_tls_files_must_be_readable(tmp_path: Path):
    present = tmp_path / "present.pem"
    present.write_text("x")
    with pytest.raises(ConfigErrors) as e:
        resolve(
            {
                "EtcdEndpoints": "https://etcd:2379",
                "EtcdKeyFile": str(present),
                "EtcdCertFile": str(tmp_path / "missing.pem"),
                "EtcdCaFile": str(tmp_path / "missing-ca.pem"),
            },
            {},
        )
    names = sorted(p.name for p in e.value.problems)
    assert names == ["EtcdCaFile", "EtcdCertFile"]
    ok = resolve(
        {
            "EtcdEndpoints": "https://etcd:2379",
            "EtcdKeyFile": str(present),
            "EtcdCertFile": str(present),
            "EtcdCaFile": str(present),
        },
        {},
    )
    assert ok["EtcdKeyFile"] == str(present)


# -- The config file ------------------------------------------------------------------------------


def test_missing_file_is_fine(tmp_path: Path):
    assert read_file(str(tmp_path / "nope.cfg")) == {}


def test_file_sections_are_ignored_and_keys_are_case_insensitive(tmp_path: Path):
    path = tmp_path / "felix.cfg"
    path.write_text(
        "[global]\nmetadataaddr = 10.65.0.9\n[logging]\nLOGSEVERITYSCREEN = debug\n"
        "; a comment\n[ignored]\nUnknownThing = 1\n"
    )
    assert read_file(str(path)) == {"MetadataAddr": "10.65.0.9", "LogSeverityScreen": "debug"}


def test_file_default_section_counts(tmp_path: Path):
    path = tmp_path / "felix.cfg"
    path.write_text("[DEFAULT]\nMetadataPort = 9999\n")
    assert read_file(str(path)) == {"MetadataPort": "9999"}
    path.write_text("[DEFAULT]\nMetadataPort = 9999\n[global]\nMetadataPort = 8888\n")
    assert read_file(str(path)) == {"MetadataPort": "8888"}


def test_file_duplicates_later_wins(tmp_path: Path, caplog):
    path = tmp_path / "felix.cfg"
    path.write_text("[a]\nMetadataPort = 1\nMetadataPort = 2\n[b]\nMetadataPort = 3\n")
    with caplog.at_level(logging.WARNING):
        assert read_file(str(path)) == {"MetadataPort": "3"}
    assert "MetadataPort set in sections [a] and [b]" in caplog.text


def test_file_percent_signs_are_literal(tmp_path: Path):
    path = tmp_path / "felix.cfg"
    path.write_text("[global]\nClusterType = 100%openstack\n")
    assert read_file(str(path)) == {"ClusterType": "100%openstack"}


@pytest.mark.parametrize(
    "text", ["MetadataPort = 1\n", "[global]\nthis line has no equals sign\n", "[a\nx=1\n"]
)
def test_malformed_file_is_an_error(tmp_path: Path, text: str):
    path = tmp_path / "felix.cfg"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as e:
        read_file(str(path))
    assert "malformed config file" in str(e.value) and str(path) in str(e.value)


def test_unreadable_file_is_an_error(tmp_path: Path):
    path = tmp_path / "felix.cfg"
    path.write_bytes(b"[global]\nClusterType = \xff\xfe\n")
    with pytest.raises(ConfigFileError):
        read_file(str(path))
