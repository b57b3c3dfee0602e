"""Value types of Felix parameters: each turns a raw string into a typed value or says why not.

A type is a small frozen object with `parse(raw) -> value` (raising `BadValue` with a
human-readable reason) and `describe()` for generated documentation. `none` handling lives
here too, so that the parameter table can say per type what "none" means.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from calico.common.datamodel_v1 import ID_SEGMENT_RULE, valid_id


class BadValue(ValueError):
    """A raw value that does not parse; the message says why (without the value itself)."""


_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})


def _is_none(raw: str) -> bool:
    return raw.strip().lower() == "none"


def _parse_int(raw: str) -> int:
    text = raw.strip()
    try:
        # Base 0 accepts 0x.. and 0o.., as both historical Felixes did.
        return int(text, 0)
    except ValueError:
        try:
            return int(text, 10)  # "010": int(x, 0) refuses leading zeros
        except ValueError:
            raise BadValue("not an integer") from None


@dataclass(frozen=True)
class Str:
    allow_empty: bool = True

    def parse(self, raw: str) -> str:
        value = raw.strip()
        if not value and not self.allow_empty:
            raise BadValue("must not be empty")
        return value

    def describe(self) -> str:
        return "string"


@dataclass(frozen=True)
class Bool:
    def parse(self, raw: str) -> bool:
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise BadValue("not a boolean (use true/false, yes/no, 1/0)")

    def describe(self) -> str:
        return "boolean"


@dataclass(frozen=True)
class Int:
    minimum: int | None = None
    maximum: int | None = None

    def parse(self, raw: str) -> int:
        value = _parse_int(raw)
        if self.minimum is not None and value < self.minimum:
            raise BadValue(f"must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise BadValue(f"must be at most {self.maximum}")
        return value

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"integer {self.minimum}-{self.maximum}"
        if self.minimum is not None:
            return f"integer >= {self.minimum}"
        return "integer"


@dataclass(frozen=True)
class Float:
    minimum: float = 0.0

    def parse(self, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise BadValue("not a number") from None
        if not math.isfinite(value):
            raise BadValue("not a finite number")
        if value < self.minimum:
            raise BadValue(f"must be at least {self.minimum:g}")
        return value

    def describe(self) -> str:
        return f"number >= {self.minimum:g}"


PORT = Int(1, 65535)


@dataclass(frozen=True)
class PortList:
    """Comma-separated TCP ports; `none` (or an empty list) means no ports."""

    def parse(self, raw: str) -> list[int]:
        if _is_none(raw):
            return []
        ports = []
        for item in raw.split(","):
            if not item.strip():
                continue
            try:
                ports.append(PORT.parse(item))
            except BadValue as e:
                raise BadValue(f"port {item.strip()!r}: {e}") from None
        return ports

    def describe(self) -> str:
        return "comma-separated TCP ports 1-65535, or none"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The 1.4 spellings are accepted too, so old felix.cfg files keep working.
_LOG_ALIASES = {"WARN": "WARNING", "ERR": "ERROR", "CRIT": "CRITICAL"}


@dataclass(frozen=True)
class LogLevel:
    """A severity name, case-insensitive; `none` disables that log target (None)."""

    def parse(self, raw: str) -> str | None:
        text = raw.strip().upper()
        if text == "NONE":
            return None
        text = _LOG_ALIASES.get(text, text)
        if text not in LOG_LEVELS:
            raise BadValue("not one of DEBUG, INFO, WARNING, ERROR, CRITICAL, NONE")
        return text

    def describe(self) -> str:
        return "DEBUG, INFO, WARNING, ERROR, CRITICAL or NONE (case-insensitive)"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words, matched case-insensitively, returned in canonical case."""

    choices: tuple[str, ...]

    def parse(self, raw: str) -> str:
        text = raw.strip().lower()
        for choice in self.choices:
            if choice.lower() == text:
                return choice
        raise BadValue(f"not one of {', '.join(self.choices)}")

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class TriState:
    """`auto`, or a boolean (Ipv6Support)."""

    def parse(self, raw: str) -> bool | str:
        if raw.strip().lower() == "auto":
            return "auto"
        try:
            return Bool().parse(raw)
        except BadValue:
            raise BadValue("not auto, true or false") from None

    def describe(self) -> str:
        return "auto, true or false"


@dataclass(frozen=True)
class OptionalPath:
    """A filesystem path, or `none`/empty for "not set" (None)."""

    def parse(self, raw: str) -> str | None:
        text = raw.strip()
        if not text or _is_none(text):
            return None
        return text

    def describe(self) -> str:
        return "path, or none"


# fullmatch everywhere: "$" would also match before a trailing newline.
_HOSTNAME_RE = re.compile(r"[a-zA-Z0-9_.-]+")


@dataclass(frozen=True)
class Hostname:
    def parse(self, raw: str) -> str:
        text = raw.strip()
        # The host name is an ID segment of every key Felix reads and writes for this host.
        if not valid_id(text):
            raise BadValue(f"not a hostname ({ID_SEGMENT_RULE})")
        return text

    def describe(self) -> str:
        return "hostname"


@dataclass(frozen=True)
class HostOrIpOrNone:
    """MetadataAddr: an IP address or a DNS name; `none` (any case) disables it (None)."""

    def parse(self, raw: str) -> str | None:
        text = raw.strip()
        if _is_none(text):
            return None
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        labels = text.rstrip(".").split(".")
        if not text or not all(
            re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?", x) for x in labels
        ):
            raise BadValue("not an IP address, a host name or none")
        return text

    def describe(self) -> str:
        return "IP address or host name, or none"


@dataclass(frozen=True)
class HostPort:
    """EtcdAddr: `host:port` (an IPv6 literal goes in brackets: `[::1]:2379`)."""

    def parse(self, raw: str) -> str:
        text = raw.strip()
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise BadValue("not host:port")
        if host.startswith("[") and host.endswith("]"):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise BadValue("not host:port (bad IPv6 literal)") from None
        elif ":" in host or "/" in host or not _HOSTNAME_RE.fullmatch(host):
            raise BadValue("not host:port")
        try:
            PORT.parse(port)
        except BadValue as e:
            raise BadValue(f"port: {e}") from None
        return text

    def describe(self) -> str:
        return "host:port"


@dataclass(frozen=True)
class UrlList:
    """EtcdEndpoints: comma-separated `scheme://host:port` URLs, all of one scheme."""

    def parse(self, raw: str) -> list[str]:
        urls = [item.strip().rstrip("/") for item in raw.split(",") if item.strip()]
        if not urls:
            raise BadValue("no endpoints given")
        schemes = set()
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise BadValue(f"{url!r}: scheme must be http or https")
            if not parts.hostname or parts.path not in ("", "/"):
                raise BadValue(f"{url!r}: must be scheme://host:port with no path")
            if parts.username or parts.query or parts.fragment:
                raise BadValue(f"{url!r}: must be scheme://host:port with no user or query")
            try:
                _ = parts.port
            except ValueError:
                raise BadValue(f"{url!r}: bad port") from None
            schemes.add(parts.scheme)
        if len(schemes) > 1:
            raise BadValue("all endpoints must use the same scheme")
        return urls

    def describe(self) -> str:
        return "comma-separated scheme://host:port URLs"


@dataclass(frozen=True)
class HttpUrl:
    """One http:// or https:// URL with a host (e.g. the usage-report server)."""

    def parse(self, raw: str) -> str:
        text = raw.strip()
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadValue("not an http:// or https:// URL with a host")
        if parts.fragment:
            raise BadValue("must not have a #fragment")
        try:
            _ = parts.port
        except ValueError:
            raise BadValue("bad port") from None
        return text

    def describe(self) -> str:
        return "http:// or https:// URL"


_IFACE_PREFIX_RE = re.compile(r"[a-zA-Z0-9_-]{1,15}")


@dataclass(frozen=True)
class PrefixList:
    """InterfacePrefix: comma-separated interface-name prefixes."""

    def parse(self, raw: str) -> list[str]:
        prefixes = [item.strip() for item in raw.split(",") if item.strip()]
        if not prefixes:
            raise BadValue("no prefixes given")
        for prefix in prefixes:
            if not _IFACE_PREFIX_RE.fullmatch(prefix):
                raise BadValue(f"{prefix!r}: 1-15 characters of letters, digits, '_', '-'")
        return prefixes

    def describe(self) -> str:
        return "comma-separated interface name prefixes"


@dataclass(frozen=True)
class MarkMask:
    """IptablesMarkMask: a 32-bit mask with at least `min_bits` bits set."""

    min_bits: int

    def parse(self, raw: str) -> int:
        value = _parse_int(raw)
        if value <= 0 or value > 0xFFFFFFFF:
            raise BadValue("not a non-zero 32-bit number")
        if value.bit_count() < self.min_bits:
            raise BadValue(f"has {value.bit_count()} bits set; Felix needs {self.min_bits}")
        return value

    def describe(self) -> str:
        return f"32-bit mask with at least {self.min_bits} bits set"
