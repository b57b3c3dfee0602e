"""Active rules and per-endpoint policy order: the graph's "what applies on this host" half.

* A policy is **active** when its selector matches at least one local endpoint that uses it and its
  tier has metadata (felix.md §2.5, §4.5; a tier without metadata is ignored, as in 1.4). Untracked
  policies are used by host endpoints only.
* A profile is active when a local endpoint lists it. A profile whose rules are missing or invalid
  is sent as a deny-all stand-in (§2.9).
* The rule scanner: every tag and selector in the rules of active policies and profiles is an
  active IP set, reference-counted across rule holders; the caller's `on_set_activated` /
  `on_set_deactivated` start and stop calculating its members.
* The policy resolver: each local endpoint's matching policies, grouped into tiers, ordered by
  (tier order, tier name) then (policy order, policy name), a missing order sorting last.
  Endpoints are marked dirty as things change and resolved once per flush.

Policy selectors are matched against local endpoints only, by a `LabelIndex` keyed by PolicyKey.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from calico.common.datamodel_v1 import HostEndpointKey, PolicyKey, WorkloadEndpointKey
from calico.common.index import add_to_index, remove_from_index
from calico.common.labelindex import LabelIndex
from calico.common.resources import (
    HostEndpoint,
    Labels,
    Policy,
    ProfileRules,
    TierMetadata,
    WorkloadEndpoint,
)
from calico.common.selectors import parse_selector
from calico.felix.calc import messages as m
from calico.felix.calc.rules import IPSetSource, ip_set_sources, resolve_rules
from calico.felix.calc.sequencer import EventSequencer

EndpointKey = WorkloadEndpointKey | HostEndpointKey
Endpoint = WorkloadEndpoint | HostEndpoint
RuleHolder = PolicyKey | str  # a policy, or a profile ID
SetCallback = Callable[[str, IPSetSource], None]


def _order(value: float | None) -> float:
    return math.inf if value is None else value


class ActiveRulesCalculator:
    def __init__(
        self,
        sequencer: EventSequencer,
        on_set_activated: SetCallback,
        on_set_deactivated: SetCallback,
    ) -> None:
        self._sequencer = sequencer
        self._on_set_activated = on_set_activated
        self._on_set_deactivated = on_set_deactivated
        self._policy_index: LabelIndex[PolicyKey, EndpointKey] = LabelIndex(
            self._policy_match_started, self._policy_match_stopped
        )
        self._policies: dict[PolicyKey, Policy] = {}
        self._policies_by_tier: dict[str, set[PolicyKey]] = {}
        self._tiers: dict[str, TierMetadata] = {}
        self._profile_rules: dict[str, ProfileRules] = {}
        self._local_endpoints: dict[EndpointKey, Endpoint] = {}
        self._policy_users: dict[PolicyKey, set[EndpointKey]] = {}
        self._profile_users: dict[str, set[EndpointKey]] = {}
        self._holder_sets: dict[RuleHolder, frozenset[str]] = {}
        self._set_refs: dict[str, int] = {}
        self._set_sources: dict[str, IPSetSource] = {}
        self._dirty: set[EndpointKey] = set()

    # --- Queries (for tests and diagnostics) ---------------------------------------------------

    def active_policies(self) -> frozenset[PolicyKey]:
        return frozenset(self._policy_users)

    def active_profiles(self) -> frozenset[str]:
        return frozenset(self._profile_users)

    def active_sets(self) -> dict[str, IPSetSource]:
        return dict(self._set_sources)

    # --- Inputs --------------------------------------------------------------------------------

    def update_local_endpoint(self, key: EndpointKey, endpoint: Endpoint | None) -> None:
        """A local endpoint changed; its labels follow through `update_local_labels`."""
        old = self._local_endpoints.get(key)
        old_profiles = old.profile_ids if old is not None else ()
        new_profiles = endpoint.profile_ids if endpoint is not None else ()
        if endpoint is None:
            self._local_endpoints.pop(key, None)
            self._policy_index.remove_labels(key)
            self._dirty.discard(key)
            self._remove_endpoint_message(key)
        else:
            self._local_endpoints[key] = endpoint
            self._dirty.add(key)
        # Add new users before dropping old ones, so a profile that stays listed stays active.
        for profile_id in new_profiles:
            self._add_profile_user(profile_id, key)
        for profile_id in set(old_profiles) - set(new_profiles):
            self._remove_profile_user(profile_id, key)

    def update_local_labels(self, key: EndpointKey, labels: Labels) -> None:
        """A local endpoint's merged labels (its own and its profiles') may have changed."""
        self._policy_index.update_labels(key, labels)

    def update_profile_rules(self, profile_id: str, rules: ProfileRules | None) -> None:
        if self._profile_rules.get(profile_id) == rules:
            return
        if rules is None:
            self._profile_rules.pop(profile_id, None)
        else:
            self._profile_rules[profile_id] = rules
        if profile_id in self._profile_users:
            self._send_profile(profile_id)

    def update_tier(self, tier: str, metadata: TierMetadata | None) -> None:
        old = self._tiers.get(tier)
        if old == metadata:
            return
        members = sorted(self._policies_by_tier.get(tier, ()), key=lambda k: k.policy)
        if metadata is None:
            del self._tiers[tier]
            for key in members:
                self._policy_index.remove_selector(key)
            return
        self._tiers[tier] = metadata
        if old is None:
            for key in members:
                self._index_policy(key)
        else:  # only the order changed
            for key in members:
                self._dirty.update(self._policy_index.matches(key))

    def update_policy(self, key: PolicyKey, policy: Policy | None) -> None:
        old = self._policies.get(key)
        if old == policy:
            return
        if policy is None:
            del self._policies[key]
            remove_from_index(self._policies_by_tier, key.tier, key)
            self._policy_index.remove_selector(key)
            return
        self._policies[key] = policy
        add_to_index(self._policies_by_tier, key.tier, key)
        if key.tier not in self._tiers:
            return  # ignored until its tier has metadata
        if old is not None and old.untracked != policy.untracked:
            # Who uses the policy depends on the flag: restart its matches.
            self._policy_index.remove_selector(key)
        self._index_policy(key)
        if key in self._policy_users:
            self._send_policy(key)  # rules may have changed
        if old is None or old.order != policy.order:
            # The order places the policy in its endpoints' tier lists. A change of rules alone
            # re-sends only the policy (its endpoints' lists are the same); a change of selector
            # reaches the endpoints that start or stop matching through the index above.
            self._dirty.update(self._policy_index.matches(key))

    # --- Output --------------------------------------------------------------------------------

    def resolve_dirty_endpoints(self) -> None:
        """Send an update for each local endpoint whose data or policy list may have changed."""
        for key in self._dirty:
            endpoint = self._local_endpoints[key]
            if isinstance(key, WorkloadEndpointKey):
                assert isinstance(endpoint, WorkloadEndpoint)
                tiers = self._tiers_for(key, untracked=False)
                self._sequencer.workload_endpoints.update(
                    key, m.WorkloadEndpointUpdate(key, endpoint, tiers)
                )
            else:
                assert isinstance(endpoint, HostEndpoint)
                self._sequencer.host_endpoints.update(
                    key,
                    m.HostEndpointUpdate(
                        key,
                        endpoint,
                        self._tiers_for(key, untracked=False),
                        self._tiers_for(key, untracked=True),
                    ),
                )
        self._dirty.clear()

    def _tiers_for(self, key: EndpointKey, *, untracked: bool) -> tuple[m.TierInfo, ...]:
        policies = [
            p
            for p in self._policy_index.selectors_for(key)
            if self._policies[p].untracked == untracked
        ]
        policies.sort(
            key=lambda p: (
                _order(self._tiers[p.tier].order),
                p.tier,
                _order(self._policies[p].order),
                p.policy,
            )
        )
        tiers: list[m.TierInfo] = []
        names: list[str] = []
        for index, policy in enumerate(policies):
            names.append(policy.policy)
            if index + 1 == len(policies) or policies[index + 1].tier != policy.tier:
                tiers.append(m.TierInfo(policy.tier, tuple(names)))
                names = []
        return tuple(tiers)

    def _remove_endpoint_message(self, key: EndpointKey) -> None:
        if isinstance(key, WorkloadEndpointKey):
            self._sequencer.workload_endpoints.remove(key)
        else:
            self._sequencer.host_endpoints.remove(key)

    # --- Policies ------------------------------------------------------------------------------

    def _index_policy(self, key: PolicyKey) -> None:
        self._policy_index.update_selector(key, parse_selector(self._policies[key].selector))

    def _policy_match_started(self, key: PolicyKey, endpoint: EndpointKey) -> None:
        self._dirty.add(endpoint)
        if self._policies[key].untracked and isinstance(endpoint, WorkloadEndpointKey):
            return  # untracked policies apply to host endpoints only
        users = self._policy_users.setdefault(key, set())
        if not users:
            self._send_policy(key)
        users.add(endpoint)

    def _policy_match_stopped(self, key: PolicyKey, endpoint: EndpointKey) -> None:
        if endpoint in self._local_endpoints:
            self._dirty.add(endpoint)
        if remove_from_index(self._policy_users, key, endpoint):
            self._sequencer.policies.remove(key)
            self._set_holder_sources(key, {})

    def _send_policy(self, key: PolicyKey) -> None:
        policy = self._policies[key]
        rules = policy.inbound_rules + policy.outbound_rules
        self._set_holder_sources(key, ip_set_sources(rules))
        self._sequencer.policies.update(
            key,
            m.ActivePolicyUpdate(
                key,
                resolve_rules(policy.inbound_rules),
                resolve_rules(policy.outbound_rules),
                policy.untracked,
            ),
        )

    # --- Profiles ------------------------------------------------------------------------------

    def _add_profile_user(self, profile_id: str, endpoint: EndpointKey) -> None:
        users = self._profile_users.setdefault(profile_id, set())
        if not users:
            self._send_profile(profile_id)
        users.add(endpoint)

    def _remove_profile_user(self, profile_id: str, endpoint: EndpointKey) -> None:
        if remove_from_index(self._profile_users, profile_id, endpoint):
            self._sequencer.profiles.remove(profile_id)
            self._set_holder_sources(profile_id, {})

    def _send_profile(self, profile_id: str) -> None:
        rules = self._profile_rules.get(profile_id)
        if rules is None:
            self._set_holder_sources(profile_id, {})
            message = m.ActiveProfileUpdate(profile_id, m.DENY_ALL, m.DENY_ALL, stand_in=True)
        else:
            self._set_holder_sources(
                profile_id, ip_set_sources(rules.inbound_rules + rules.outbound_rules)
            )
            message = m.ActiveProfileUpdate(
                profile_id,
                resolve_rules(rules.inbound_rules),
                resolve_rules(rules.outbound_rules),
            )
        self._sequencer.profiles.update(profile_id, message)

    # --- IP sets used by active rules ----------------------------------------------------------

    def _set_holder_sources(self, holder: RuleHolder, sources: dict[str, IPSetSource]) -> None:
        old = self._holder_sets.get(holder, frozenset())
        new = frozenset(sources)
        if new:
            self._holder_sets[holder] = new
        else:
            self._holder_sets.pop(holder, None)
        for set_id in sorted(new - old):
            count = self._set_refs.get(set_id, 0)
            self._set_refs[set_id] = count + 1
            if count == 0:
                self._set_sources[set_id] = sources[set_id]
                self._on_set_activated(set_id, sources[set_id])
        for set_id in sorted(old - new):
            count = self._set_refs[set_id] - 1
            if count:
                self._set_refs[set_id] = count
            else:
                del self._set_refs[set_id]
                self._on_set_deactivated(set_id, self._set_sources.pop(set_id))
