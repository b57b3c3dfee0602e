"""Neutron objects -> the etcd JSON of the v1 data model (reference: openstack.md §3): what every
translation shares.

The translation is pure functions over plain dicts as Neutron's API returns them, so that they
are tested without Neutron installed and the driver, the resync and the tests all produce
byte-identical values (the resync compares JSON text to decide whether a key differs). One
module per kind of object:

* `calico.openstack.endpoints`: ports -> workload endpoints (and which ports are endpoints);
* `calico.openstack.security_groups`: security groups and their rules -> profiles;
* `calico.openstack.subnets`: subnets -> DHCP subnets;

and this module: the error they raise, logging a problem once, the one JSON encoding and
address canonicalisation.

Every value here comes from a tenant (through the Neutron API) and is hostile until checked
(docs/openstack.md, "What is refused"). Each translation either returns values that Felix's and
the DHCP agent's own parsers accept, or raises `Untranslatable` for the one object, which the
caller then leaves out of etcd: no endpoint, no rule, no subnet. Leaving an object out always
fails closed: a missing endpoint has no connectivity, a missing rule admits nothing, and nothing
is ever widened to make it fit (an address-group rule is never "from anywhere").
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from calico.common.quoting import quoted
from calico.common.resources import InvalidValue

log = logging.getLogger(__name__)


class Untranslatable(ValueError):
    """One Neutron object that cannot be written faithfully. Its message names the object and
    quotes (length-capped) the offending value; the caller logs it once and leaves the object
    out, which fails closed."""


@contextmanager
def about(where: str) -> Iterator[None]:
    """Re-raise an Untranslatable (or a data-model parser's InvalidValue) from inside the block
    as an Untranslatable whose message starts with `where` (the object, the field)."""
    try:
        yield
    except (Untranslatable, InvalidValue) as e:
        raise Untranslatable(f"{where}: {e}") from None


# --- Logging each problem once ---------------------------------------------------------------

_WARNED_MAX = 10_000
_warned: dict[str, None] = {}
_warned_lock = threading.Lock()


def warn_once(message: str, exc_info: BaseException | None = None) -> bool:
    """Log `message` as a warning (with exc_info's traceback, if given) the first time it is
    seen in this process; True if it was logged now.

    The resync translates every object every 60 s: a bad object is reported when first met
    (and again only after 10,000 other problems have been seen), not on every pass. Messages
    must therefore be deterministic: the object's ID, the field and the quoted value.
    """
    with _warned_lock:
        if message in _warned:
            return False
        if len(_warned) >= _WARNED_MAX:
            _warned.clear()
        _warned[message] = None
    log.warning("%s", message, exc_info=exc_info)
    return True


def warn_left_out(what: str, e: Exception, context: str = "") -> None:
    """Log once why one object (`what`: "port 'x'") was left out of etcd: its data cannot be
    translated (fail closed), or something unexpected failed (with the traceback). `context`
    starts the message ("resync: ")."""
    if isinstance(e, Untranslatable):
        warn_once(f"{context}{e}: left out of etcd")
    else:
        warn_once(f"{context}{what} failed: {type(e).__name__}: {quoted(str(e))}", exc_info=e)


def forget_warnings() -> None:
    """Forget which problems were logged (tests: each sees its own "logged once")."""
    with _warned_lock:
        _warned.clear()


# --- Values ----------------------------------------------------------------------------------


def dumps(value: object) -> str:
    """The one JSON encoding for everything written, so equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def ip_text(value: object, version: int | None = None) -> str:
    """An IP address as canonical text (no IPv6 zone), of `version` if given."""
    if not isinstance(value, str):
        raise Untranslatable(f"IP address {quoted(value)} is not a string")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise Untranslatable(f"invalid IP address {quoted(value)}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise Untranslatable(f"IP address {quoted(value)} has a zone")
    if version is not None and address.version != version:
        raise Untranslatable(f"IP address {quoted(value)} is not IPv{version}")
    return str(address)


def cidr_text(value: object, version: int | None = None) -> str:
    """A CIDR (or a bare address) as canonical network text, of `version` if given."""
    if not isinstance(value, str):
        raise Untranslatable(f"CIDR {quoted(value)} is not a string")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Untranslatable(f"invalid CIDR {quoted(value)}") from None
    if "%" in str(network):
        raise Untranslatable(f"CIDR {quoted(value)} has a zone")
    if version is not None and network.version != version:
        raise Untranslatable(f"CIDR {quoted(value)} is not IPv{version}")
    return str(network)
