"""Reaching etcd exactly as Felix does: the environment (`FELIX_*`), the config file
(`-c/--config-file`, default /etc/calico/felix.cfg) and the defaults, resolved by Felix's own
loader (`calico.felix.config.loader`); `--etcd-endpoints` and `--etcd-api` act as
`FELIX_ETCDENDPOINTS` and `FELIX_DATAPLANEDRIVER` would."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from calico.common.etcd import connect
from calico.common.etcd.base import KVStore
from calico.common.etcd.failover import FailoverClient
from calico.ctl.errors import Invalid
from calico.felix.config.loader import (
    Config,
    ConfigErrors,
    ConfigFileError,
    etcd_api,
    etcd_settings,
    read_env,
    read_file,
    resolve,
)

ETCD_TIMEOUT = 10.0
ETCD_DRIVERS = ("etcdv2", "etcdv3")


@dataclass
class Local:
    """What calicoctl resolved from its environment and file (etcd not read)."""

    config: Config
    env_raw: dict[str, str]
    file_raw: dict[str, str]
    config_file: str
    _client: list[KVStore] = field(default_factory=list)

    @property
    def hostname(self) -> str:
        return str(self.config["FelixHostname"])

    @property
    def api(self) -> str:
        return etcd_api(self.config)

    @property
    def endpoints(self) -> str:
        return ",".join(self.config["EtcdEndpoints"])

    def client(self) -> KVStore:
        """One etcd client for the whole command, made on first use."""
        if not self._client:
            settings = etcd_settings(self.config, timeout=ETCD_TIMEOUT)
            # In the order given, moving on to the next member when one does not answer.
            client = connect(self.api, settings, shuffle=False)
            self._client.append(FailoverClient(client, len(settings.endpoints)))
        return self._client[0]

    def close(self) -> None:
        for client in self._client:
            client.close()
        self._client.clear()


def load(
    environ: Mapping[str, str],
    config_file: str,
    etcd_endpoints: str | None = None,
    api: str | None = None,
) -> Local:
    """The local configuration; Invalid (exit 2) with Felix's own messages if it is bad."""
    try:
        env_raw = read_env(environ)
        file_raw = read_file(config_file)
    except ConfigFileError as e:
        raise Invalid(f"configuration error: {e}") from None
    if etcd_endpoints:
        env_raw["EtcdEndpoints"] = etcd_endpoints
    if api:
        env_raw["DataplaneDriver"] = f"etcd{api}"
    try:
        config = resolve(env_raw, file_raw, file_path=config_file)
    except ConfigErrors as e:
        raise Invalid(*(f"configuration error: {p}" for p in e.problems)) from None
    driver = config["DataplaneDriver"]
    if driver not in ETCD_DRIVERS:
        raise Invalid(
            f"DataplaneDriver is {driver} (from {config.source('DataplaneDriver')}): calicoctl "
            "works on the etcd datastore (etcdv2 or etcdv3; --etcd-api v2|v3)"
        )
    return Local(config, env_raw, file_raw, config_file)
