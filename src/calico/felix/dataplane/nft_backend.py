"""The nftables rules backend (NFTablesMode=Enabled): the manager's desired state rendered by
`dataplane.nft_rendering` into one `NftTable` (``table inet felix``, both IP families).

Each owner (a policy, a profile, an interface, the static layer, the dispatch maps, the host
endpoints, NAT, the pools) renders to a group of chains and sets; the backend remembers which
names each owner has, so that an owner's re-render drops what it no longer wants. Everything
recorded goes to the kernel in the next `apply`, as one transaction: sets, maps and chains
together.

IP set members arrive from the calc graph as addresses of both families in one set; each family
gets its own nft set (``felix-v4-...`` / ``felix-v6-...``), members normalised as the iptables
backend's ipsets normalise them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from calico.common.datamodel_v1 import PolicyKey
from calico.common.resources import IPPool
from calico.felix.calc import messages as m
from calico.felix.dataplane import nft_rendering as nr
from calico.felix.dataplane.backends import Floating, Owner, render_safely
from calico.felix.dataplane.nft_rendering.base import ADDR_SET, VERDICT_MAP
from calico.felix.dataplane.nft_rendering.names import MAP_FROM_WORKLOAD as MAP_FROM
from calico.felix.dataplane.nft_rendering.names import MAP_TO_WORKLOAD as MAP_TO
from calico.felix.dataplane.nft_rendering.names import set_name
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.ipset_text import HASH_IP, normalize
from calico.felix.kernel.nft import NftTable

log = logging.getLogger(__name__)


class NftBackend:
    def __init__(
        self,
        config: RenderConfig,
        versions: Sequence[int],
        table: NftTable,
        sweep_other: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._versions = tuple(versions)
        self._table = table
        self._sweep_other = sweep_other
        self._owned_chains: dict[Owner, set[str]] = {}
        self._owned_sets: dict[Owner, set[str]] = {}
        self._chain_users: dict[str, set[Owner]] = {}
        self._dispatched: set[str] | None = None  # interfaces in the workload maps
        self._set_users: dict[str, set[Owner]] = {}

    @property
    def table(self) -> NftTable:
        return self._table

    def set_config(self, config: RenderConfig) -> None:
        self._config = config

    # -- IP sets -------------------------------------------------------------------------------

    def _split(self, members: Iterable[str]) -> dict[int, list[str]]:
        """Members by family, as the kernel lists them. The calc graph's members are single
        canonical addresses (validated endpoint nets); anything else goes through the same
        normalisation as the ipsets' (and the driver checks every element it writes)."""
        by_version: dict[int, list[str]] = {v: [] for v in self._versions}
        for member in members:
            if "/" not in member and "%" not in member:
                found = by_version.get(6 if ":" in member else 4)
                if found is not None:
                    found.append(member)
                continue
            for v, found in by_version.items():
                normal = normalize(member, HASH_IP, v)
                if normal is not None:
                    found.append(normal)
        return by_version

    def replace_members(self, set_id: str, members: Iterable[str]) -> None:
        for v, found in self._split(members).items():
            self._table.set_set(set_name(set_id, v), ADDR_SET[v], found)

    def add_members(self, set_id: str, members: Iterable[str]) -> None:
        for v, found in self._split(members).items():
            self._table.add_elements(set_name(set_id, v), ADDR_SET[v], found)

    def remove_members(self, set_id: str, members: Iterable[str]) -> None:
        for v, found in self._split(members).items():
            self._table.remove_elements(set_name(set_id, v), found)

    def remove_set(self, set_id: str) -> None:
        for v in self._versions:
            self._table.remove_set(set_name(set_id, v))

    def set_pools(self, pools: Sequence[IPPool]) -> None:
        self._own(("pools", None), nr.pool_sets(pools))

    # -- chains --------------------------------------------------------------------------------

    def _own(self, owner: Owner, rendered: nr.Rendered) -> None:
        """Make `rendered` what `owner` wants; drop the chains and sets it no longer wants and
        no other owner wants (endpoints share program chains, named after their content)."""
        for owned, users, wanted, remove in (
            (self._owned_chains, self._chain_users, rendered.chains, self._table.remove_chain),
            (self._owned_sets, self._set_users, rendered.sets, self._table.remove_set),
        ):
            for name in owned.get(owner, set()) - wanted.keys():
                users[name].discard(owner)
                if not users[name]:
                    del users[name]
                    remove(name)
            for name in wanted:
                users.setdefault(name, set()).add(owner)
            if wanted:
                owned[owner] = set(wanted)
            else:
                owned.pop(owner, None)
        for name, (spec, elements) in rendered.sets.items():
            self._table.set_set(name, spec, elements)
        for name, chain in rendered.chains.items():
            self._table.set_chain(name, chain)

    def _render(self, what: str, render: Callable[..., nr.Rendered], *args: object) -> nr.Rendered:
        rendered = render_safely(what, render, *args, default=nr.Rendered())
        assert isinstance(rendered, nr.Rendered)
        return rendered

    @staticmethod
    def _chains(chains: dict[str, nr.Chain]) -> nr.Rendered:
        return nr.Rendered(chains)

    def set_policy(self, key: PolicyKey, update: m.ActivePolicyUpdate | None) -> None:
        rendered = nr.Rendered()
        if update is not None:
            rendered = self._render(
                f"policy {key}", lambda: self._chains(nr.policy_chains(update, self._config))
            )
        self._own(("policy", key), rendered)

    def set_profile(self, profile_id: str, update: m.ActiveProfileUpdate | None) -> None:
        rendered = nr.Rendered()
        if update is not None:
            rendered = self._render(
                f"profile {profile_id}",
                lambda: self._chains(nr.profile_chains(update, self._config)),
            )
        self._own(("profile", profile_id), rendered)

    def set_endpoint(self, interface: str, update: m.WorkloadEndpointUpdate | None) -> None:
        rendered = nr.Rendered()
        if update is not None:
            rendered = self._render(
                f"endpoint {update.id}", nr.workload_endpoint_chains, update, self._config
            )
        self._own(("interface", interface), rendered)

    def set_static(self) -> None:
        self._own(("static", None), nr.static_chains(self._config, self._versions))

    def set_dispatch(self, interfaces: Sequence[str]) -> None:
        """The workload maps; after the first time, only the elements of interfaces that came
        or went (an endpoint add at 1,000 endpoints must not render 2,000 elements)."""
        new = set(interfaces)
        if self._dispatched is None:
            self._own(("dispatch", None), nr.dispatch_maps(new, self._config))
        else:
            for interface, add in [(i, True) for i in new - self._dispatched] + [
                (i, False) for i in self._dispatched - new
            ]:
                from_elem, to_elem = nr.dispatch_elements(interface, self._config)
                for map_name, element in ((MAP_FROM, from_elem), (MAP_TO, to_elem)):
                    if add:
                        self._table.add_elements(map_name, VERDICT_MAP, [element])
                    else:
                        self._table.remove_elements(map_name, [element])
        self._dispatched = new

    def set_host_endpoints(self, resolved: Mapping[str, m.HostEndpointUpdate]) -> None:
        rendered = nr.host_dispatch_maps(resolved)
        for interface, update in resolved.items():
            what = f"host endpoint {update.id} on {interface}"
            rendered.update(
                self._render(what, nr.host_endpoint_chains, update, interface, self._config)
            )
        self._own(("host-endpoints", None), rendered)

    def set_nat(self, floating: Floating, masquerade: bool) -> None:
        rendered = self._render(
            "NAT", nr.nat_chains, self._config, self._versions, floating, masquerade
        )
        self._own(("nat", None), rendered)

    # -- apply ---------------------------------------------------------------------------------

    def begin_apply(self) -> None:
        """Nothing to start early: sets and rules go in one nft transaction."""

    def apply(self, force_refresh: bool, detach: bool = False) -> None:
        """(`detach` is the iptables backend's; one nft transaction is written whole.)"""
        self._table.apply(force_refresh)

    def in_flight(self) -> bool:
        return False

    def end_grace_period(self) -> None:
        """From the next apply on, what the previous run left in the table and nothing wants
        now is deleted."""
        self._table.end_grace_period()

    def sweep(self) -> None:
        """After a switch from iptables: Felix's iptables chains, hooks and ipsets."""
        if self._sweep_other is not None:
            self._sweep_other()

    def prepare(self) -> None:
        self._table.prepare()

    def refused_chains(self) -> set[str]:
        return set(self._table.failed_chains)
