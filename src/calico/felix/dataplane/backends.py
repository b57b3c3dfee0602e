"""The rules backends: what the manager's desired state becomes in the kernel (NFTablesMode).

`DataplaneManager` keeps the desired state (endpoints and who owns each interface, host
endpoints, pools, the active policies and profiles, the IP sets) and decides what changed; a
backend renders those objects and keeps them in the kernel. Two implement `RulesBackend`:

* `IptablesBackend` (NFTablesMode=Disabled, the default): the iptables rendering
  (`dataplane.rendering`) into `IptablesTable` per (IP version, table) and `IpsetTable` per IP
  version;
* `NftBackend` (`dataplane.nft_backend`): the nftables rendering (`dataplane.nft_rendering`) into
  one `NftTable` for both families.

Each backend renders every object separately, so a renderer failure (a bug on validated input)
costs that object's chains only: they are left out, and whatever jumps to them gets a drop stub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from calico.common.datamodel_v1 import PolicyKey
from calico.common.resources import IPPool
from calico.felix.calc import messages as m
from calico.felix.dataplane import names
from calico.felix.dataplane import rendering as r
from calico.felix.kernel.ipset_text import HASH_NET
from calico.felix.kernel.ipsets import IpsetError, IpsetTable, refresh_tables
from calico.felix.kernel.iptables import IptablesTable

log = logging.getLogger(__name__)

TABLES = (names.FILTER, names.NAT, names.RAW)
# Kernel chain → Felix chain hooks per table (names.HOOKS, grouped).
_HOOKS: dict[str, list[tuple[str, str]]] = {
    t: [(k, f) for (table, k), f in names.HOOKS.items() if table == t] for t in TABLES
}

Chains = dict[str, list[str]]
Owner = tuple[str, object]  # who wants a group of chains: ("policy", key), ("static", None)...
Floating = Sequence[tuple[str, str]]


class RulesBackend(Protocol):
    """What the manager asks of a backend. ``set_*`` only record (and render); ``apply`` writes
    everything recorded since the last apply, in the backend's fixed order."""

    def replace_members(self, set_id: str, members: Iterable[str]) -> None: ...
    def add_members(self, set_id: str, members: Iterable[str]) -> None: ...
    def remove_members(self, set_id: str, members: Iterable[str]) -> None: ...
    def remove_set(self, set_id: str) -> None: ...
    def set_policy(self, key: PolicyKey, update: m.ActivePolicyUpdate | None) -> None: ...
    def set_profile(self, profile_id: str, update: m.ActiveProfileUpdate | None) -> None: ...
    def set_endpoint(self, interface: str, update: m.WorkloadEndpointUpdate | None) -> None: ...
    def set_static(self) -> None: ...
    def set_dispatch(self, interfaces: Sequence[str]) -> None: ...
    def set_host_endpoints(self, resolved: Mapping[str, m.HostEndpointUpdate]) -> None: ...
    def set_nat(self, floating: Floating, masquerade: bool) -> None: ...
    def set_pools(self, pools: Sequence[IPPool]) -> None: ...
    def set_config(self, config: r.RenderConfig) -> None: ...
    def begin_apply(self) -> None: ...
    def apply(self, force_refresh: bool, detach: bool = False) -> None: ...
    def in_flight(self) -> bool: ...
    def end_grace_period(self) -> None: ...
    def sweep(self) -> None: ...
    def prepare(self) -> None: ...
    def refused_chains(self) -> set[str]: ...


def render_safely(
    what: str, render: Callable[..., object], *args: object, default: object
) -> object:
    """A renderer's result, or `default` if it fails: rendering works on validated input, so a
    failure is a bug, but it must cost only this object (its chains are then missing, and
    whatever jumps to them gets a drop stub: fail closed)."""
    try:
        return render(*args)
    except Exception:
        log.exception("Cannot render the chains of %s; its traffic is dropped", what)
        return default


# The IPv6 filter table's writer, while the caller's thread writes IPv4's (apply_together).
_OTHER_FAMILY = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iptables-filter")


def apply_together(tables: Sequence[IptablesTable], force_refresh: bool) -> None:
    """Apply `tables` (the filter table of each IP version) at the same time.

    Each is its own ``iptables-restore`` of one family, so neither waits for the other: on two
    cores a cold start's two filter restores at 1,000 endpoints take 2.25 s together instead of
    2.85 s in turn. On iptables-nft a commit that lands while the other tool builds its batch
    makes that tool refresh its cache and send the batch again (the kernel checks the ruleset
    generation), so each table still ends as one whole transaction. Every table is applied even
    if another fails; the first error is raised after all have ended, and the others are logged.

    Used on iptables-nft only: iptables-legacy's restore holds the lock it shares with ip6tables
    for its whole run, so there the second would only wait, and give up after ``--wait``'s 10 s.

    Only for the first write of a run (the cold start). After it a table holds 62,000 rules,
    and the tool's cache refresh after a collision costs more than a small change gains: a
    profile rule change took 41.5 ms instead of 20.8 ms at 1,000 endpoints."""
    if len(tables) < 2:
        for table in tables:
            table.apply(force_refresh)
        return
    others = [_OTHER_FAMILY.submit(table.apply, force_refresh) for table in tables[1:]]
    errors: list[Exception] = []
    try:
        tables[0].apply(force_refresh)
    except Exception as e:
        errors.append(e)
    for other in others:
        try:
            other.result()
        except Exception as e:
            errors.append(e)
    for error in errors[1:]:
        log.error("Another table failed too: %s", error)
    if errors:
        raise errors[0]


class IptablesBackend:
    """iptables chains per (IP version, table) and ipsets per IP version.

    Apply order: IP sets (create/update: rules about to be written may reference new sets);
    iptables: every IP version's nat and raw tables, then the filter tables (at the first
    apply, both IP versions' at once: apply_together); IP sets again (destroy sets no rule
    references any more)."""

    def __init__(
        self,
        config: r.RenderConfig,
        versions: Sequence[int],
        iptables: Mapping[tuple[int, str], IptablesTable],
        ipsets: Mapping[int, IpsetTable],
        sweep_other: Callable[[], None] | None = None,
        *,
        filters_together: bool = False,
    ) -> None:
        """`filters_together`: write both versions' filter tables at once at the first apply
        (apply_together); only for iptables-nft, whose tools do not share a lock."""
        self._config = config
        self._versions = tuple(versions)
        self._iptables = iptables
        self._ipsets = ipsets
        self._sweep_other = sweep_other
        self._owned: dict[tuple[int, str], dict[Owner, set[str]]] = {key: {} for key in iptables}
        # Once the filter tables' first apply succeeded, they are written in turn.
        self._filters_written = not filters_together

    def set_config(self, config: r.RenderConfig) -> None:
        self._config = config

    # -- IP sets -------------------------------------------------------------------------------

    def replace_members(self, set_id: str, members: Iterable[str]) -> None:
        members = tuple(members)  # (read once per IP version; a tuple's is not copied)
        for ipsets in self._ipsets.values():
            ipsets.replace_members(set_id, members)

    def add_members(self, set_id: str, members: Iterable[str]) -> None:
        members = tuple(members)  # (read once per IP version; a tuple's is not copied)
        for ipsets in self._ipsets.values():
            ipsets.add_members(set_id, members)

    def remove_members(self, set_id: str, members: Iterable[str]) -> None:
        members = tuple(members)  # (read once per IP version; a tuple's is not copied)
        for ipsets in self._ipsets.values():
            ipsets.remove_members(set_id, members)

    def remove_set(self, set_id: str) -> None:
        for ipsets in self._ipsets.values():
            ipsets.remove_set(set_id)

    def set_pools(self, pools: Sequence[IPPool]) -> None:
        ipsets = self._ipsets.get(4)
        if ipsets is None:
            return
        ipsets.replace_named(names.IPSET_ALL_POOLS, HASH_NET, [p.cidr for p in pools])
        ipsets.replace_named(
            names.IPSET_MASQ_POOLS, HASH_NET, [p.cidr for p in pools if p.masquerade]
        )

    # -- chains --------------------------------------------------------------------------------

    def _render(self, what: str, render: Callable[..., Chains], *args: object) -> Chains:
        chains = render_safely(what, render, *args, self._config, default={})
        assert isinstance(chains, dict)
        return chains

    def _own(self, version: int, table: str, owner: Owner, chains: Chains) -> None:
        """Make `chains` the chains `owner` wants in one table; drop what it no longer wants."""
        owned = self._owned[(version, table)]
        driver = self._iptables[(version, table)]
        # Chain names are unique per owner by construction (they embed the owner's ID).
        for name in owned.get(owner, set()) - chains.keys():
            driver.remove_chain(name)
        for name, rules in chains.items():
            driver.set_chain(name, rules)
        if chains:
            owned[owner] = set(chains)
        else:
            owned.pop(owner, None)

    def set_policy(self, key: PolicyKey, update: m.ActivePolicyUpdate | None) -> None:
        for v in self._versions:
            chains = self._render(f"policy {key}", r.policy_chains, update, v) if update else {}
            self._own(v, names.FILTER, ("policy", key), chains)
            raw = chains if update is not None and update.untracked else {}
            self._own(v, names.RAW, ("policy", key), raw)

    def set_profile(self, profile_id: str, update: m.ActiveProfileUpdate | None) -> None:
        for v in self._versions:
            what = f"profile {profile_id}"
            chains = self._render(what, r.profile_chains, update, v) if update else {}
            self._own(v, names.FILTER, ("profile", profile_id), chains)

    def set_endpoint(self, interface: str, update: m.WorkloadEndpointUpdate | None) -> None:
        # A workload's chains name no address (anti-spoofing is the routes' and RPFILTER's), so
        # both IP versions get the same chains: rendered once, and the rules' checks in the
        # second table find the first's answers (iptables_text.rule_facts).
        chains = (
            self._render(
                f"endpoint {update.id}", r.workload_endpoint_chains, update, self._versions[0]
            )
            if update is not None
            else {}
        )
        for v in self._versions:
            self._own(v, names.FILTER, ("interface", interface), chains)

    def set_static(self) -> None:
        """The chains that depend on configuration alone, and the hooks into the kernel chains."""
        for v in self._versions:
            self._own(v, names.FILTER, ("static", None), r.static_filter_chains(v, self._config))
            self._own(v, names.RAW, ("static", None), r.raw_chains(v, self._config))
            for table in TABLES:
                for kernel_chain, felix_chain in _HOOKS[table]:
                    self._iptables[(v, table)].set_hook(kernel_chain, felix_chain)

    def set_dispatch(self, interfaces: Sequence[str]) -> None:
        # The trees name interfaces only, so both IP versions get the same chains: rendered once
        # (at 1,000 endpoints each rendering is 2,000 rules, redone at every endpoint add).
        chains = r.dispatch_chains(interfaces, self._versions[0], self._config)
        for v in self._versions:
            self._own(v, names.FILTER, ("dispatch", None), chains)

    def set_host_endpoints(self, resolved: Mapping[str, m.HostEndpointUpdate]) -> None:
        for v in self._versions:
            host_dispatch = r.dispatch_chains(resolved, v, self._config, host=True)
            self._own(v, names.FILTER, ("host-dispatch", None), host_dispatch)
            self._own(v, names.RAW, ("host-dispatch", None), host_dispatch)
            filter_chains: Chains = {}
            raw_chains: Chains = {}
            for interface, update in resolved.items():
                try:
                    f, raw = r.host_endpoint_chains(update, interface, v, self._config)
                except Exception:
                    # A bug costs this interface only (the dispatch's jump to its missing
                    # chains gets a drop stub).
                    log.exception("Cannot render host endpoint %s on %s", update.id, interface)
                    continue
                filter_chains.update(f)
                raw_chains.update(raw)
            self._own(v, names.FILTER, ("host-endpoints", None), filter_chains)
            self._own(v, names.RAW, ("host-endpoints", None), raw_chains)

    def set_nat(self, floating: Floating, masquerade: bool) -> None:
        for v in self._versions:
            chains = r.nat_chains(v, self._config, floating, masquerade)
            self._own(v, names.NAT, ("static", None), chains)

    # -- apply ---------------------------------------------------------------------------------

    def begin_apply(self) -> None:
        """Start the IP set updates known now, in the background, while the caller renders
        (`IpsetTable.begin`); apply() completes them. (Rules only ever reference sets that
        apply() has written: it waits for these before any iptables-restore.)"""
        for ipsets in self._ipsets.values():
            ipsets.begin()

    def apply(self, force_refresh: bool, detach: bool = False) -> None:
        """`detach` (more changes are waiting: a burst): leave the last filter table's restore
        committing while the caller renders them (IptablesTable.apply). The sets no rule uses
        any more are then destroyed by the first apply that leaves nothing running."""
        for driver in self._iptables.values():
            driver.settle()  # the previous apply's, if it left one running
        refreshed = force_refresh and self._refresh_ipsets()
        for ipsets in self._ipsets.values():
            # destroy=False: rules may still use removed sets.
            ipsets.apply(force_refresh, destroy=False, refreshed=refreshed)
        small, filters = self._in_apply_order()
        for driver in small:
            driver.apply(force_refresh)
        if self._filters_written:
            for driver in filters:
                driver.apply(force_refresh, detach=detach and driver is filters[-1])
        else:  # the first write: see apply_together
            apply_together(filters, force_refresh)
            self._filters_written = True
        if any(driver.in_flight for driver in filters):
            return  # (the kernel may still hold rules that use them)
        for ipsets in self._ipsets.values():
            ipsets.apply()  # destroys sets the rules no longer reference

    def in_flight(self) -> bool:
        """Whether the last apply left a restore running (apply's `detach`)."""
        return any(driver.in_flight for driver in self._iptables.values())

    def _in_apply_order(self) -> tuple[list[IptablesTable], list[IptablesTable]]:
        """The small tables of every IP version, to write first; then the filter tables.

        On iptables-nft, ``iptables-save -t nat`` fetches the family's whole ruleset: 0.27 s
        once the filter table holds 124,000 rules (1,000 endpoints), 5 ms while it is empty. A
        cold start reads each table before its first write, so writing filter last saves
        four such reads."""
        order = sorted(self._iptables, key=lambda key: (key[1] == names.FILTER, key[0]))
        small = [self._iptables[key] for key in order if key[1] != names.FILTER]
        return small, [self._iptables[key] for key in order if key[1] == names.FILTER]

    def _refresh_ipsets(self) -> bool:
        """One ``ipset save`` for every IP version's refresh (it lists both families, and costs
        0.3 s of CPU at 300,000 members). False if it failed: each table then tries itself."""
        tables = list(self._ipsets.values())
        if not tables:
            return False
        try:
            refresh_tables(tables)
        except IpsetError as e:
            log.warning("Cannot read ipsets for the refresh: %s", e)
            return False
        return True

    def end_grace_period(self) -> None:
        """From the next apply on, the previous run's orphan chains go."""
        for driver in self._iptables.values():
            driver.end_grace_period()

    def sweep(self) -> None:
        """After that apply: the previous run's orphan ipsets (and, after a switch from
        nftables, Felix's nftables table)."""
        for ipsets in self._ipsets.values():
            for name in ipsets.cleanup_orphans():
                log.info("Removed orphan ipset %s", name)
        if self._sweep_other is not None:
            self._sweep_other()

    def prepare(self) -> None:
        """Nothing to warm up: iptables-restore starts afresh every time."""

    def refused_chains(self) -> set[str]:
        """Chains the kernel refused in any table (programmed as drop stubs instead)."""
        return {c for table in self._iptables.values() for c in table.failed_chains}
