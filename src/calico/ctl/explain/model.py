"""What `explain` knows about the cloud: one snapshot of /calico/v1, and for each host involved
what Felix on that host computes from it, with Felix's own code: its configuration (etcd's host
and global values over the defaults; for the host calicoctl runs on, also its environment and
config file, as Felix would read them), a `CalcGraph` for that host fed the whole snapshot, the
messages it sends applied to the contract checker's dataplane state (endpoints with their ordered
tiers, active policies and profiles with resolved rules, IP sets with their members), and the
dataplane's own interface ownership (`dataplane.workloads`)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from functools import cached_property

from calico.common import datamodel_v1 as dm
from calico.common import resources as res
from calico.common.sync import SyncStatus
from calico.felix.calc.checker import ContractChecker, DataplaneState
from calico.felix.calc.graph import CalcGraph
from calico.felix.config.loader import Config, filter_etcd
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.dataplane.workloads import Workloads
from calico.felix.diags import resolve_leniently

Endpoint = res.WorkloadEndpoint | res.HostEndpoint
EndpointKey = dm.WorkloadEndpointKey | dm.HostEndpointKey


@dataclass(frozen=True)
class LocalConfig:
    """The configuration sources of the host calicoctl runs on (environment and file)."""

    hostname: str
    env_raw: dict[str, str]
    file_raw: dict[str, str]
    file_path: str


@dataclass
class HostView:
    """What Felix on `hostname` programs, computed from the snapshot."""

    hostname: str
    config: Config | None
    render: RenderConfig
    state: DataplaneState
    workloads: Workloads
    problems: list[str] = field(default_factory=list)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.render.interface_prefixes


@dataclass(frozen=True)
class EndpointRecord:
    """An endpoint key in the snapshot, its value if valid, else why not."""

    key: EndpointKey
    raw: str
    endpoint: Endpoint | None
    problem: str | None

    def addresses(self, version: int) -> tuple[str, ...]:
        """Its addresses of one IP version (for an invalid endpoint, what its value says, as
        far as it can be read: an invalid destination is still where the packet is sent)."""
        ep = self.endpoint
        if isinstance(ep, res.WorkloadEndpoint):
            nets = ep.ipv4_nets if version == 4 else ep.ipv6_nets
            return tuple(n.split("/")[0] for n in nets)
        if isinstance(ep, res.HostEndpoint):
            return ep.expected_ipv4_addrs if version == 4 else ep.expected_ipv6_addrs
        return _raw_addresses(self.raw, version)


class Snapshot:
    """The datastore at one revision, and per-host views of it (computed on demand)."""

    def __init__(self, items: dict[str, str], local: LocalConfig | None = None) -> None:
        self.items = items
        self.local = local
        self._views: dict[str, HostView] = {}

    @cached_property
    def endpoints(self) -> list[EndpointRecord]:
        records = []
        for path in sorted(self.items):
            key = dm.parse_key(path)
            if not isinstance(key, dm.WorkloadEndpointKey | dm.HostEndpointKey):
                continue
            raw = self.items[path]
            try:
                endpoint: Endpoint | None = (
                    res.parse_workload_endpoint(raw, key)
                    if isinstance(key, dm.WorkloadEndpointKey)
                    else res.parse_host_endpoint(raw, key)
                )
                problem = None
            except res.InvalidValue as e:
                endpoint, problem = None, str(e)
            records.append(EndpointRecord(key, raw, endpoint, problem))
        return records

    def by_address(self, address: str) -> list[EndpointRecord]:
        version = ipaddress.ip_address(address).version
        return [r for r in self.endpoints if address in r.addresses(version)]

    def view(self, hostname: str) -> HostView:
        if hostname not in self._views:
            self._views[hostname] = self._compute(hostname)
        return self._views[hostname]

    def _config(self, hostname: str) -> tuple[Config | None, list[str]]:
        """Felix's configuration on `hostname`, as far as calicoctl can know it."""
        host_raw = self._config_dir(dm.host_config_dir(hostname) + "/")
        global_raw = self._config_dir(dm.CONFIG_DIR + "/")
        env: dict[str, str] = {}
        file: dict[str, str] = {}
        path = ""
        if self.local is not None and self.local.hostname == hostname:
            env, file, path = self.local.env_raw, self.local.file_raw, self.local.file_path
        return resolve_leniently(
            env,
            file,
            filter_etcd(host_raw, f"etcd ({hostname}) host config"),
            filter_etcd(global_raw, "etcd global config"),
            path,
        )

    def _config_dir(self, prefix: str) -> dict[str, str]:
        return {
            path[len(prefix) :]: value
            for path, value in self.items.items()
            if path.startswith(prefix) and "/" not in path[len(prefix) :]
        }

    def _compute(self, hostname: str) -> HostView:
        config, problems = self._config(hostname)
        render = _render_config(config)
        graph = CalcGraph(hostname, render.interface_prefixes)
        graph.on_updates(self.items.items())
        graph.on_status(SyncStatus.IN_SYNC)
        checker = ContractChecker()
        checker.apply_flush(graph.flush())
        workloads = Workloads()
        for update in checker.state.workload_endpoints.values():
            workloads.update(update)
        return HostView(hostname, config, render, checker.state, workloads, problems)


def _raw_addresses(raw: str, version: int) -> tuple[str, ...]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return ()
    nets = data.get(f"ipv{version}_nets") if isinstance(data, dict) else None
    found = []
    for net in nets if isinstance(nets, list) else ():
        try:
            found.append(str(ipaddress.ip_interface(net).ip))
        except (TypeError, ValueError):
            continue
    return tuple(a for a in found if "%" not in a)


def _render_config(config: Config | None) -> RenderConfig:
    """The rule-rendering settings (what per-endpoint chains depend on); the defaults' if the
    configuration could not be resolved at all."""
    if config is None:
        return RenderConfig()
    # No metadata rules: a MetadataAddr host name would need resolving, and the chains explain
    # reads do not use them.
    return RenderConfig.from_config({**config.values(), "MetadataAddr": None})
