"""The one table of Felix parameters.

Every parameter is declared exactly once here: its name (as the spec spells it), its value
type, its default (as the raw string the spec gives, parsed like any other source), whether
it is local-only (never taken from etcd), and its meaning. The loader, `--show-config`, the
example felix.cfg and docs/config-params.md are all derived from this table, and so are the
rule renderer's defaults (`default_value`). Pure: no I/O (computed defaults are worked out by the
loader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from calico.felix.config import types as t

# Felix allocates three mark bits from IptablesMarkMask (accept, next-tier, endpoint).
MARK_BITS_USED = 3
# The spec recommends at least this many bits, so that Felix has room to grow.
MARK_BITS_RECOMMENDED = 8


class ValueType(Protocol):
    def parse(self, raw: str) -> Any: ...
    def describe(self) -> str: ...


@dataclass(frozen=True)
class Param:
    name: str
    type: ValueType
    # Raw default, parsed like any other source. None = computed at load time (see below).
    default: str | None
    help: str
    section: str
    local_only: bool = False
    aliases: tuple[str, ...] = field(default=())


GLOBAL = "Global Felix configuration"
ETCD = "etcd datastore"
IPTABLES = "iptables dataplane configuration"
OPENSTACK = "OpenStack-only configuration"
REPORTING = "Status and usage reporting"

PARAMS: tuple[Param, ...] = (
    # -- Global ---------------------------------------------------------------------------
    Param(
        "DataplaneDriver",
        t.Choice(("etcdv2", "etcdv3", "kubernetes")),
        "etcdv2",
        "The datastore that Felix reads endpoints and policy from: etcdv2 (the etcd v2 API), "
        "etcdv3 (the same keys over the etcd v3 API, for etcd servers without the v2 API) or "
        "kubernetes (pods, namespaces, NetworkPolicies, nodes and Calico's resources from the "
        "Kubernetes API; its connection comes from the environment, see docs/kubernetes.md; "
        "the etcd parameters are then unused). DatastoreType is an alias.",
        GLOBAL,
        local_only=True,
        aliases=("DatastoreType",),
    ),
    Param(
        "FelixHostname",
        t.Hostname(),
        None,  # socket.gethostname()
        "The hostname Felix reports to the plugin and uses to find its endpoints. Set it if "
        "the autodetected hostname (socket.gethostname()) does not match what the plugin uses.",
        GLOBAL,
        local_only=True,
    ),
    Param(
        "LogFilePath",
        t.OptionalPath(),
        "/var/log/calico/felix.log",
        "The full path to the Felix log file. Set to none to disable file logging.",
        GLOBAL,
    ),
    Param(
        "LogSeveritySys",
        t.LogLevel(),
        "ERROR",
        "The log severity above which logs are sent to syslog; NONE disables syslog logging.",
        GLOBAL,
    ),
    Param(
        "LogSeverityFile",
        t.LogLevel(),
        "INFO",
        "The log severity above which logs are sent to the log file; NONE disables it.",
        GLOBAL,
    ),
    Param(
        "LogSeverityScreen",
        t.LogLevel(),
        "ERROR",
        "The log severity above which logs are sent to stdout; NONE disables it.",
        GLOBAL,
    ),
    Param(
        "StartupCleanupDelay",
        t.Int(0),
        "30",
        "Delay, in seconds, before Felix removes orphaned iptables chains and ipsets after "
        "start. Until then it runs in graceful-restart mode and keeps pre-existing chains and "
        "ipsets.",
        GLOBAL,
    ),
    Param(
        "PrometheusMetricsEnabled",
        t.Bool(),
        "false",
        "Set to true to serve Prometheus metrics from Felix.",
        GLOBAL,
    ),
    Param(
        "PrometheusMetricsPort",
        t.PORT,
        "9091",
        "TCP port of Felix's Prometheus metrics server.",
        GLOBAL,
    ),
    Param(
        "UsageReportingEnabled",
        t.Bool(),
        "true",
        "Report the anonymous Calico version number and cluster size, and log any warnings "
        "the usage server returns (for example about a security vulnerability).",
        GLOBAL,
    ),
    Param(
        "FailsafeInboundHostPorts",
        t.PortList(),
        "22",
        "Comma-delimited list of TCP ports that host endpoints always accept traffic to, "
        "whatever the policy; none disables. The default allows ssh.",
        GLOBAL,
    ),
    Param(
        "FailsafeOutboundHostPorts",
        t.PortList(),
        "2379,2380,4001,7001",
        "Comma-delimited list of TCP ports that host endpoints may always send to, whatever "
        "the policy; none disables. The default keeps etcd reachable.",
        GLOBAL,
    ),
    Param(
        "InterfacePrefix",
        t.PrefixList(),
        "cali",
        "Comma-separated prefixes of workload interface names (OpenStack uses tap; the "
        "Neutron driver writes cali,tap).",
        GLOBAL,
    ),
    Param(
        "HostInterfacePollInterval",
        t.Int(0),
        "10",
        "Seconds between full re-scans of host interfaces and their addresses (for host "
        "endpoints matched by expected IPs); netlink events apply changes at once and this poll "
        "repairs any event missed. 0 disables the poll (events only).",
        GLOBAL,
    ),
    Param(
        "Ipv6Support",
        t.TriState(),
        "auto",
        "Program IPv6 as well as IPv4: true, false, or auto (on when the host has IPv6 and "
        "ip6tables).",
        GLOBAL,
    ),
    Param(
        "IgnoreLooseRPF",
        t.Bool(),
        "false",
        "Felix refuses to start when net.ipv4.conf.all.rp_filter is 2 (loose), because loose "
        "reverse-path filtering lets workloads spoof addresses; set true to allow it anyway.",
        GLOBAL,
    ),
    # -- Reporting ------------------------------------------------------------------------
    Param(
        "ReportingIntervalSecs",
        t.Int(0),
        "30",
        "Interval at which Felix reports its status into the datastore, or 0 to disable. Must "
        "be non-zero in OpenStack deployments.",
        REPORTING,
    ),
    Param(
        "ReportingTTLSecs",
        t.Int(0),
        "90",
        "Time-to-live of Felix's status report.",
        REPORTING,
    ),
    Param(
        "EndpointReportingEnabled",
        t.Bool(),
        "false",
        "Write each local endpoint's status (up, down, error) into the datastore. The Neutron "
        "driver sets this to true.",
        REPORTING,
    ),
    Param(
        "EndpointReportingDelaySecs",
        t.Float(0.0),
        "1",
        "Minimum delay, in seconds, between writes of endpoint status.",
        REPORTING,
    ),
    Param(
        "ClusterGUID",
        t.Str(allow_empty=False),
        "baddecaf",
        "Identifier of this cluster, sent in usage reports. The Neutron driver writes one.",
        REPORTING,
    ),
    Param(
        "ClusterType",
        t.Str(),
        "",
        "Free-form cluster type, sent in usage reports (as unknown when empty).",
        REPORTING,
    ),
    # Not in the spec: our extension, so that the usage server and schedule can be changed (and
    # tested without the internet). The schedule names and defaults are later upstream Felix's.
    Param(
        "UsageReportingURL",
        t.HttpUrl(),
        "https://usage.projectcalico.org/UsageCheck/calicoVersionCheck",
        "Extension (not in the spec): where usage reports go, as an HTTP GET with the query "
        "parameters version, guid, type and size. The default is upstream Calico's server.",
        REPORTING,
    ),
    Param(
        "UsageReportingInitialDelaySecs",
        t.Float(0.0),
        "300",
        "Extension (not in the spec): seconds from start to the first usage report (plus up "
        "to 10% jitter).",
        REPORTING,
    ),
    Param(
        "UsageReportingIntervalSecs",
        t.Float(1.0),
        "86400",
        "Extension (not in the spec): seconds between usage reports (daily, with 10% jitter "
        "either way).",
        REPORTING,
    ),
    # -- etcd -----------------------------------------------------------------------------
    Param(
        "EtcdEndpoints",
        t.UrlList(),
        None,  # EtcdScheme://EtcdAddr
        "Comma-delimited list of etcd endpoints, for example "
        "http://etcd1:2379,http://etcd2:2379. Defaults to EtcdScheme://EtcdAddr.",
        ETCD,
        local_only=True,
    ),
    Param(
        "EtcdAddr",
        t.HostPort(),
        "localhost:4001",
        "Deprecated: the host:port of the etcd node or proxy (used when EtcdEndpoints is not set).",
        ETCD,
        local_only=True,
    ),
    Param(
        "EtcdScheme",
        t.Choice(("http", "https")),
        "http",
        "Deprecated: http or https, for EtcdAddr (used when EtcdEndpoints is not set).",
        ETCD,
        local_only=True,
    ),
    Param(
        "EtcdKeyFile",
        t.OptionalPath(),
        "none",
        "The full path to the etcd client private key file (set both or neither of "
        "EtcdKeyFile and EtcdCertFile).",
        ETCD,
        local_only=True,
    ),
    Param(
        "EtcdCertFile",
        t.OptionalPath(),
        "none",
        "The full path to the etcd client certificate file.",
        ETCD,
        local_only=True,
    ),
    Param(
        "EtcdCaFile",
        t.OptionalPath(),
        "/etc/ssl/certs/ca-certificates.crt",
        "The full path to the CA certificate that signs etcd's server certificate; the default "
        "is the system trust store. none disables verification of the server.",
        ETCD,
        local_only=True,
    ),
    # -- iptables dataplane ---------------------------------------------------------------
    Param(
        "DefaultEndpointToHostAction",
        t.Choice(("DROP", "RETURN", "ACCEPT")),
        "DROP",
        "What happens to traffic from a workload to the host itself after the endpoint's "
        "egress policy: DROP, RETURN (to the rest of the INPUT chain) or ACCEPT.",
        IPTABLES,
    ),
    Param(
        "DropActionOverride",
        t.Choice(("DROP", "ACCEPT", "LOG-and-DROP", "LOG-and-ACCEPT")),
        "DROP",
        "What Felix does where policy says drop: DROP, ACCEPT, LOG-and-DROP or LOG-and-ACCEPT. "
        "The ACCEPT forms disable security and are for debugging only.",
        IPTABLES,
    ),
    Param(
        "IptablesMarkMask",
        t.MarkMask(MARK_BITS_USED),
        "0xff000000",
        "Mask that Felix selects its iptables mark bits from: a 32-bit number with at least "
        "8 bits set (Felix uses 3), none of which clash with other mark users on the host.",
        IPTABLES,
    ),
    Param(
        "IptablesRefreshInterval",
        t.Int(0),
        "60",
        "Period, in seconds, at which Felix re-checks and repairs all its iptables state; 0 "
        "disables.",
        IPTABLES,
    ),
    Param(
        "MaxIpsetSize",
        t.Int(1),
        "1048576",
        "Maximum size of the ipsets Felix uses for tags and selectors.",
        IPTABLES,
    ),
    Param(
        "NFTablesMode",
        t.Choice(("Disabled", "Enabled", "Auto")),
        "Disabled",
        "Which kernel interface the dataplane driver programs: Disabled (iptables and ipsets, "
        "through iptables-restore and ipset restore), Enabled (one native nftables table, "
        "inet felix, through libnftables or nft -f) or Auto (nftables when the host's iptables "
        "is the nf_tables variant and the kernel accepts Felix's table, else iptables). "
        "IptablesMarkMask, IptablesRefreshInterval, MaxIpsetSize, DefaultEndpointToHostAction "
        "and DropActionOverride apply to both; on a switch, the other backend's rules and sets "
        "are removed StartupCleanupDelay after the first in-sync. See docs/operations.md.",
        IPTABLES,
    ),
    Param(
        "DataplaneDriverPrometheusMetricsPort",
        t.PORT,
        "9092",
        "TCP port of the dataplane driver process's Prometheus metrics server.",
        IPTABLES,
    ),
    # -- OpenStack ------------------------------------------------------------------------
    Param(
        "MetadataAddr",
        t.HostOrIpOrNone(),
        "127.0.0.1",
        "IP address or host name of the server answering VM metadata queries (nova-api). "
        "None (any case) disables the metadata NAT rule.",
        OPENSTACK,
    ),
    Param(
        "MetadataPort",
        t.PORT,
        "8775",
        "Port of the metadata server.",
        OPENSTACK,
    ),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
# Every spelling a parameter can be given under (name or alias) -> its parameter.
BY_SPELLING: dict[str, Param] = {s: p for p in PARAMS for s in (p.name, *p.aliases)}


def default_value(name: str) -> Any:
    """The parsed default of a parameter whose default is in the table (not computed): what
    Felix uses when no source sets it. Other modules take their defaults from here."""
    param = BY_NAME[name]
    if param.default is None:
        raise KeyError(f"{name}'s default is computed at load time")
    return param.type.parse(param.default)


def choices(name: str) -> tuple[str, ...]:
    """The words a parameter of the Choice type accepts, in their canonical case."""
    kind = BY_NAME[name].type
    if not isinstance(kind, t.Choice):
        raise TypeError(f"{name} is not a choice")
    return kind.choices
