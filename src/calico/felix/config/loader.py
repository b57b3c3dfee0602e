"""Felix configuration from its four sources: env > file > etcd host > etcd global > default.

Reading a source yields a plain dict of parameter name -> raw string. `resolve()` is pure:
given the raw dicts it returns a `Config` (every parameter's parsed value and the source it
came from) or raises `ConfigErrors` with one line per problem. The first source that holds a
value for a parameter wins, even if that value is bad: a bad value is an error, never a
silent fall-through to a lower source.
"""

from __future__ import annotations

import configparser
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from calico.common import datamodel_v1
from calico.common.etcd.base import EtcdSettings, KVStore
from calico.felix.config.params import (
    BY_SPELLING,
    MARK_BITS_RECOMMENDED,
    PARAMS,
    Param,
)
from calico.felix.config.types import BadValue

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "/etc/calico/felix.cfg"
ENV_PREFIX = "FELIX_"


class Source(StrEnum):
    ENV = "env"
    FILE = "file"
    ETCD_HOST = "etcd-host"
    ETCD_GLOBAL = "etcd-global"
    DEFAULT = "default"


# Highest priority first.
PRECEDENCE = (Source.ENV, Source.FILE, Source.ETCD_HOST, Source.ETCD_GLOBAL)


@dataclass(frozen=True)
class Problem:
    """One reason Felix cannot start; str() is the line printed for the operator."""

    name: str
    raw: str | None
    source: Source | None
    reason: str
    file_path: str = ""

    def __str__(self) -> str:
        if self.raw is None or self.source is None:
            return f"{self.name}: {self.reason}"
        return f"{self.name}={self.raw!r} (from {self.origin()}): {self.reason}"

    def origin(self) -> str:
        if self.source == Source.ENV:
            return f"env {ENV_PREFIX}{self.name.upper()}"
        if self.source == Source.FILE:
            return f"config file {self.file_path}".rstrip()
        return str(self.source)


class ConfigErrors(Exception):
    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class ConfigFileError(Exception):
    """The config file exists but cannot be read or parsed."""


@dataclass(frozen=True)
class Setting:
    value: Any
    source: Source
    raw: str


class Config:
    """The resolved configuration: a read-only mapping of parameter name -> value."""

    def __init__(self, settings: dict[str, Setting], warnings: list[str]):
        self._settings = settings
        self.warnings = warnings

    def __getitem__(self, name: str) -> Any:
        return self._settings[name].value

    def source(self, name: str) -> Source:
        return self._settings[name].source

    def items(self) -> list[tuple[str, Setting]]:
        return list(self._settings.items())

    def as_json(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"value": s.value, "source": str(s.source)} for name, s in self._settings.items()
        }

    def values(self) -> dict[str, Any]:
        return {name: s.value for name, s in self._settings.items()}


def computed_default(name: str, partial: dict[str, Any]) -> str:
    """Raw defaults that depend on the host or on other parameters (default=None in the table)."""
    if name == "FelixHostname":
        return socket.gethostname()
    if name == "EtcdEndpoints":
        return f"{partial['EtcdScheme']}://{partial['EtcdAddr']}"
    raise KeyError(name)


# -- Reading sources ---------------------------------------------------------------------------


def read_env(environ: Mapping[str, str]) -> dict[str, str]:
    """FELIX_ + upper-case name, for every known parameter (and alias)."""
    raw: dict[str, str] = {}
    for spelling, param in BY_SPELLING.items():
        value = environ.get(ENV_PREFIX + spelling.upper())
        if value is not None and value.strip() and param.name not in raw:
            raw[param.name] = value
    return raw


def read_file(path: str) -> dict[str, str]:
    """The ini file, section names ignored; a missing file is fine, a malformed one is not."""
    if not os.path.exists(path):
        log.info("Config file %s not found; continuing without it", path)
        return {}
    # strict=False: a key repeated in a section keeps its last value (as 1.4 did).
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"cannot read config file {path}: {e}") from None
    except configparser.Error as e:
        reason = str(e).replace("\n", " ")
        raise ConfigFileError(f"malformed config file {path}: {reason}") from None

    lowered = {spelling.lower(): p for spelling, p in BY_SPELLING.items()}
    raw: dict[str, str] = {}
    seen_in: dict[str, str] = {}
    # DEFAULT first, then the sections in file order; a later section overrides.
    sections: list[tuple[str, Mapping[str, str]]] = [("DEFAULT", parser.defaults())]
    for name in parser.sections():
        # items() mixes DEFAULT in; keep what the section itself sets (or overrides).
        defaults = parser.defaults()
        own = {k: v for k, v in parser.items(name, raw=True) if defaults.get(k) != v}
        sections.append((name, own))
    for section, options in sections:
        for key, value in options.items():
            param = lowered.get(key)
            if param is None:
                log.warning("Ignoring unknown parameter %r in %s [%s]", key, path, section)
                continue
            if not value.strip():
                continue
            if param.name in seen_in and raw[param.name] != value:
                log.warning(
                    "%s set in sections [%s] and [%s] of %s; using [%s]",
                    param.name,
                    seen_in[param.name],
                    section,
                    path,
                    section,
                )
            raw[param.name] = value
            seen_in[param.name] = section
    return raw


def filter_etcd(values: Mapping[str, str], where: str) -> dict[str, str]:
    """Keep the known, non-local parameters of an etcd config directory (names case-sensitive)."""
    raw: dict[str, str] = {}
    for name, value in values.items():
        param = BY_SPELLING.get(name)
        if param is None:
            log.warning("Ignoring unknown config key %s in %s", name, where)
        elif param.local_only:
            log.warning(
                "Ignoring %s in %s: it can only be set in the environment or config file",
                name,
                where,
            )
        else:
            raw[param.name] = value
    return raw


# -- Resolution ------------------------------------------------------------------------------


def resolve(
    env: Mapping[str, str],
    file: Mapping[str, str],
    etcd_host: Mapping[str, str] | None = None,
    etcd_global: Mapping[str, str] | None = None,
    *,
    file_path: str = DEFAULT_CONFIG_FILE,
) -> Config:
    """Merge raw sources into a validated Config, or raise ConfigErrors listing every problem."""
    sources: dict[Source, Mapping[str, str]] = {
        Source.ENV: env,
        Source.FILE: file,
        Source.ETCD_HOST: etcd_host or {},
        Source.ETCD_GLOBAL: etcd_global or {},
    }
    settings: dict[str, Setting] = {}
    problems: list[Problem] = []

    # Parameters with computed defaults go last: EtcdEndpoints depends on EtcdScheme/EtcdAddr.
    ordered = sorted(PARAMS, key=lambda p: p.default is None)
    partial: dict[str, Any] = {}
    for param in ordered:
        source, raw = _first_source(param, sources)
        if source is None:
            try:
                raw = param.default if param.default is not None else ""
                if param.default is None:
                    raw = computed_default(param.name, partial)
            except KeyError:
                continue  # depends on a parameter that was itself bad
            source = Source.DEFAULT
        assert raw is not None
        try:
            value = param.type.parse(raw)
        except BadValue as e:
            problems.append(Problem(param.name, raw, source, str(e)))
            continue
        settings[param.name] = Setting(value, source, raw)
        partial[param.name] = raw

    warnings: list[str] = []
    problems.extend(_cross_checks(settings, warnings))
    if problems:
        raise ConfigErrors([replace(p, file_path=file_path) for p in problems])
    # Keep the table's order for output.
    ordered_settings = {p.name: settings[p.name] for p in PARAMS}
    return Config(ordered_settings, warnings)


def _first_source(
    param: Param, sources: Mapping[Source, Mapping[str, str]]
) -> tuple[Source | None, str | None]:
    for source in PRECEDENCE:
        if param.local_only and source in (Source.ETCD_HOST, Source.ETCD_GLOBAL):
            continue
        value = sources[source].get(param.name)
        if value is not None:
            return source, value
    return None, None


def _cross_checks(settings: dict[str, Setting], warnings: list[str]) -> list[Problem]:
    """Checks across parameters; each runs only when the values it needs parsed."""
    problems: list[Problem] = []

    def value(name: str) -> Any:
        return settings[name].value if name in settings else None

    mask = value("IptablesMarkMask")
    if mask is not None and mask.bit_count() < MARK_BITS_RECOMMENDED:
        warnings.append(
            f"IptablesMarkMask={settings['IptablesMarkMask'].raw} has {mask.bit_count()} bits "
            f"set; at least {MARK_BITS_RECOMMENDED} are recommended"
        )

    if value("ReportingIntervalSecs") == 0:
        warnings.append("ReportingIntervalSecs=0: status reporting is disabled")

    if value("DropActionOverride") in ("ACCEPT", "LOG-and-ACCEPT"):
        warnings.append(
            f"DropActionOverride={value('DropActionOverride')}: security is disabled, packets "
            "that policy would drop are accepted"
        )

    etcd_names = ("EtcdKeyFile", "EtcdCertFile", "EtcdCaFile", "EtcdEndpoints")
    # With the Kubernetes datastore the etcd files are not used (Felix says so at start).
    if value("DataplaneDriver") != "kubernetes" and all(n in settings for n in etcd_names):
        problems.extend(_tls_checks(settings))
    return problems


def _tls_checks(settings: dict[str, Setting]) -> list[Problem]:
    """Client key and certificate: both or neither, and readable; the CA file readable."""
    problems: list[Problem] = []
    key, cert = settings["EtcdKeyFile"], settings["EtcdCertFile"]
    if (key.value is None) != (cert.value is None):
        given, missing = (
            ("EtcdKeyFile", "EtcdCertFile") if key.value else ("EtcdCertFile", "EtcdKeyFile")
        )
        s = settings[given]
        problems.append(
            Problem(given, s.raw, s.source, f"set without {missing}: set both or neither")
        )
    https = settings["EtcdEndpoints"].value[0].startswith("https://")
    names = ["EtcdKeyFile", "EtcdCertFile"]
    # The CA file only matters for https; the default (system store) may be absent on http hosts.
    if https or settings["EtcdCaFile"].source != Source.DEFAULT:
        names.append("EtcdCaFile")
    for name in names:
        s = settings[name]
        if s.value is not None and not _readable_file(s.value):
            problems.append(
                Problem(name, s.raw, s.source, "file does not exist or is not readable")
            )
    return problems


def _readable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def read_etcd(client: KVStore, hostname: str) -> tuple[dict[str, str], dict[str, str]]:
    """The raw (host, global) config directories in etcd: name -> value, direct children only."""

    def directory(path: str) -> dict[str, str]:
        below = path + "/"
        items = client.read_prefix(path).items
        return {
            key[len(below) :]: value
            for key, value in items.items()
            if key.startswith(below) and "/" not in key[len(below) :]
        }

    return (
        directory(datamodel_v1.host_config_dir(hostname)),
        directory(datamodel_v1.global_config_dir()),
    )


def etcd_settings(config: Config, timeout: float = 10.0) -> EtcdSettings:
    return EtcdSettings(
        endpoints=tuple(config["EtcdEndpoints"]),
        key_file=config["EtcdKeyFile"],
        cert_file=config["EtcdCertFile"],
        ca_file=config["EtcdCaFile"],
        timeout=timeout,
    )


def etcd_api(config: Config) -> str:
    """The etcd API version the DataplaneDriver parameter selects."""
    return {"etcdv2": "v2", "etcdv3": "v3"}[config["DataplaneDriver"]]
