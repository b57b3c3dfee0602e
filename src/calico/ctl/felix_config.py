"""`calicoctl config get|set|unset`: Felix's parameters in etcd, global
(`/calico/v1/config/<Name>`) or for one host (`/calico/v1/host/<host>/config/<Name>`).

Names and values are checked against Felix's own parameter table
(`calico.felix.config.params`): an unknown name or a value Felix would refuse is invalid input
(exit 2); a local-only parameter is refused (exit 1) because Felix never reads it from etcd.
Writes are compare-and-swap against the value just read.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common.etcd.base import KVStore
from calico.common.quoting import quoted
from calico.ctl import output
from calico.ctl.errors import Conflict, Invalid, NotFound, Refused
from calico.ctl.store import etcd_call
from calico.felix.config.loader import ConfigErrors, filter_etcd, resolve
from calico.felix.config.params import BY_SPELLING, Param
from calico.felix.config.types import BadValue

GLOBAL = "global"


@dataclass(frozen=True)
class Setting:
    scope: str  # "global" or the host name
    name: str
    value: str
    revision: int
    problem: str | None = None

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"scope": self.scope, "name": self.name, "value": self.value}
        row["revision"] = self.revision
        if self.problem:
            row["problem"] = self.problem
        return row


def lookup(name: str) -> Param:
    """The parameter a name (any case, or an alias) means; Invalid if there is none."""
    found = BY_SPELLING.get(name) or {s.lower(): p for s, p in BY_SPELLING.items()}.get(
        name.lower()
    )
    if found is None:
        close = difflib.get_close_matches(name, list(BY_SPELLING), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise Invalid(f"unknown Felix parameter {quoted(name)}{hint}")
    return found


def refuse_local_only(param: Param) -> None:
    if param.local_only:
        raise Refused(
            f"{param.name} is local-only: Felix never reads it from etcd (it would be ignored); "
            f"set it in the environment (FELIX_{param.name.upper()}) or the config file on "
            "each host"
        )


def _key(name: str, host: str | None) -> str:
    key = dm.HostConfigKey(host, name) if host else dm.GlobalConfigKey(name)
    try:
        return key.path
    except ValueError as e:
        raise Invalid(str(e)) from None


def _problem(name: str, raw: str) -> str | None:
    param = BY_SPELLING.get(name)
    if param is None:
        return "not a Felix parameter (ignored)"
    if param.local_only:
        return "local-only (ignored in etcd)"
    try:
        param.type.parse(raw)
    except BadValue as e:
        return f"invalid: {e}"
    return None


def read_settings(client: KVStore, host: str | None, all_hosts: bool) -> list[Setting]:
    """Every config key in etcd: global, and one host's (or every host's)."""
    settings: list[Setting] = []
    prefixes = [dm.CONFIG_DIR]
    if host is not None:
        prefixes.append(f"{dm.HOST_DIR}/{host}/config")
    elif all_hosts:
        prefixes.append(dm.HOST_DIR)
    for prefix in prefixes:
        items = etcd_call(f"reading {prefix}", client.read_prefix_versioned, prefix)
        for path, (value, version) in sorted(items.items()):
            scope_name = dm.parse_config_key(path)
            if scope_name is None:
                continue
            scope, name = scope_name
            settings.append(Setting(scope or GLOBAL, name, value, version, _problem(name, value)))
    return settings


def get(client: KVStore, name: str | None, host: str | None, fmt: str) -> str:
    param = lookup(name) if name else None
    settings = read_settings(client, host, all_hosts=host is None and name is None)
    if param is not None:
        settings = [s for s in settings if BY_SPELLING.get(s.name) is param]
        settings = [s for s in settings if s.scope in (GLOBAL, host)]
    if fmt in ("json", "yaml"):
        rows = [s.row() for s in settings]
        if param is not None:
            rows.append({"scope": "default", "name": param.name, "value": param.default})
        return output.dump(rows, fmt)
    table_rows: list[list[object]] = [[s.scope, s.name, s.value, s.problem] for s in settings]
    if param is not None:
        default = "(computed)" if param.default is None else param.default
        table_rows.append(["default", param.name, default, None])
        in_effect = _in_effect(settings, host)
        table_rows = [[*r, "*" if i == in_effect else ""] for i, r in enumerate(table_rows)]
        text = output.table(["SCOPE", "NAME", "VALUE", "PROBLEM", "IN EFFECT"], table_rows)
        if param.local_only:
            text += f"{param.name} is local-only: Felix takes it from its environment or file.\n"
        return text + "(on each host, its environment and config file override etcd)\n"
    return output.table(["SCOPE", "NAME", "VALUE", "PROBLEM"], table_rows)


def _in_effect(settings: list[Setting], host: str | None) -> int:
    """The row that applies in etcd: the host's, else the global one, else the default."""
    for scope in (host, GLOBAL):
        for i, s in enumerate(settings):
            if scope is not None and s.scope == scope and s.problem is None:
                return i
    return len(settings)


def set_value(client: KVStore, name: str, raw: str, host: str | None) -> str:
    param = lookup(name)
    refuse_local_only(param)
    if not raw.strip():
        raise Invalid(f"{param.name}: an empty value counts as not set; use `config unset`")
    try:
        param.type.parse(raw)
    except BadValue as e:
        raise Invalid(f"{param.name}={raw!r}: {e}") from None
    _cross_check(client, param, raw, host)
    path = _key(param.name, host)
    current = etcd_call(f"reading {path}", lambda: client.get_versioned(path))
    where = f"host {host}" if host else GLOBAL
    if current is not None and current[0] == raw:
        return f"{param.name} is already {raw!r} ({where})\n"
    if current is None:
        ok = etcd_call(f"writing {path}", lambda: client.create(path, raw))
    else:
        ok = etcd_call(f"writing {path}", lambda: client.put_if(path, raw, current[1])) is not None
    if not ok:
        raise Conflict(f"{path} was changed by another writer meanwhile; nothing written: retry")
    return f"{param.name} set to {raw!r} ({where})\n"


def _cross_check(client: KVStore, param: Param, raw: str, host: str | None) -> None:
    """Felix's checks across parameters (e.g. IptablesMarkMask's bits), with the new value in
    place, on the etcd configuration alone."""
    host_raw: dict[str, str] = {}
    global_raw: dict[str, str] = {}
    for s in read_settings(client, host, all_hosts=False):
        target = global_raw if s.scope == GLOBAL else host_raw
        target[s.name] = s.value
    (host_raw if host else global_raw)[param.name] = raw
    try:
        resolve({}, {}, filter_etcd(host_raw, "host"), filter_etcd(global_raw, "global"))
    except ConfigErrors as e:
        mine = [str(p) for p in e.problems if p.name == param.name]
        if mine:
            raise Invalid(*mine) from None


def unset(client: KVStore, name: str, host: str | None) -> str:
    param = BY_SPELLING.get(name)
    key_name = param.name if param is not None and param.name == name else name
    path = _key(key_name, host)
    current = etcd_call(f"reading {path}", lambda: client.get_versioned(path))
    if current is None and param is None:
        param = lookup(name)  # a case or alias spelling: try the canonical name
        path = _key(param.name, host)
        current = etcd_call(f"reading {path}", lambda: client.get_versioned(path))
    if current is None:
        raise NotFound(f"{name} is not set in etcd ({f'host {host}' if host else GLOBAL})")
    if not etcd_call(f"deleting {path}", lambda: client.delete_if(path, current[1])):
        raise Conflict(f"{path} was changed by another writer meanwhile; nothing deleted: retry")
    return f"{path.rsplit('/', 1)[1]} unset ({f'host {host}' if host else GLOBAL})\n"
