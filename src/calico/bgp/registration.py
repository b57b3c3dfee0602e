"""What calico-bgp writes to etcd at start: this host's BGP addresses
(`/calico/bgp/v1/host/<host>/ip_addr_v4`, `ip_addr_v6`), Felix's `/calico/v1/host/<host>/bird_ip`
and, when `--as-number` is given, the host's `as_num`. An address family the host has no address
of has its key deleted, so that no stale address stays. Before writing, the other hosts'
addresses are read: an address another host already claims is logged as an error (the other
host's daemon logs it too, from its watch: `calico.bgp.peers`)."""

from __future__ import annotations

import logging

from calico.common import datamodel_bgp as bgp_keys
from calico.common import datamodel_v1 as dm
from calico.common.etcd.base import KVStore
from calico.common.quoting import quoted

log = logging.getLogger(__name__)


def claimants(client: KVStore, hostname: str, addresses: dict[int, str | None]) -> list[str]:
    """One line per other host that claims one of `addresses` (by version)."""
    problems = []
    items = client.read_prefix(bgp_keys.BGP_HOST_DIR).items
    for path, value in sorted(items.items()):
        key = bgp_keys.parse_bgp_key(path)
        if not isinstance(key, bgp_keys.BgpHostIPKey) or key.hostname == hostname:
            continue
        mine = addresses.get(key.version)
        if mine is not None and value.strip() == mine:
            problems.append(
                f"IPv{key.version} address {mine} of this host ({hostname}) is already "
                f"claimed by host {key.hostname} ({quoted(path)}): each host needs its own"
            )
    return problems


def register(
    client: KVStore, hostname: str, ip4: str | None, ip6: str | None, as_num: int | None
) -> list[str]:
    """Write this host's keys; the conflicts found (each also logged as an error)."""
    addresses = {4: ip4, 6: ip6}
    problems = claimants(client, hostname, addresses)
    for problem in problems:
        log.error("%s", problem)
    for version, address in addresses.items():
        key = bgp_keys.BgpHostIPKey(hostname, version).path
        if address is None:
            client.delete(key)
        else:
            client.put(key, address)
    bird_ip = dm.HostIPKey(hostname).path
    if ip4 is None:
        client.delete(bird_ip)
    else:
        client.put(bird_ip, ip4)
    if as_num is not None:
        client.put(bgp_keys.BgpHostASKey(hostname).path, str(as_num))
    log.info(
        "Registered host %s: IPv4 %s, IPv6 %s%s",
        hostname,
        ip4 or "none",
        ip6 or "none",
        f", AS {as_num}" if as_num is not None else "",
    )
    return problems
