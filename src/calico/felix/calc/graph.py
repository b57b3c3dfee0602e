"""The calculation graph: datastore updates in, ordered dataplane messages out.

Pure: no I/O, threads or clocks. The caller feeds it `(key path, value or None)` updates and sync
status changes, and calls `flush()` whenever it wants the resulting messages (after each batch from
the syncer). The design and the message contract are in docs/design/calc-graph.md.

Wiring, in the order an update flows:

    dispatcher (parse key, validate value; invalid = deleted)
      ├─ config / Ready ─────────────────────────────────────────────────────► sequencer
      ├─ IP pools, host bird_ip ─────────────────────────────────────────────► sequencer
      ├─ endpoints (every host) ─► label inheritance ─► selector index ─┐
      │                         └─► tag index ───────────────────────────┼─► member calculator ─┐
      │                         └─► member calculator (endpoint IPs) ────┘                      │
      ├─ local endpoints only ───► active rules (policy index, profiles) ─► rule scanner       │
      │                              (activates the IP sets above)     └─► policy resolver ──┤
      └─ profiles, policies, tiers ──► active rules                                           ▼
                                                                                         sequencer
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import sys
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar, cast

from calico.common import resources as res
from calico.common.datamodel_v1 import (
    BadKey,
    HostEndpointKey,
    HostIPKey,
    IPPoolKey,
    Key,
    PolicyKey,
    ProfileLabelsKey,
    ProfileRulesKey,
    ProfileTagsKey,
    TierMetadataKey,
    WorkloadEndpointKey,
    parse_key,
)
from calico.common.index import shared
from calico.common.labelindex import LabelIndex
from calico.common.quoting import quoted
from calico.common.selectors import Selector
from calico.common.sync import SyncStatus
from calico.felix.calc import messages as m
from calico.felix.calc.active import ActiveRulesCalculator, Endpoint, EndpointKey
from calico.felix.calc.members import MemberCalculator, TagIndex
from calico.felix.calc.rules import IPSetSource
from calico.felix.calc.sequencer import EventSequencer

log = logging.getLogger(__name__)

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def endpoint_ips(endpoint: Endpoint) -> tuple[str, ...]:
    """The addresses an endpoint contributes to IP sets, each once: a workload's nets without
    their prefix length; a host endpoint's expected addresses (felix.md §3.6). A tuple: kept for
    every endpoint, and a frozenset of one address is 216 bytes to the tuple's 48."""
    if isinstance(endpoint, res.WorkloadEndpoint):
        ips = [net.split("/")[0] for net in endpoint.ipv4_nets + endpoint.ipv6_nets]
    else:
        ips = [*endpoint.expected_ipv4_addrs, *endpoint.expected_ipv6_addrs]
    return tuple(dict.fromkeys(ips))


def _compact_key(key: EndpointKey) -> EndpointKey:
    """The key (equal) with its host and orchestrator names interned: the parsed path's own
    copies of those few names were 1.2 MB at 11,000 endpoints."""
    if isinstance(key, WorkloadEndpointKey):
        return WorkloadEndpointKey(
            sys.intern(key.hostname), sys.intern(key.orchestrator), key.workload, key.endpoint
        )
    return HostEndpointKey(sys.intern(key.hostname), key.endpoint)


class CalcGraph:
    def __init__(self, hostname: str, interface_prefixes: Iterable[str]) -> None:
        self._hostname = hostname
        self._interface_prefixes = tuple(interface_prefixes)
        self.sequencer = EventSequencer()
        self._members = MemberCalculator(self.sequencer, self._ip_sets_of)
        # Rule selectors and tags x endpoints on every host -> IP-set membership.
        self._selector_index: LabelIndex[str, EndpointKey] = LabelIndex(
            self._members.match_started,
            self._members.match_stopped,
            self._members.matches_started,
        )
        self._tag_index = TagIndex(self._members.match_started, self._members.match_stopped)
        self.active = ActiveRulesCalculator(
            self.sequencer, self._activate_set, self._deactivate_set
        )
        self._endpoints: dict[EndpointKey, Endpoint] = {}
        self._profile_labels: dict[str, res.Labels] = {}
        self._labels_dirty: set[EndpointKey] = set()
        # Endpoints' equal label maps and profile lists, for _shared_parts.
        self._shared_labels: dict[res.Labels, res.Labels] = {}
        self._shared_profiles: dict[tuple[str, ...], tuple[str, ...]] = {}
        # Hosts with a valid bird_ip: only for num_hosts() (the sequencer keeps pending changes).
        self._host_ips: set[str] = set()
        # Keys whose value is invalid -> hash of that value: each refusal is logged once.
        self._invalid: dict[Hashable, int] = {}

    # --- Inputs --------------------------------------------------------------------------------

    def on_status(self, status: SyncStatus) -> None:
        if status == SyncStatus.IN_SYNC:
            self.sequencer.on_datastore_in_sync()

    def on_updates(self, updates: Iterable[tuple[str, str | None]]) -> None:
        for path, value in updates:
            self.on_update(path, value)

    def on_update(self, path: str, value: str | None) -> None:
        key = parse_key(path)
        if key is None:
            return
        if isinstance(key, BadKey):
            # A key Felix would read, with an ID that could not be used safely: as if absent.
            log.warning("Ignoring key %s: %s", quoted(path), key.reason)
            return
        try:
            self._dispatch(key, value)
        except Exception:
            # A value that passed validation but still broke the graph (a bug): this object
            # fails closed, as if deleted, and every other object is still handled.
            log.exception("Failed to handle %s; treating it as deleted", quoted(path))
            if value is not None:
                self._dispatch(key, None)  # if even this fails, the graph is broken: raise

    def flush(self) -> list[m.Message]:
        self._tag_index.recalculate_dirty()
        self._index_dirty_labels()
        self.active.resolve_dirty_endpoints()
        return self.sequencer.flush()

    def num_hosts(self) -> int:
        """Distinct hosts in the datastore with an endpoint or a bird_ip (usage reports' size).

        Read-only, and safe to call from another thread: `.copy()` of a dict or set is one C
        call that runs no Python code, so the graph's thread cannot change it half-way (GIL).
        """
        endpoint_hosts = {key.hostname for key in self._endpoints.copy()}
        return len(endpoint_hosts | self._host_ips.copy())

    # --- Dispatcher ----------------------------------------------------------------------------

    def _dispatch(self, key: Key, value: str | None) -> None:
        match key:
            case WorkloadEndpointKey():
                endpoint = self._parsed(res.parse_workload_endpoint, value, key)
                if endpoint is not None and not self._valid_local_name(key, endpoint):
                    endpoint = None
                self._update_endpoint(key, endpoint)
            case HostEndpointKey():
                self._update_endpoint(key, self._parsed(res.parse_host_endpoint, value, key))
            case ProfileRulesKey(profile):
                rules = self._parsed(res.parse_profile_rules, value, key)
                self.active.update_profile_rules(profile, rules)
            case ProfileTagsKey(profile):
                tags = self._parsed(res.parse_profile_tags, value, key)
                self._tag_index.update_profile_tags(profile, tags or ())
            case ProfileLabelsKey(profile):
                labels = self._parsed(res.parse_profile_labels, value, key)
                self._update_profile_labels(profile, labels)
            case TierMetadataKey(tier):
                self.active.update_tier(tier, self._parsed(res.parse_tier_metadata, value, key))
            case PolicyKey():
                self.active.update_policy(key, self._parsed(res.parse_policy, value, key))
            case IPPoolKey():
                pool = self._parsed(res.parse_ip_pool, value, key)
                if pool is None:
                    self.sequencer.pools.remove(key)
                else:
                    self.sequencer.pools.update(key, m.IPPoolUpdate(key, pool))
            case HostIPKey(hostname):
                self._update_host_ip(hostname, value)
            case _:
                # Config and Ready are the daemon's (a config change restarts Felix); Felix's
                # own status keys are the status reporter's.
                pass

    def _parsed(self, parser: Callable[[str, _K], _V], value: str | None, key: _K) -> _V | None:
        """The validated value, or None for a deleted key or an invalid value (felix.md §2.9:
        invalid data is treated as if the key were deleted). An invalid value is logged once per
        key and value: a resync that delivers it again does not repeat the warning."""
        if value is None:
            self._invalid.pop(key, None)
            return None
        try:
            parsed = parser(value, key)
        except res.InvalidValue as e:
            if self._invalid.get(key) != hash(value):
                self._invalid[key] = hash(value)
                log.warning("%s; treating it as deleted", e)
            return None
        self._invalid.pop(key, None)
        return parsed

    def _valid_local_name(self, key: WorkloadEndpointKey, endpoint: res.WorkloadEndpoint) -> bool:
        if key.hostname != self._hostname or endpoint.name.startswith(self._interface_prefixes):
            return True
        log.warning(
            "Invalid workload endpoint %s: interface %r does not start with any InterfacePrefix "
            "(%s); treating it as deleted",
            key.path,
            endpoint.name,
            ",".join(self._interface_prefixes),
        )
        return False

    def _update_host_ip(self, hostname: str, value: str | None) -> None:
        address: str | None = None
        if value is not None:
            try:
                address = str(ipaddress.IPv4Address(value.strip()))
            except ValueError:
                log.warning(
                    "Invalid bird_ip %s for host %s; treating it as deleted",
                    quoted(value),
                    hostname,
                )
        # Only counted (usage reports); nothing in the dataplane uses other hosts' addresses.
        if address is None:
            self._host_ips.discard(hostname)
        else:
            self._host_ips.add(hostname)

    # --- Endpoints and label inheritance ---------------------------------------------------------

    def _update_endpoint(self, key: EndpointKey, endpoint: Endpoint | None) -> None:
        if endpoint is not None:
            endpoint = self._shared_parts(endpoint)
            if key not in self._endpoints:
                key = _compact_key(key)  # the one copy of the key that the graph keeps
        old = self._endpoints.get(key)
        if old == endpoint:
            return
        if endpoint is None:
            del self._endpoints[key]
        else:
            self._endpoints[key] = endpoint

        # IPs first, so that matches started or stopped later count the endpoint's new IPs.
        self._members.update_endpoint_ips(
            key, endpoint_ips(endpoint) if endpoint is not None else ()
        )
        local = key.hostname == self._hostname
        if endpoint is None:
            self._tag_index.remove_endpoint(key)
            self._selector_index.remove_labels(key)
            self._labels_dirty.discard(key)
        else:
            self._tag_index.update_endpoint(key, endpoint.profile_ids)
            self._labels_dirty.add(key)  # indexed at the next flush
        if local:
            self.active.update_local_endpoint(key, endpoint)

    def _shared_parts(self, endpoint: Endpoint) -> Endpoint:
        """The endpoint (equal), holding the same label map and profile list objects as other
        endpoints with equal ones. Endpoints of one application carry the same few labels and
        profiles, but each value decoded from JSON came with its own copies of every string, dict
        and tuple: at 11,000 endpoints, 8 MB of the graph's 48 were such copies."""
        labels = self._shared_labels.get(endpoint.labels)
        if labels is None:
            # A new label map: its names and values (which other maps repeat) interned.
            labels = shared(
                self._shared_labels,
                res.Labels({sys.intern(k): sys.intern(v) for k, v in endpoint.labels.items()}),
            )
        profile_ids = shared(self._shared_profiles, tuple(map(sys.intern, endpoint.profile_ids)))
        if isinstance(endpoint, res.WorkloadEndpoint):
            return dataclasses.replace(
                endpoint, state=sys.intern(endpoint.state), labels=labels, profile_ids=profile_ids
            )
        return dataclasses.replace(endpoint, labels=labels, profile_ids=profile_ids)

    def _update_profile_labels(self, profile_id: str, labels: res.Labels | None) -> None:
        if self._profile_labels.get(profile_id) == labels:
            return
        if labels is None:
            del self._profile_labels[profile_id]
        else:
            self._profile_labels[profile_id] = labels
        # The tag index's endpoints by profile serve here too (the same relation, kept once).
        users = self._tag_index.endpoints_with_profile(profile_id)
        self._labels_dirty.update(cast("Iterator[EndpointKey]", users))

    def _index_dirty_labels(self) -> None:
        """Index the merged labels of endpoints that changed since the last flush. Deferred to
        the flush so that a batch (a snapshot above all, where profiles' labels arrive after
        the endpoints that inherit them) evaluates each endpoint once, not once per change."""
        for key in self._labels_dirty:
            merged = self._merged_labels(self._endpoints[key])
            self._selector_index.update_labels(key, merged)
            if key.hostname == self._hostname:
                self.active.update_local_labels(key, merged)
        self._labels_dirty.clear()

    def _merged_labels(self, endpoint: Endpoint) -> res.Labels:
        """Profiles' labels in list order (later wins), then the endpoint's own (felix.md §3.4)."""
        if not endpoint.profile_ids:
            return endpoint.labels
        merged: dict[str, str] = {}
        for profile_id in endpoint.profile_ids:
            merged.update(self._profile_labels.get(profile_id, res.EMPTY_LABELS).items())
        merged.update(endpoint.labels.items())
        return res.Labels(merged)

    # --- IP sets -------------------------------------------------------------------------------

    def _ip_sets_of(self, key: Hashable) -> list[str]:
        """The active IP sets (selector and tag) that currently hold the endpoint's IPs."""
        endpoint = cast(EndpointKey, key)  # the member calculator's keys are endpoint keys
        return [
            *self._selector_index.selectors_for(endpoint),
            *self._tag_index.active_set_ids(endpoint),
        ]

    def _activate_set(self, set_id: str, source: IPSetSource) -> None:
        self._members.set_activated(set_id)
        if isinstance(source, Selector):
            self._selector_index.update_selector(set_id, source)
        else:
            self._tag_index.activate(source)

    def _deactivate_set(self, set_id: str, source: IPSetSource) -> None:
        # The set first: its matches' stops then do no per-member work (members.py).
        self._members.set_deactivated(set_id)
        if isinstance(source, Selector):
            self._selector_index.remove_selector(set_id)
        else:
            self._tag_index.deactivate(source)
