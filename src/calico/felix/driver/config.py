"""The dataplane driver's configuration: the typed value Felix sends in `DriverInit`.

Felix resolves its parameters (calico.felix.config) and hands the driver only what it uses, as
one frozen value, so the driver never reads parameters by name and a missing or misspelt one is
a type error, not a KeyError at run time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calico.felix.dataplane.rendering import RenderConfig, is_ipv4


@dataclass(frozen=True)
class LogConfig:
    """The driver logs where Felix does, at the same severities (None: that target is off)."""

    screen: str | None
    file_path: str | None
    file_level: str | None
    syslog_level: str | None


@dataclass(frozen=True)
class DriverConfig:
    render: RenderConfig  # metadata_addr: an IPv4 address, or None until `metadata_name` resolves
    metadata_name: str | None  # MetadataAddr when it is a host name (the driver resolves it)
    ipv6_support: bool | str  # True, False or "auto"
    max_ipset_size: int
    ignore_loose_rpf: bool
    nftables_mode: str  # NFTablesMode: "Disabled" (iptables), "Enabled" or "Auto"
    refresh_interval: float  # IptablesRefreshInterval; 0: never
    interface_poll_interval: float  # HostInterfacePollInterval; 0: never
    startup_cleanup_delay: float
    endpoint_reporting: bool
    metrics_port: int | None  # None: no Prometheus server
    log: LogConfig

    @property
    def interface_prefixes(self) -> tuple[str, ...]:
        return self.render.interface_prefixes

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> DriverConfig:
        """From Felix's resolved parameters (config/params.py names)."""
        metadata = values["MetadataAddr"]
        name = metadata if metadata is not None and not is_ipv4(metadata) else None
        render = RenderConfig.from_config({**values, "MetadataAddr": None if name else metadata})
        return cls(
            render=render,
            metadata_name=name,
            ipv6_support=values["Ipv6Support"],
            max_ipset_size=int(values["MaxIpsetSize"]),
            ignore_loose_rpf=bool(values["IgnoreLooseRPF"]),
            nftables_mode=str(values["NFTablesMode"]),
            refresh_interval=float(values["IptablesRefreshInterval"]),
            interface_poll_interval=float(values["HostInterfacePollInterval"]),
            startup_cleanup_delay=float(values["StartupCleanupDelay"]),
            endpoint_reporting=bool(values["EndpointReportingEnabled"]),
            metrics_port=(
                int(values["DataplaneDriverPrometheusMetricsPort"])
                if values["PrometheusMetricsEnabled"]
                else None
            ),
            log=LogConfig(
                screen=values["LogSeverityScreen"],
                file_path=values["LogFilePath"],
                file_level=values["LogSeverityFile"],
                syslog_level=values["LogSeveritySys"],
            ),
        )

    def replace(self, **changes: Any) -> DriverConfig:
        return dataclasses.replace(self, **changes)


def default_driver_config(**changes: Any) -> DriverConfig:
    """The driver configuration of a Felix with every parameter at its default (tests, the
    lab), with `changes` applied."""
    from calico.felix.config.loader import resolve  # noqa: PLC0415 (only where it is wanted)

    return DriverConfig.from_params(resolve({}, {}).values()).replace(**changes)
