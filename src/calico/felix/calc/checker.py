"""A fake dataplane that enforces the calc → dataplane contract on every message it receives.

It keeps the state a real dataplane would program (IP sets with members, active policies and
profiles, local endpoints with their tiers, pools) and raises
`ContractViolation` the moment a message breaks an ordering guarantee of `messages.py`. The graph
tests feed it every flush; the benchmark uses it as a zero-cost dataplane.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import assert_never

from calico.common.datamodel_v1 import HostEndpointKey, IPPoolKey, PolicyKey, WorkloadEndpointKey
from calico.felix.calc import messages as m


class ContractViolation(AssertionError):
    pass


@dataclass
class DataplaneState:
    ip_sets: dict[str, frozenset[str]] = field(default_factory=dict)
    policies: dict[PolicyKey, m.ActivePolicyUpdate] = field(default_factory=dict)
    profiles: dict[str, m.ActiveProfileUpdate] = field(default_factory=dict)
    workload_endpoints: dict[WorkloadEndpointKey, m.WorkloadEndpointUpdate] = field(
        default_factory=dict
    )
    host_endpoints: dict[HostEndpointKey, m.HostEndpointUpdate] = field(default_factory=dict)
    pools: dict[IPPoolKey, m.IPPoolUpdate] = field(default_factory=dict)


def _rules(update: m.ActivePolicyUpdate | m.ActiveProfileUpdate) -> Iterable[m.ResolvedRule]:
    return update.inbound_rules + update.outbound_rules


class ContractChecker:
    def __init__(self) -> None:
        self.state = DataplaneState()
        self.in_sync = False

    def apply_flush(self, messages: list[m.Message]) -> None:
        """Apply one flush's messages. Before the first `InSync`, nothing may be sent but the
        flush that ends with `InSync`."""
        if not self.in_sync and not (messages and isinstance(messages[-1], m.InSync)):
            for message in messages:
                raise ContractViolation(f"{message!r} sent before the datastore was in sync")
        for message in messages:
            self.apply(message)

    def apply(self, message: m.Message) -> None:
        state = self.state
        match message:
            case m.InSync():
                _check(not self.in_sync, "InSync sent twice")
                self.in_sync = True
            case m.IPSetUpdate(set_id, members):
                _check(set_id not in state.ip_sets, f"IPSetUpdate for known set {set_id}")
                _check(
                    len(set(members)) == len(members), f"IPSetUpdate repeats a member of {set_id}"
                )
                state.ip_sets[set_id] = frozenset(members)
            case m.IPSetDeltaUpdate(set_id, added, removed):
                self._apply_delta(set_id, added, removed)
            case m.IPSetRemove(set_id):
                _check(set_id in state.ip_sets, f"IPSetRemove of unknown set {set_id}")
                for holder in list(state.policies.values()) + list(state.profiles.values()):
                    for rule in _rules(holder):
                        _check(
                            set_id not in rule.ip_set_ids(),
                            f"{set_id} removed, used by {holder.id}",
                        )
                del state.ip_sets[set_id]
            case m.ActivePolicyUpdate(policy_id):
                self._check_sets_known(message)
                state.policies[policy_id] = message
            case m.ActiveProfileUpdate(profile_id):
                self._check_sets_known(message)
                state.profiles[profile_id] = message
            case m.ActivePolicyRemove(policy_id):
                _check(policy_id in state.policies, f"unknown policy {policy_id} removed")
                for user in self._endpoint_updates():
                    _check(
                        policy_id not in _policy_ids(user),
                        f"{policy_id} removed, used by {user.id}",
                    )
                del state.policies[policy_id]
            case m.ActiveProfileRemove(profile_id):
                _check(profile_id in state.profiles, f"unknown profile {profile_id} removed")
                for user in self._endpoint_updates():
                    listed = user.endpoint.profile_ids
                    _check(profile_id not in listed, f"{profile_id} removed, used by {user.id}")
                del state.profiles[profile_id]
            case m.WorkloadEndpointUpdate(key):
                self._check_endpoint(message)
                state.workload_endpoints[key] = message
            case m.HostEndpointUpdate(key):
                self._check_endpoint(message)
                state.host_endpoints[key] = message
            case m.WorkloadEndpointRemove(key):
                _check(key in state.workload_endpoints, f"unknown endpoint {key} removed")
                del state.workload_endpoints[key]
            case m.HostEndpointRemove(key):
                _check(key in state.host_endpoints, f"unknown host endpoint {key} removed")
                del state.host_endpoints[key]
            case m.IPPoolUpdate(key):
                state.pools[key] = message
            case m.IPPoolRemove(key):
                _check(key in state.pools, f"unknown pool {key} removed")
                del state.pools[key]
            case _:
                assert_never(message)

    def _apply_delta(self, set_id: str, added: frozenset[str], removed: frozenset[str]) -> None:
        members = self.state.ip_sets.get(set_id)
        _check(members is not None, f"delta for unknown set {set_id}")
        assert members is not None
        _check(bool(added or removed), f"empty delta for {set_id}")
        _check(not added & members, f"{set_id}: adding present members {added & members}")
        _check(removed <= members, f"{set_id}: removing absent members {removed - members}")
        self.state.ip_sets[set_id] = (members - removed) | added

    def _check_sets_known(self, update: m.ActivePolicyUpdate | m.ActiveProfileUpdate) -> None:
        for rule in _rules(update):
            for set_id in rule.ip_set_ids():
                _check(set_id in self.state.ip_sets, f"{update.id} uses unknown set {set_id}")

    def _check_endpoint(self, update: m.WorkloadEndpointUpdate | m.HostEndpointUpdate) -> None:
        for profile_id in update.endpoint.profile_ids:
            _check(profile_id in self.state.profiles, f"{update.id}: unknown profile {profile_id}")
        for policy_id in _policy_ids(update):
            _check(policy_id in self.state.policies, f"{update.id}: unknown policy {policy_id}")

    def _endpoint_updates(self) -> list[m.WorkloadEndpointUpdate | m.HostEndpointUpdate]:
        return [*self.state.workload_endpoints.values(), *self.state.host_endpoints.values()]


def _policy_ids(update: m.WorkloadEndpointUpdate | m.HostEndpointUpdate) -> list[PolicyKey]:
    tiers = update.tiers
    if isinstance(update, m.HostEndpointUpdate):
        tiers = tiers + update.untracked_tiers
    return [PolicyKey(tier.name, name) for tier in tiers for name in tier.policies]


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise ContractViolation(problem)
