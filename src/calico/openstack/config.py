"""The `[calico]` options in neutron.conf (contract: shared/spec/openstack-configuration.md), and
the etcd connection they describe.

The names and the defaults of etcd_host / etcd_port are the interface: keep them exactly.
`etcd_endpoints` (a list of client URLs, for an etcd cluster) overrides them when set; the DHCP
agent reads the same options (calico.dhcp.agent.load_config). The connection tries every
endpoint in turn when one does not answer (calico.common.etcd.failover).
"""

from __future__ import annotations

import socket
from typing import Any

from oslo_config import cfg

from calico.common import etcd
from calico.common.etcd.base import EtcdSettings, settings_for_endpoints, settings_for_host
from calico.common.etcd.failover import FailoverClient
from calico.openstack.store import CalicoStore

GROUP = "calico"

OPTS = [
    cfg.StrOpt(
        "etcd_host",
        default="localhost",
        help="The hostname or IP of the etcd node/proxy.",
    ),
    cfg.PortOpt(
        "etcd_port",
        default=4001,
        help="The port to use for the etcd node/proxy.",
    ),
    cfg.ListOpt(
        "etcd_endpoints",
        default=[],
        sample_default="http://etcd1:2379,http://etcd2:2379,http://etcd3:2379",
        help="The client URLs of the members of an etcd cluster, comma-separated, all http:// "
        "or all https://. When set, etcd_host and etcd_port are not used. A request that "
        "gets no answer from one member is sent to the next.",
    ),
    cfg.StrOpt(
        "etcd_key_file",
        help="Client private key for etcd over TLS. Setting any of the three TLS files "
        "switches to https.",
    ),
    cfg.StrOpt(
        "etcd_cert_file",
        help="Client certificate for etcd over TLS (with etcd_key_file).",
    ),
    cfg.StrOpt(
        "etcd_ca_cert_file",
        help="CA certificate used to verify the etcd server over TLS.",
    ),
    cfg.StrOpt(
        "etcd_api_version",
        default="v2",
        choices=["v2", "v3"],
        help="The etcd API to store the /calico data under: v2 (default; what Felix reads "
        "unless told otherwise) or v3. Felix and the DHCP agent must use the same one.",
    ),
    cfg.StrOpt(
        "elector_name",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="This server's name in the election of the one neutron-server that resyncs "
        "etcd and reports status; must differ between servers.",
    ),
    cfg.IntOpt(
        "num_port_status_threads",
        default=4,
        min=1,
        help="Threads writing Felix's endpoint status reports into Neutron's port status.",
    ),
]


def register(conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    """Register the options (idempotent) and return the ConfigOpts they are on."""
    conf = cfg.CONF if conf is None else conf
    conf.register_opts(OPTS, GROUP)
    return conf


def etcd_settings(group: Any) -> EtcdSettings:
    """EtcdSettings from the [calico] group: etcd_endpoints when set (the URLs' scheme
    decides; TLS files with http:// URLs are refused), else etcd_host and etcd_port (any TLS
    file means https). ValueError, naming the option, for a bad value."""
    tls = (group.etcd_key_file, group.etcd_cert_file, group.etcd_ca_cert_file)
    if group.etcd_endpoints:
        try:
            return settings_for_endpoints(group.etcd_endpoints, *tls)
        except ValueError as e:
            raise ValueError(f"[{GROUP}] etcd_endpoints: {e}") from None
    return settings_for_host(group.etcd_host, group.etcd_port, *tls)


def connect_store(conf: cfg.ConfigOpts | None = None) -> CalicoStore:
    """A CalicoStore on the etcd the [calico] options name (registered beforehand), trying
    each endpoint in turn when one does not answer."""
    group = (cfg.CONF if conf is None else conf).calico
    settings = etcd_settings(group)
    client = etcd.connect(group.etcd_api_version, settings)
    return CalicoStore(FailoverClient(client, len(settings.endpoints)))


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For oslo-config-generator."""
    return [(GROUP, list(OPTS))]
