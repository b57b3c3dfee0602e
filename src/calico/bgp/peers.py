"""Which BGP sessions this host has, from the validated configuration (`calico.bgp.model`).
Pure.

Between two Calico hosts X and Y of one address family (both need an address of it):

* both are route reflectors (`rr_cluster_id` set): a plain session; with one AS it carries
  the routes each reflects (the reflectors are meshed with each other);
* one is a reflector and both have one AS: the reflector treats the other as its `rr client`;
* one is a reflector and the ASes differ: a plain (eBGP) session, no reflection;
* neither is a reflector: a plain session if the node-to-node mesh is enabled, else none.

The rule is symmetric, so both ends always agree whether a session exists. The usual
migration from a mesh to reflectors: mark the reflectors (sessions to them are added, the
mesh stays), then disable the mesh.

Explicit peers (global `peer_v4`/`peer_v6`, and this host's own, which win over a global peer
with the same address) come on top; an explicit peer with the address of a Calico host
replaces the session that host would have had. Never a session to one of this host's own
addresses. Two hosts with one address: one session for that address (the first host name in
order decides its AS), and a conflict reported with every host name -- logged by each daemon,
so both claimants see it.

Session names are stable and derived from the peer's address, so that a reload keeps every
session whose settings did not change (bgp.md §4.2): `Mesh_`, `Reflector_` (to a reflector),
`Client_` (a reflector's client), `Global_`, `Node_`, then the address with "." and ":" as "_".
"""

from __future__ import annotations

from dataclasses import dataclass

from calico.bgp.model import BgpData, HostData

KIND_PREFIXES = {
    "mesh": "Mesh_",
    "reflector": "Reflector_",
    "client": "Client_",
    "global": "Global_",
    "node": "Node_",
}
KIND_DESCRIPTIONS = {
    "mesh": "node-to-node mesh",
    "reflector": "route reflector",
    "client": "route reflector client",
    "global": "global",
    "node": "node specific",
}


@dataclass(frozen=True, slots=True)
class Session:
    kind: str  # a key of KIND_PREFIXES
    version: int
    ip: str
    peer_as: int
    rr_client: bool = False  # we reflect routes to this peer as its reflector
    reflect: bool = False  # export the BGP routes we learned (as a reflector) too
    host: str | None = None  # the Calico host at the other end, if any

    @property
    def name(self) -> str:
        return session_name(self.kind, self.ip)


@dataclass(frozen=True, slots=True)
class LocalHost:
    """This host as the daemon knows it (its own addresses come from its options or detection,
    not from etcd)."""

    hostname: str
    ip4: str | None
    ip6: str | None

    def ip(self, version: int) -> str | None:
        return self.ip4 if version == 4 else self.ip6

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(a for a in (self.ip4, self.ip6) if a is not None)


@dataclass(frozen=True, slots=True)
class Plan:
    """This host's sessions, its AS, whether it is a reflector, and the address conflicts."""

    local_as: int
    rr_cluster_id: str | None
    sessions: tuple[Session, ...]
    conflicts: tuple[str, ...]  # one line per address claimed by several hosts


def session_name(kind: str, ip: str) -> str:
    return KIND_PREFIXES[kind] + ip.replace(".", "_").replace(":", "_")


def peer_address(name: str) -> tuple[str, str] | None:
    """(kind, address) from a session name this module made, else None."""
    for kind, prefix in KIND_PREFIXES.items():
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            if suffix.count("_") == 3 and all(p.isdigit() for p in suffix.split("_")):
                return kind, suffix.replace("_", ".")
            return kind, suffix.replace("_", ":")
    return None


def plan(data: BgpData, me: LocalHost) -> Plan:
    mine = data.hosts.get(me.hostname)
    rr_id = mine.rr_cluster_id if mine is not None else None
    local_as = data.host_as(me.hostname)
    sessions: dict[str, Session] = {}  # by peer address
    conflicts: list[str] = []
    for version in (4, 6):
        if me.ip(version) is None:
            continue
        claims: dict[str, list[str]] = {}
        for hostname, host in data.hosts.items():
            address = host.ip(version)
            if address is not None and hostname != me.hostname:
                claims.setdefault(address, []).append(hostname)
        for address, hostnames in claims.items():
            if address in me.addresses:
                conflicts.append(
                    f"IPv{version} address {address} of this host ({me.hostname}) is also "
                    f"claimed by {', '.join(hostnames)}"
                )
                continue
            if len(hostnames) > 1:
                conflicts.append(
                    f"IPv{version} address {address} is claimed by {', '.join(hostnames)}"
                )
            other = data.hosts[hostnames[0]]
            session = _host_session(data, rr_id, local_as, hostnames[0], other, version, address)
            if session is not None:
                sessions[address] = session
        explicit = [("global", p) for p in data.global_peers]
        explicit += [("node", p) for p in (mine.peers if mine is not None else ())]
        for kind, peer in explicit:
            if peer.version == version and peer.ip not in me.addresses:
                sessions[peer.ip] = Session(kind, version, peer.ip, peer.as_num)
    ordered = sorted(sessions.values(), key=lambda s: (s.version, s.name))
    return Plan(local_as, rr_id, tuple(ordered), tuple(conflicts))


def _host_session(
    data: BgpData,
    rr_id: str | None,
    local_as: int,
    hostname: str,
    other: HostData,
    version: int,
    address: str,
) -> Session | None:
    other_rr = other.rr_cluster_id
    peer_as = data.host_as(hostname)
    same_as = peer_as == local_as
    if rr_id is not None and other_rr is not None:
        return Session("mesh", version, address, peer_as, reflect=same_as, host=hostname)
    if rr_id is not None and same_as:
        return Session(
            "client", version, address, peer_as, rr_client=True, reflect=True, host=hostname
        )
    if other_rr is not None and same_as:
        return Session("reflector", version, address, peer_as, host=hostname)
    if rr_id is not None or other_rr is not None or data.node_mesh:
        return Session("mesh", version, address, peer_as, host=hostname)
    return None
