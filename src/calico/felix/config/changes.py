"""Detects, after start, a change of Felix's own configuration in etcd.

Felix does not apply configuration live: when a parameter that comes from etcd (global or
this host's) changes its resolved value, Felix exits and its service manager restarts it.
Keys that are not parameters, local-only parameters, other hosts' config and values that
a higher-priority source overrides never count as a change.
"""

from __future__ import annotations

from collections.abc import Mapping

from calico.common import datamodel_v1
from calico.felix.config.loader import Config, ConfigErrors, resolve
from calico.felix.config.params import BY_SPELLING


def _relevant(name: str) -> bool:
    param = BY_SPELLING.get(name)
    return param is not None and not param.local_only


class ConfigChangeDetector:
    def __init__(
        self,
        startup: Config,
        env: Mapping[str, str],
        file: Mapping[str, str],
        etcd_host: Mapping[str, str],
        etcd_global: Mapping[str, str],
        file_path: str,
    ):
        self._startup = startup.values()
        self._env = dict(env)
        self._file = dict(file)
        self._file_path = file_path
        self._hostname = startup["FelixHostname"]
        self._host = {BY_SPELLING[k].name: v for k, v in etcd_host.items() if _relevant(k)}
        self._global = {BY_SPELLING[k].name: v for k, v in etcd_global.items() if _relevant(k)}

    def update(self, key: str, value: str | None) -> list[str] | None:
        """Feed one datastore update; returns the changes (as text) if Felix must restart."""
        parsed = datamodel_v1.parse_config_key(key)
        if parsed is None:
            return None
        host, name = parsed
        if not _relevant(name) or (host is not None and host != self._hostname):
            return None
        target = self._global if host is None else self._host
        name = BY_SPELLING[name].name
        if value is None:
            if target.pop(name, None) is None:
                return None
        elif target.get(name) == value:
            return None
        else:
            target[name] = value
        return self._differences()

    def _differences(self) -> list[str] | None:
        try:
            config = resolve(
                self._env, self._file, self._host, self._global, file_path=self._file_path
            )
        except ConfigErrors as e:
            return [f"now invalid: {p}" for p in e.problems]
        now = config.values()
        changes = [
            f"{name}: {self._startup[name]!r} -> {now[name]!r}"
            for name in now
            if now[name] != self._startup[name]
        ]
        return changes or None
