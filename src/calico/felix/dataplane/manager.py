"""The dataplane manager: calc messages in, desired kernel state out, applied in a fixed order.

API model: `on_message()` is cheap bookkeeping (remember the message, mark what it affects as
dirty); `apply()` does the work for everything dirty at once, so one batch from Felix costs one
ipset restore and one iptables-restore per table. Interface events from the netlink watcher come
in through `on_interface_*` and mark the endpoints using that interface dirty.

The desired state here is the same for both rules backends (NFTablesMode); rendering it and
keeping it in the kernel is the backend's (`backends.IptablesBackend`: iptables and ipsets;
`nft_backend.NftBackend`: one nftables table).

Apply order (each step relies on the ones before it):

1. the backend's rules and sets (iptables: IP sets created and updated, then iptables per IP
   version, then IP sets no rule references destroyed; nftables: one transaction);
2. per-interface sysctls for interfaces that are up (proxy ARP before the route: see `apply`);
3. routes and static ARP, per IP version, and proxy NDP entries for IPv6 gateways.

Nothing touches the kernel before `InSync`: until then the previous run's chains, sets and routes
keep traffic flowing. Orphans of the previous run are swept by `cleanup()` (StartupCleanupDelay
after in-sync).

Not thread safe: the driver's single loop owns it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import assert_never

from calico.common.datamodel_v1 import HostEndpointKey, IPPoolKey, WorkloadEndpointKey
from calico.common.quoting import quoted
from calico.common.resources import IPPool
from calico.felix.calc import messages as m
from calico.felix.dataplane import names
from calico.felix.dataplane import rendering as r
from calico.felix.dataplane.backends import TABLES, IptablesBackend, RulesBackend
from calico.felix.dataplane.nft_backend import NftBackend
from calico.felix.dataplane.workloads import Changes, Workloads
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import IptablesTable
from calico.felix.kernel.neighbours import ProxyNdpTable
from calico.felix.kernel.nft import NftTable
from calico.felix.kernel.routes import RouteTable
from calico.felix.kernel.sysctls import SysctlWriter, configure_interface, repair_interface

log = logging.getLogger(__name__)


class KernelTables:
    """The kernel drivers: the rules backend's (iptables tables and ipsets per IP version, or
    with `nft` one nftables table for both), routes per version and, with IPv6, the proxy NDP
    table (None without IPv6 or without `make_proxy_ndp`: no proxy entries are programmed).
    `sweep_other`: removes the other backend's leftovers at the start-of-day cleanup.
    `filters_together`: the iptables backend writes both versions' filter tables at once at its
    first apply (only where they are nf_tables; see backends.apply_together)."""

    def __init__(
        self,
        ip_versions: Iterable[int],
        make_table: Callable[[int, str], IptablesTable] | None,
        make_ipsets: Callable[[int], IpsetTable] | None,
        make_routes: Callable[[int], RouteTable],
        make_proxy_ndp: Callable[[], ProxyNdpTable] | None = None,
        *,
        nft: NftTable | None = None,
        sweep_other: Callable[[], None] | None = None,
        filters_together: bool = False,
    ) -> None:
        self.versions = tuple(ip_versions)
        self.nft = nft
        self.sweep_other = sweep_other
        self.filters_together = filters_together
        self.iptables = (
            {(v, t): make_table(v, t) for v in self.versions for t in TABLES}
            if nft is None and make_table is not None
            else {}
        )
        self.ipsets = (
            {v: make_ipsets(v) for v in self.versions}
            if nft is None and make_ipsets is not None
            else {}
        )
        self.routes = {v: make_routes(v) for v in self.versions}
        self.proxy_ndp = make_proxy_ndp() if make_proxy_ndp and 6 in self.versions else None

    def backend(self, config: r.RenderConfig) -> RulesBackend:
        if self.nft is not None:
            return NftBackend(config, self.versions, self.nft, self.sweep_other)
        return IptablesBackend(
            config,
            self.versions,
            self.iptables,
            self.ipsets,
            self.sweep_other,
            filters_together=self.filters_together,
        )


# Programs the interfaces while the caller applies the rules (DataplaneManager.apply), when
# an apply changes at least this many.
_INTERFACES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interfaces")
BACKGROUND_INTERFACES_MIN = 16


class DataplaneManager:
    def __init__(
        self,
        config: r.RenderConfig,
        kernel: KernelTables,
        sysctls: SysctlWriter | None,
    ) -> None:
        self._config = config
        self._kernel = kernel
        self._sysctls = sysctls
        self.in_sync = False
        self._rules = kernel.backend(config)
        # Workload endpoints, and which one owns each interface and IP (workloads.py).
        self._workloads = Workloads()
        self._host_endpoints: dict[HostEndpointKey, m.HostEndpointUpdate] = {}
        self._pools: dict[IPPoolKey, m.IPPoolUpdate] = {}
        self._interfaces_up: dict[str, bool] = {}
        self._interface_addrs: dict[str, frozenset[str]] = {}
        # Workload interfaces whose chains must be rendered again.
        self._dirty_interfaces: set[str] = set()
        # Workload interfaces whose routes must be set again (new, moved, re-addressed, an
        # interface event, an IP conflict resolved differently): a policy or label change
        # re-renders an endpoint's chains but leaves its routes alone.
        self._dirty_routes: set[str] = set()
        # Host interface names that cannot be written into a rule (logged once each).
        self._unusable_names: set[str] = set()
        self._dirty_globals = True  # dispatch, NAT, host endpoints, static chains, pool sets
        # What the global chains were last rendered from (None: not yet).
        self._static_programmed = False
        self._last_dispatch: tuple[str, ...] | None = None
        # Active owned workload interfaces and their floating IPs (int, ext), kept up to date by
        # _program_interface, so that an endpoint change costs no scan of every endpoint.
        self._active_interfaces: set[str] = set()
        self._floating: dict[str, frozenset[tuple[str, str]]] = {}
        self._last_host_endpoints: dict[str, m.HostEndpointUpdate] | None = None
        self._last_nat: tuple[list[tuple[str, str]], bool] | None = None
        self._last_pools: tuple[IPPool, ...] | None = None
        # (interface, version) whose sysctls are in place.
        self._configured: set[tuple[str, int]] = set()
        # Interfaces whose configuration last failed: their endpoints report "error" (§5.12).
        self._config_failed: set[str] = set()

    @property
    def metadata_addr(self) -> str | None:
        return self._config.metadata_addr

    def set_metadata_addr(self, address: str | None) -> None:
        """A new address for the metadata NAT (a MetadataAddr host name resolved again)."""
        if address != self._config.metadata_addr:
            self._config = dataclasses.replace(self._config, metadata_addr=address)
            self._rules.set_config(self._config)
            self._static_programmed = False  # the INPUT accept for metadata
            self._last_nat = None  # the DNAT
            self._dirty_globals = True

    # --- Inputs --------------------------------------------------------------------------------

    def on_message(self, message: m.Message) -> None:
        match message:
            case m.InSync():
                self.in_sync = True
            case m.IPSetUpdate(set_id, members):
                self._rules.replace_members(set_id, members)
            case m.IPSetDeltaUpdate(set_id, added, removed):
                self._rules.remove_members(set_id, removed)
                self._rules.add_members(set_id, added)
            case m.IPSetRemove(set_id):
                self._rules.remove_set(set_id)
            case m.ActivePolicyUpdate(key):
                self._rules.set_policy(key, message)
            case m.ActivePolicyRemove(key):
                self._rules.set_policy(key, None)
            case m.ActiveProfileUpdate(profile_id):
                self._rules.set_profile(profile_id, message)
            case m.ActiveProfileRemove(profile_id):
                self._rules.set_profile(profile_id, None)
            case m.WorkloadEndpointUpdate():
                self._workload_changed(self._workloads.update(message))
            case m.WorkloadEndpointRemove(key):
                self._workload_changed(self._workloads.remove(key))
            case m.HostEndpointUpdate(key):
                self._host_endpoints[key] = message
                self._dirty_globals = True
            case m.HostEndpointRemove(key):
                self._host_endpoints.pop(key, None)
                self._dirty_globals = True
            case m.IPPoolUpdate(key):
                self._pools[key] = message
                self._dirty_globals = True
            case m.IPPoolRemove(key):
                self._pools.pop(key, None)
                self._dirty_globals = True
            case _:
                assert_never(message)  # every message the calc graph sends is consumed

    def on_interface_update(self, name: str, up: bool) -> None:
        was_up = self._interfaces_up.get(name)
        self._interfaces_up[name] = up
        if was_up != up:
            if not up:
                self._configured = {c for c in self._configured if c[0] != name}
            self._dirty_interface(name)

    def on_interface_removed(self, name: str) -> None:
        self._interfaces_up.pop(name, None)
        self._interface_addrs.pop(name, None)
        self._configured = {c for c in self._configured if c[0] != name}
        self._dirty_interface(name)

    def on_interface_addrs(self, name: str, addrs: frozenset[str]) -> None:
        if self._interface_addrs.get(name) != addrs:
            self._interface_addrs[name] = addrs
            if self._host_endpoints:
                self._dirty_globals = True  # host endpoints may resolve by address

    def _workload_changed(self, changes: Changes | None) -> None:
        if changes is not None:
            self._dirty_interfaces |= changes.chains
            self._dirty_routes |= changes.routes
            # Dispatch and NAT depend on what routes depend on (interface, active, floating
            # IPs): a change of labels, tiers or profiles leaves them alone.
            if changes.routes:
                self._dirty_globals = True

    def _dirty_interface(self, name: str) -> None:
        if self._workloads.claimed(name):
            self._dirty_interfaces.add(name)
            self._dirty_routes.add(name)
        if self._host_endpoints:
            self._dirty_globals = True

    # --- Apply ---------------------------------------------------------------------------------

    def apply(self, force_refresh: bool = False, detach: bool = False) -> None:
        """Program everything dirty. Raises the drivers' errors; state stays dirty for a retry.

        `detach` (the driver has more changes waiting: a burst): the backend may leave its last
        restore committing while the caller reads and renders those; the next apply collects
        it first (IptablesBackend.apply). Not with `force_refresh`."""
        detach = detach and not force_refresh
        if not self.in_sync:
            return
        if not force_refresh:  # (a refresh reads the kernel before it writes anything)
            self._rules.begin_apply()  # set members, written while the rules are rendered
        for name in sorted(self._dirty_interfaces | self._dirty_routes):
            self._program_interface(name)
        if self._dirty_globals:
            self._program_globals()
        changed = None if force_refresh else self._dirty_interfaces | self._dirty_routes
        if changed is not None and len(changed) >= BACKGROUND_INTERFACES_MIN:
            # Many interfaces (a burst of new VMs): their sysctls, routes and proxy NDP entries
            # are programmed by another thread while this one applies the rules. It is all the
            # kernel's time, in different locks: 40 ms less of a burst of 500 (docs/
            # benchmarks.md). A new VM's route may so come before its rules; until they are
            # in, the dispatch chains drop the packets of an interface they do not know (fail
            # closed). Not for a few interfaces: the two threads then wait for each other's
            # turn on the interpreter (an endpoint add at 1,000 endpoints took 47 ms, not 28).
            interfaces = _INTERFACES.submit(self._program_interfaces, changed, force_refresh)
            try:
                self._rules.apply(force_refresh, detach)
            finally:
                interfaces.result()  # (nothing below, nor the next apply, runs while it does)
        else:
            self._rules.apply(force_refresh, detach)
            self._program_interfaces(changed, force_refresh)
        self._dirty_interfaces.clear()
        self._dirty_routes.clear()
        self._dirty_globals = False

    @property
    def in_flight(self) -> bool:
        """Whether the last apply left a restore running (`detach`): the next collects it."""
        return self._rules.in_flight()

    def prepare(self) -> None:
        """The driver is idle: let the rules backend get ready for the next change (nftables:
        a dry run that leaves nft's cache and the kernel's validation done). Never raises."""
        if self.in_sync:
            try:
                self._rules.prepare()
            except Exception:
                log.exception("Warm-up failed (harmless)")

    def cleanup(self) -> None:
        """End the graceful-restart period: sweep the previous run's orphan chains and sets."""
        self._rules.end_grace_period()
        self.apply(force_refresh=True)
        self._rules.sweep()

    def _program_interface(self, name: str) -> None:
        """The chains (if dirty) and routes (if dirty) of one workload interface, from the
        endpoint that owns it; nothing if no endpoint names it any more."""
        update = self._workloads.owner(name)
        if update is not None and update.endpoint.active:
            self._active_interfaces.add(name)
            nats = update.endpoint.ipv4_nat + update.endpoint.ipv6_nat
            if nats:
                self._floating[name] = frozenset((nat.int_ip, nat.ext_ip) for nat in nats)
            else:
                self._floating.pop(name, None)
        else:
            self._active_interfaces.discard(name)
            self._floating.pop(name, None)
        if name in self._dirty_interfaces:
            self._rules.set_endpoint(name, update)
        for v in self._kernel.versions:
            if name not in self._dirty_routes:
                continue
            routes = self._kernel.routes[v]
            if update is None or not update.endpoint.active:
                routes.remove_interface(name)
                continue
            mac = update.endpoint.mac if v == 4 else None
            routes.set_routes(name, self._workloads.routed_ips_of(update, v), mac=mac)
        proxies = self._kernel.proxy_ndp
        if proxies is not None and name in self._dirty_routes:
            # The owner's IPv6 gateway, proxied so that the workload can resolve it (§5.11).
            active = update is not None and update.endpoint.active
            gateway = update.endpoint.ipv6_gateway if update is not None and active else None
            proxies.set_proxies(name, [gateway] if gateway else [])

    def _program_globals(self) -> None:
        """Chains that depend on more than one endpoint, and the pool sets. This runs after every
        endpoint change, so each group is re-rendered only when its own inputs changed (a label
        change at 1,000 endpoints must not re-render the dispatch trees)."""
        if not self._static_programmed:
            self._program_static()
        active = tuple(sorted(self._active_interfaces))
        if active != self._last_dispatch:
            self._last_dispatch = active
            self._rules.set_dispatch(active)
        host_ifaces = self._resolve_host_endpoints()
        if host_ifaces != self._last_host_endpoints:
            self._last_host_endpoints = host_ifaces
            self._rules.set_host_endpoints(host_ifaces)
        self._program_nat()
        v4_pools = (p.pool for p in self._pools.values() if p.id.version == 4)
        pools = tuple(sorted(v4_pools, key=lambda pool: (pool.cidr, pool.masquerade)))
        if pools != self._last_pools:
            self._last_pools = pools
            self._rules.set_pools(pools)

    def _program_static(self) -> None:
        """The chains that depend on configuration alone (and the iptables hooks)."""
        self._static_programmed = True
        self._rules.set_static()

    def _program_nat(self) -> None:
        floating = sorted(set().union(*self._floating.values()))
        masquerade = any(p.pool.masquerade for p in self._pools.values() if p.id.version == 4)
        if (floating, masquerade) == self._last_nat:
            return
        self._last_nat = (floating, masquerade)
        self._rules.set_nat(floating, masquerade)

    def matches_host_endpoints_by_address(self) -> bool:
        """True if some host endpoint has no interface name, only expected addresses."""
        return any(not u.endpoint.name for u in self._host_endpoints.values())

    def _resolve_host_endpoints(self) -> dict[str, m.HostEndpointUpdate]:
        """Interface → host endpoint: by name, else by any expected address the interface holds
        (the first endpoint in key order wins an interface, with a warning). Workload interfaces
        are never matched by address (§2.3)."""
        resolved: dict[str, m.HostEndpointUpdate] = {}
        if not self._host_endpoints:
            return resolved  # the usual case; the scan below parses every interface's addresses
        prefixes = self._config.interface_prefixes
        # The watcher reports "address/prefixlen"; expected addresses are plain canonical IPs.
        held = {
            name: {str(ipaddress.ip_interface(cidr).ip) for cidr in cidrs}
            for name, cidrs in self._interface_addrs.items()
            if not name.startswith(prefixes) and self._usable_name(name)
        }
        for key in sorted(self._host_endpoints, key=lambda k: k.endpoint):
            update = self._host_endpoints[key]
            endpoint = update.endpoint
            if endpoint.name:
                candidates = [endpoint.name]
            else:
                expected = set(endpoint.expected_ipv4_addrs + endpoint.expected_ipv6_addrs)
                candidates = sorted(name for name, ips in held.items() if ips & expected)
            for name in candidates:
                if name in resolved:
                    log.warning("Interface %s matches two host endpoints; using the first", name)
                    continue
                resolved[name] = update
        return resolved

    def _usable_name(self, name: str) -> bool:
        """Whether a host interface name (from the kernel, so input like any other) can be
        written into a rule. The kernel allows quotes, "+" (iptables' wildcard) and more in a
        name; such an interface is never matched by address, and is logged once."""
        if names.usable_interface_name(name):
            return True
        if name not in self._unusable_names:
            self._unusable_names.add(name)
            log.error(
                "Host interface %s has a name Felix cannot write into a rule (need %s); host "
                "endpoints are not applied to it",
                quoted(name),
                names.INTERFACE_NAME_RULE,
            )
        return False

    def _program_interfaces(self, changed: set[str] | None, full: bool) -> None:
        """The sysctls, routes and proxy NDP entries of the interfaces `changed` (None: all,
        for a refresh, which also re-reads and repairs what another tool changed).

        The sysctls before the routes: a packet routed to a new VM before its TAP answers ARP
        for the gateway makes the VM ask, fail, and ask again only a second later (measured: a
        new VM first reachable from another host after ~1.07 s instead of ~50 ms;
        docs/multihost.md)."""
        self._configure_interfaces(changed)
        for routes in self._kernel.routes.values():
            routes.apply(full=full)
        if self._kernel.proxy_ndp is not None:
            self._kernel.proxy_ndp.apply(full=full)

    def _configure_interfaces(self, changed: set[str] | None) -> None:
        """Per-interface sysctls for active workload interfaces that are up: among the
        interfaces this apply changed and those whose configuration failed, or all of them
        after checking those already configured (None: a refresh). Looking at every endpoint
        after every change took milliseconds at 1,000 endpoints, and the routes wait for it."""
        if self._sysctls is None:
            return
        updates: Iterable[m.WorkloadEndpointUpdate]
        if changed is None:
            self._repair_interfaces()
            updates = self._workloads.owners()
        else:
            owners = (self._workloads.owner(name) for name in sorted(changed | self._config_failed))
            updates = [update for update in owners if update is not None]
        for update in updates:
            endpoint = update.endpoint
            if not endpoint.active or not self._interfaces_up.get(endpoint.name):
                continue
            failed = False
            for v in self._kernel.versions:
                if (endpoint.name, v) in self._configured:
                    continue
                try:
                    configure_interface(endpoint.name, v, self._sysctls)
                except OSError as e:
                    log.warning("Could not configure interface %s: %s", endpoint.name, e)
                    failed = True
                    continue
                self._configured.add((endpoint.name, v))
            # (one version failing keeps it here, whatever the other did: retried next apply)
            if failed:
                self._config_failed.add(endpoint.name)
            else:
                self._config_failed.discard(endpoint.name)

    def _repair_interfaces(self) -> None:
        """The refresh's check of the interface sysctls already configured: another tool may
        have set proxy_arp, rp_filter or route_localnet back (the VM would lose connectivity,
        anti-spoofing or metadata until the interface flapped). Write back what differs."""
        if self._sysctls is None:
            return
        for name, version in sorted(self._configured):
            try:
                repaired = repair_interface(name, version, self._sysctls)
            except OSError as e:
                log.warning("Could not check the settings of interface %s: %s", name, e)
                continue
            if repaired:
                log.warning("Repaired settings of interface %s: %s", name, "; ".join(repaired))

    # --- Status --------------------------------------------------------------------------------

    def _refused_chains(self) -> set[str]:
        """Chains the kernel refused (programmed as drop stubs instead)."""
        return self._rules.refused_chains()

    def _endpoint_chains(self, interface: str) -> set[str]:
        prefixes = self._config.interface_prefixes
        return {names.endpoint_chain(d, interface, prefixes) for d in ("to", "from")}

    def endpoint_statuses(
        self, apply_failed: bool
    ) -> dict[WorkloadEndpointKey | HostEndpointKey, str]:
        """Every local endpoint's oper status after an apply (§5.12): "down" if its interface is
        not oper-up (or missing) or the endpoint is inactive, "error" if the last apply failed
        while the endpoint still had work pending or its interface could not be configured,
        else "up". `apply_failed`: whether the apply just attempted raised."""
        statuses: dict[WorkloadEndpointKey | HostEndpointKey, str] = {}
        refused = self._refused_chains()
        proxies = self._kernel.proxy_ndp
        proxy_failed = proxies.errors if proxies is not None else {}
        for key, update in self._workloads.items():
            name = update.endpoint.name
            if not self._interfaces_up.get(name):
                statuses[key] = "down"
            elif not self._workloads.owns(key, name):
                statuses[key] = "error"  # another endpoint owns the interface (a conflict)
            elif (
                (apply_failed and name in self._dirty_interfaces)
                or name in self._config_failed
                or name in proxy_failed
                or (refused and self._endpoint_chains(name) & refused)
            ):
                statuses[key] = "error"
            elif not update.endpoint.active:
                statuses[key] = "down"
            else:
                statuses[key] = "up"
        if self._host_endpoints:
            resolved = self._resolve_host_endpoints()
            for host_key in self._host_endpoints:
                names_up = [
                    n
                    for n, u in resolved.items()
                    if u.id == host_key and self._interfaces_up.get(n)
                ]
                if not names_up:
                    statuses[host_key] = "down"
                elif apply_failed and self._dirty_globals:
                    statuses[host_key] = "error"
                else:
                    statuses[host_key] = "up"
        return statuses
