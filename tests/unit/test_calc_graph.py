"""Whole-graph state-sequence tests for the calculation graph.

Named datastore states are replayed into a `CalcGraph` in many ways (keys forwards and backwards,
states reversed, empty states inserted, transitions split in two or squashed together, a flush
after every key or only at the end, in-sync before or after the first snapshot). Every flush goes
through the contract-checking fake dataplane, and at every flush after in-sync the dataplane's
state must equal what the brute-force oracle computes from the datastore as it stands.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from calc_oracle import expected_state

from calico.common import resources
from calico.common.datamodel_v1 import Key, PolicyKey, WorkloadEndpointKey
from calico.common.etcd.syncer import SyncStatus
from calico.common.resources import WorkloadEndpoint
from calico.common.selectors import parse_selector, tag_id
from calico.felix.calc import messages as m
from calico.felix.calc.checker import ContractChecker, ContractViolation
from calico.felix.calc.graph import CalcGraph
from calico.felix.calc.sequencer import ContractError, EventSequencer

HOST = "h1"
PREFIXES = ("tap",)
State = dict[str, str]


def wep_path(host: str, endpoint: str, workload: str = "w") -> str:
    return f"/calico/v1/host/{host}/workload/openstack/{workload}/endpoint/{endpoint}"


def wep(
    name: str,
    ips: list[str],
    profiles: list[str],
    labels: dict[str, str] | None = None,
    **extra: object,
) -> str:
    body: dict[str, object] = {
        "state": "active",
        "name": name,
        "mac": "02:00:00:00:00:01",
        "profile_ids": profiles,
        "ipv4_nets": ips,
    }
    if labels:
        body["labels"] = labels
    body.update(extra)
    return json.dumps(body)


def profile_rules(
    pid: str, inbound: list[dict[str, object]], outbound: list[dict[str, object]]
) -> State:
    return {
        f"/calico/v1/policy/profile/{pid}/rules": json.dumps(
            {"inbound_rules": inbound, "outbound_rules": outbound}
        )
    }


def policy(
    tier: str,
    name: str,
    selector: str,
    order: object = None,
    inbound: list[dict[str, object]] | None = None,
    **extra: object,
) -> State:
    body: dict[str, object] = {
        "selector": selector,
        "inbound_rules": inbound or [{}],
        "outbound_rules": [],
    }
    if order is not None:
        body["order"] = order
    body.update(extra)
    return {f"/calico/v1/policy/tier/{tier}/policy/{name}": json.dumps(body)}


def tier(name: str, order: object = None) -> State:
    return {
        f"/calico/v1/policy/tier/{name}/metadata": json.dumps(
            {} if order is None else {"order": order}
        )
    }


# --- Named states ---------------------------------------------------------------------------------

EMPTY: State = {}

# A local endpoint whose profile does not exist: the profile is a deny-all stand-in.
LOCAL_EP_MISSING_PROFILE: State = {wep_path(HOST, "e1"): wep("tap1", ["10.65.0.1/32"], ["web"])}

# Profile "web" allows from its own tag; a remote endpoint shares the tag and, with a second
# remote endpoint, one IP (10.65.0.9) that must stay until its last owner goes.
TAGS: State = {
    **LOCAL_EP_MISSING_PROFILE,
    **profile_rules("web", [{"src_tag": "web"}], [{}]),
    "/calico/v1/policy/profile/web/tags": json.dumps(["web"]),
    wep_path("h2", "e2"): wep("tap2", ["10.65.0.9/32"], ["web"]),
    wep_path("h3", "e3"): wep("cali3", ["10.65.0.9/32", "10.65.1.3/32"], ["web", "other"]),
}
TAGS_ONE_OWNER_LEFT: State = {k: v for k, v in TAGS.items() if k != wep_path("h2", "e2")}

# Label inheritance and selectors in rules: "db" endpoints get role=db from their profile; one
# overrides it with its own label. Policies in ordered tiers, a tier without metadata ignored.
POLICIES: State = {
    **TAGS,
    "/calico/v1/policy/profile/db/labels": json.dumps({"role": "db", "zone": "a"}),
    wep_path("h2", "d1"): wep("tapd1", ["10.65.2.1/32"], ["db"]),
    wep_path("h2", "d2"): wep("tapd2", ["10.65.2.2/32"], ["db"], {"role": "cache"}),
    wep_path(HOST, "e1"): wep("tap1", ["10.65.0.1/32"], ["web"], {"app": "shop"}),
    **tier("t1", 10),
    **tier("t2", 5),
    **policy("t1", "b", "app == 'shop'", 2, [{"src_selector": "role == 'db'"}]),
    **policy("t1", "a", "has(app)", 2, [{"!src_selector": "role == 'cache'", "action": "deny"}]),
    **policy("t1", "z", "all()", 1),
    **policy("t2", "only", "app in {'shop', 'x'}", None, [{"action": "next-tier"}]),
    **policy("t3", "ignored", "all()", 1),  # t3 has no metadata
    **policy("t1", "other-host", "app == 'nothing-here'"),
}
# The same with tier t2 moved after t1 and the missing tier given metadata.
POLICIES_REORDERED: State = {**POLICIES, **tier("t2", 20), **tier("t3")}
# A profile's labels change: d1 stops being "db", and so leaves the selector's set.
POLICIES_LABELS_CHANGED: State = {
    **POLICIES,
    "/calico/v1/policy/profile/db/labels": json.dumps({"role": "dbx"}),
}

HOST_ENDPOINTS: State = {
    **POLICIES,
    f"/calico/v1/host/{HOST}/endpoint/eth0": json.dumps(
        {
            "name": "eth0",
            "expected_ipv4_addrs": ["198.18.0.1"],
            "profile_ids": ["hostprof"],
            "labels": {"app": "host"},
        }
    ),
    "/calico/v1/host/h2/endpoint/eth0": json.dumps(
        {"expected_ipv4_addrs": ["198.18.0.2"], "labels": {"role": "db"}}
    ),
    **profile_rules("hostprof", [], []),
    **policy(
        "t1", "untracked", "app == 'host'", 1, [{"src_selector": "has(role)"}], untracked=True
    ),
    **policy("t1", "wl-untracked", "app == 'shop'", 1, untracked=True),  # workloads ignore it
    "/calico/v1/ipam/v4/pool/10.65.0.0-16": json.dumps(
        {"cidr": "10.65.0.0/16", "masquerade": True}
    ),
    "/calico/v1/host/h2/bird_ip": "198.18.0.2",
    "/calico/v1/config/LogSeverityScreen": "debug",
    f"/calico/v1/host/{HOST}/config/LogSeverityFile": "none",
    "/calico/v1/host/h2/config/LogSeverityFile": "debug",  # another host's: not ours
    "/calico/v1/Ready": "true",
}

# Invalid values are as good as deleted: the endpoint with a bad MAC disappears, the policy with a
# bad selector leaves every endpoint, the profile with an unknown rule key becomes a stand-in, a
# local endpoint whose interface lacks the prefix is refused.
INVALID: State = {
    **HOST_ENDPOINTS,
    wep_path("h2", "d1"): wep("tapd1", ["10.65.2.1/32"], ["db"], mac="not-a-mac"),
    **policy("t1", "b", "app == ", 2),
    **profile_rules("web", [{"src_tag": "web", "bogus": 1}], []),
    wep_path(HOST, "bad-name"): wep("eth9", ["10.65.0.50/32"], ["web"]),
    "/calico/v1/host/h2/bird_ip": "not-an-ip",
    "/calico/v1/policy/profile/db/labels": "{not json",
    # Hostile nesting: deeper than the selector parser allows, deeper than json can recurse.
    **policy("t1", "deep", "(" * 400 + "a == 'b'" + ")" * 400, 3),
    "/calico/v1/policy/profile/db/tags": "[" * 100_000,
}

# Floating IPs, IPv6, an inactive endpoint and an endpoint that moves away from this host.
MIXED: State = {
    **TAGS,
    wep_path(HOST, "e1"): wep(
        "tap1",
        ["10.65.0.1/32"],
        ["web"],
        ipv6_nets=["fd00:65::1/128"],
        ipv4_nat=[{"int_ip": "10.65.0.1", "ext_ip": "198.18.1.1"}],
    ),
    wep_path(HOST, "e4"): wep("tap4", ["10.65.0.4/32"], ["web"], state="inactive"),
    wep_path("h2", "e2"): wep("tap2", ["10.65.0.9/32", "10.65.0.1/32"], ["web"]),
}

STATES: dict[str, State] = {
    "empty": EMPTY,
    "local_ep_missing_profile": LOCAL_EP_MISSING_PROFILE,
    "tags": TAGS,
    "tags_one_owner_left": TAGS_ONE_OWNER_LEFT,
    "policies": POLICIES,
    "policies_reordered": POLICIES_REORDERED,
    "policies_labels_changed": POLICIES_LABELS_CHANGED,
    "host_endpoints": HOST_ENDPOINTS,
    "invalid": INVALID,
    "mixed": MIXED,
}

SEQUENCES: dict[str, list[str]] = {
    "build_up": ["local_ep_missing_profile", "tags", "tags_one_owner_left", "tags"],
    "policies": ["policies", "policies_reordered", "policies_labels_changed", "policies"],
    "host_endpoints": ["tags", "host_endpoints", "invalid", "host_endpoints", "empty"],
    "mixed": ["mixed", "tags", "mixed", "local_ep_missing_profile"],
    "everything": ["invalid", "policies_reordered", "mixed", "empty", "host_endpoints"],
}


# --- Expanders: other ways to reach the same states -----------------------------------------------


def as_is(seq: list[State]) -> list[State]:
    return seq


def reversed_states(seq: list[State]) -> list[State]:
    return seq[::-1]


def empty_between(seq: list[State]) -> list[State]:
    out: list[State] = []
    for state in seq:
        out += [state, EMPTY]
    return out


def squashed(seq: list[State]) -> list[State]:
    return seq[::2] + seq[-1:]


def split(seq: list[State]) -> list[State]:
    """Each transition in two halves: the halfway datastore is a state of its own."""
    out: list[State] = []
    current: State = {}
    for state in seq:
        changes = sorted(set(current) | set(state))
        half = dict(current)
        for path in changes[: len(changes) // 2]:
            if path in state:
                half[path] = state[path]
            else:
                half.pop(path, None)
        out += [half, state]
        current = state
    return out


EXPANDERS = [as_is, reversed_states, empty_between, squashed, split]


def transition(current: State, target: State) -> list[tuple[str, str | None]]:
    updates: list[tuple[str, str | None]] = [(p, None) for p in sorted(current) if p not in target]
    updates += [(p, v) for p, v in sorted(target.items()) if current.get(p) != v]
    return updates


class Replay:
    """A graph, the contract-checking dataplane, and the datastore as the graph has seen it."""

    def __init__(self) -> None:
        self.graph = CalcGraph(HOST, PREFIXES)
        self.dataplane = ContractChecker()
        self.datastore: State = {}
        self.in_sync = False

    def update(self, path: str, value: str | None) -> None:
        self.graph.on_update(path, value)
        if value is None:
            del self.datastore[path]
        else:
            self.datastore[path] = value

    def set_in_sync(self) -> None:
        self.graph.on_status(SyncStatus.IN_SYNC)
        self.in_sync = True

    def flush(self) -> list[m.Message]:
        messages = self.graph.flush()
        self.dataplane.apply_flush(messages)
        if self.in_sync:
            self.check()
        return messages

    def check(self) -> None:
        expected = expected_state(self.datastore, HOST, PREFIXES)
        actual = self.dataplane.state
        assert actual.ip_sets == expected.ip_sets
        assert actual.policies == expected.policies
        assert actual.profiles == expected.profiles
        assert actual.workload_endpoints == expected.workload_endpoints
        assert actual.host_endpoints == expected.host_endpoints
        assert actual.pools == expected.pools


def replay(
    states: list[State], *, keys_reversed: bool, flush_every_key: bool, in_sync_at_start: bool
) -> Replay:
    r = Replay()
    if in_sync_at_start:
        r.set_in_sync()
    for index, state in enumerate(states):
        updates = transition(r.datastore, state)
        if keys_reversed:
            updates.reverse()
        for path, value in updates:
            r.update(path, value)
            if flush_every_key:
                r.flush()
        if not r.in_sync and index == 0:
            r.set_in_sync()
        r.flush()
        assert r.datastore == state
    return r


@pytest.mark.parametrize("in_sync_at_start", [False, True], ids=["snapshot", "in-sync-first"])
@pytest.mark.parametrize("flush_every_key", [False, True], ids=["flush-end", "flush-each"])
@pytest.mark.parametrize("keys_reversed", [False, True], ids=["keys-fwd", "keys-rev"])
@pytest.mark.parametrize("expander", EXPANDERS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("sequence", SEQUENCES, ids=str)
def test_state_sequences(
    sequence: str,
    expander,
    keys_reversed: bool,
    flush_every_key: bool,  # type: ignore[no-untyped-def]
    in_sync_at_start: bool,
) -> None:
    states = expander([STATES[name] for name in SEQUENCES[sequence]])
    replay(
        states,
        keys_reversed=keys_reversed,
        flush_every_key=flush_every_key,
        in_sync_at_start=in_sync_at_start,
    )


# --- Hand-checked expectations for the named states (the oracle is checked here too) --------------


def state_after(*names: str) -> Replay:
    return replay(
        [STATES[n] for n in names],
        keys_reversed=False,
        flush_every_key=False,
        in_sync_at_start=False,
    )


def local_wep(endpoint: str) -> WorkloadEndpointKey:
    return WorkloadEndpointKey(HOST, "openstack", "w", endpoint)


def test_missing_profile_is_a_deny_all_stand_in() -> None:
    state = state_after("local_ep_missing_profile").dataplane.state
    assert state.profiles == {"web": m.ActiveProfileUpdate("web", m.DENY_ALL, m.DENY_ALL, True)}
    assert state.ip_sets == {}
    assert state.workload_endpoints[local_wep("e1")].tiers == ()


def test_tag_members_are_reference_counted_across_hosts() -> None:
    r = state_after("tags")
    assert r.dataplane.state.ip_sets == {
        tag_id("web"): frozenset({"10.65.0.1", "10.65.0.9", "10.65.1.3"})
    }
    r2 = state_after("tags", "tags_one_owner_left")
    assert r2.dataplane.state.ip_sets[tag_id("web")] == frozenset(
        {"10.65.0.1", "10.65.0.9", "10.65.1.3"}
    )


def test_shared_ip_leaves_with_its_last_owner() -> None:
    r = state_after("tags")
    r.update(wep_path("h2", "e2"), None)
    assert r.flush() == []  # 10.65.0.9 still belongs to e3
    r.update(wep_path("h3", "e3"), None)
    assert r.flush() == [
        m.IPSetDeltaUpdate(tag_id("web"), frozenset(), frozenset({"10.65.0.9", "10.65.1.3"}))
    ]


def test_tiers_and_policies_are_ordered() -> None:
    tiers = state_after("policies").dataplane.state.workload_endpoints[local_wep("e1")].tiers
    assert tiers == (
        m.TierInfo("t2", ("only",)),  # t2 has order 5
        m.TierInfo("t1", ("z", "a", "b")),  # z has order 1; a and b tie on 2, so by name
    )
    reordered = state_after("policies_reordered").dataplane.state.workload_endpoints
    assert reordered[local_wep("e1")].tiers == (
        m.TierInfo("t1", ("z", "a", "b")),
        m.TierInfo("t2", ("only",)),
        m.TierInfo("t3", ("ignored",)),  # metadata without order sorts last
    )


def test_a_policy_rule_change_resends_the_policy_not_its_endpoints() -> None:
    r = state_after("policies")
    path = next(iter(policy("t1", "z", "all()", 1)))
    r.update(path, policy("t1", "z", "all()", 1, [{"protocol": "tcp"}])[path])
    sent = r.flush()
    assert [type(msg) for msg in sent] == [m.ActivePolicyUpdate]  # the endpoints' lists hold
    r.update(path, policy("t1", "z", "all()", 3, [{"protocol": "tcp"}])[path])  # z moves last
    sent = r.flush()
    updates = [msg for msg in sent if isinstance(msg, m.WorkloadEndpointUpdate)]
    assert [u.tiers for u in updates if u.id == local_wep("e1")] == [
        (m.TierInfo("t2", ("only",)), m.TierInfo("t1", ("a", "b", "z")))
    ]


def test_selector_sets_see_inherited_labels_and_own_labels_win() -> None:
    state = state_after("policies").dataplane.state
    db = parse_selector("role == 'db'").unique_id
    cache = parse_selector("role == 'cache'").unique_id
    assert state.ip_sets[db] == frozenset({"10.65.2.1"})  # d2's own label says "cache"
    assert state.ip_sets[cache] == frozenset({"10.65.2.2"})
    assert PolicyKey("t3", "ignored") not in state.policies
    assert PolicyKey("t1", "other-host") not in state.policies  # matches no local endpoint
    after = state_after("policies", "policies_labels_changed").dataplane.state
    assert after.ip_sets[db] == frozenset()


def test_host_endpoints_untracked_policies_pools_and_config() -> None:
    r = state_after("host_endpoints")
    state = r.dataplane.state
    (hep,) = state.host_endpoints.values()
    assert hep.untracked_tiers == (m.TierInfo("t1", ("untracked",)),)
    assert state.workload_endpoints[local_wep("e1")].tiers[1] == m.TierInfo("t1", ("z", "a", "b"))
    assert PolicyKey("t1", "wl-untracked") not in state.policies
    has_role = parse_selector("has(role)").unique_id
    # Host endpoints contribute their expected addresses; d2 and d1 their nets.
    assert state.ip_sets[has_role] == frozenset({"198.18.0.2", "10.65.2.1", "10.65.2.2"})
    assert [p.pool.cidr for p in state.pools.values()] == ["10.65.0.0/16"]


def test_invalid_values_are_treated_as_deleted(caplog: pytest.LogCaptureFixture) -> None:
    state = state_after("host_endpoints", "invalid").dataplane.state
    assert state.profiles["web"].stand_in
    assert local_wep("bad-name") not in state.workload_endpoints
    assert "does not start with any InterfacePrefix" in caplog.text
    assert "mac" in caplog.text
    assert PolicyKey("t1", "b") not in state.policies
    assert PolicyKey("t1", "deep") not in state.policies
    assert "nested more than" in caplog.text and "nested too deeply" in caplog.text


def test_nothing_before_in_sync() -> None:
    graph = CalcGraph(HOST, PREFIXES)
    graph.on_updates(HOST_ENDPOINTS.items())
    assert graph.flush() == []  # config and Ready included: they are not the dataplane's
    graph.on_status(SyncStatus.RESYNC)
    assert graph.flush() == []
    graph.on_status(SyncStatus.IN_SYNC)
    messages = graph.flush()
    assert isinstance(messages[-1], m.InSync)
    assert graph.flush() == []
    graph.on_status(SyncStatus.IN_SYNC)  # a later resync does not repeat InSync
    assert graph.flush() == []


def test_flush_order_for_one_big_change() -> None:
    r = state_after("policies")
    for path, value in transition(r.datastore, EMPTY):
        r.update(path, value)
    kinds = [type(x).__name__ for x in r.flush()]
    assert kinds == sorted(
        kinds,
        key=[
            "WorkloadEndpointRemove",
            "ActiveProfileRemove",
            "ActivePolicyRemove",
            "IPSetRemove",
        ].index,
    )
    r2 = state_after("empty")
    for path, value in transition(r2.datastore, POLICIES):
        r2.update(path, value)
    kinds = [type(x).__name__ for x in r2.flush()]
    assert kinds == sorted(
        kinds,
        key=[
            "IPSetUpdate",
            "ActivePolicyUpdate",
            "ActiveProfileUpdate",
            "WorkloadEndpointUpdate",
        ].index,
    )


def test_interface_rename_is_an_update_with_the_new_name() -> None:
    r = state_after("tags")
    r.update(wep_path(HOST, "e1"), wep("tap1new", ["10.65.0.1/32"], ["web"]))
    (message,) = r.flush()
    assert isinstance(message, m.WorkloadEndpointUpdate)
    assert message.endpoint.name == "tap1new"


# --- One object's failure is that object's alone (issue 12) ---------------------------------------


def test_a_failure_on_one_object_fails_closed_for_it_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A value that passes validation but breaks the graph (a bug, simulated by a parser that
    # raises for one endpoint and one profile only): each is logged once with its key and treated
    # as deleted; the other objects of the same batch are still handled and sent.
    r = state_after("tags")
    bad_endpoint, bad_profile = wep_path(HOST, "e1"), "/calico/v1/policy/profile/web/rules"
    for name in ("parse_workload_endpoint", "parse_profile_rules"):
        real = getattr(resources, name)

        def broken(value: str, key: Key, real: Any = real) -> object:
            if key.path in (bad_endpoint, bad_profile):
                raise RuntimeError("a bug")
            return real(value, key)

        monkeypatch.setattr(resources, name, broken)
    batch = [
        (wep_path(HOST, "e5"), wep("tap5", ["10.65.0.5/32"], ["web", "other"])),
        (bad_endpoint, wep("tap1", ["10.65.0.1/32", "10.65.0.11/32"], ["web"])),
        (bad_profile, profile_rules("web", [{"protocol": "tcp"}], [])[bad_profile]),
        *profile_rules("other", [{"protocol": "udp", "src_tag": "web"}], []).items(),
    ]
    with caplog.at_level(logging.WARNING, logger="calico.felix.calc.graph"):
        for path, value in batch:
            r.graph.on_update(path, value)  # must not raise
    r.dataplane.apply_flush(r.graph.flush())

    failures = [rec for rec in caplog.records if rec.getMessage().startswith("Failed to handle")]
    assert [rec.getMessage() for rec in failures] == [
        f"Failed to handle {bad_endpoint!r}; treating it as deleted",
        f"Failed to handle {bad_profile!r}; treating it as deleted",
    ]
    assert all(rec.exc_info is not None for rec in failures)  # with the traceback
    state = r.dataplane.state
    # Fail closed: the endpoint is gone (chains, route), its IP left the tag's set; the profile
    # is a deny-all stand-in again, not its old rules and not the new ones.
    assert local_wep("e1") not in state.workload_endpoints
    assert "10.65.0.1" not in state.ip_sets[tag_id("web")]
    assert state.profiles["web"] == m.ActiveProfileUpdate("web", m.DENY_ALL, m.DENY_ALL, True)
    # The rest of the batch went through.
    assert state.workload_endpoints[local_wep("e5")].endpoint.name == "tap5"
    assert "10.65.0.5" in state.ip_sets[tag_id("web")]
    assert not state.profiles["other"].stand_in
    assert [rule.protocol for rule in state.profiles["other"].inbound_rules] == ["udp"]


# --- Log lines: one hostile value or key makes one short line (issue 12) --------------------------

MB = 1_000_000
HUGE = "x\n" * (MB // 2)  # 1 MB, half of it newlines
RULES = "/calico/v1/policy/profile/web/rules"


@pytest.mark.parametrize(
    "path, value, limit",
    [
        pytest.param(
            wep_path(HOST, "e1"), wep(HUGE, ["10.65.0.1/32"], ["web"]), 2_000, id="ifname"
        ),
        pytest.param(
            wep_path(HOST, "e1"),
            wep("tap1", [HUGE], [HUGE, HUGE], {HUGE: HUGE}),
            2_000,
            id="nets-profiles-labels",
        ),
        pytest.param(RULES, json.dumps({"inbound_rules": HUGE}), 2_000, id="rules-not-a-list"),
        pytest.param(
            RULES,
            profile_rules("web", [{"protocol": "p\n" * 500}] * 1_000, [])[RULES],
            10_000,  # 25 problems of at most 300 characters, then "... (975 more)"
            id="1000-bad-rules",
        ),
        pytest.param(*policy("t1", "p", HUGE).popitem(), 2_000, id="selector"),
        pytest.param("/calico/v1/policy/profile/web/tags", HUGE, 2_000, id="tags-not-json"),
        pytest.param(
            "/calico/v1/ipam/v4/pool/10.65.0.0-16", json.dumps({"cidr": HUGE}), 2_000, id="pool"
        ),
        # A bad key segment: the key itself is quoted and capped.
        pytest.param(
            wep_path(HOST, "e1", workload=HUGE), wep("tap1", [], []), 2_000, id="key-workload"
        ),
        pytest.param(f"/calico/v1/host/{'h' * MB}/endpoint/eth0", "{}", 2_000, id="key-host"),
        pytest.param(f"/calico/v1/policy/profile/{HUGE}/rules", "{}", 2_000, id="key-profile"),
    ],
)
def test_a_megabyte_value_or_key_is_logged_as_one_short_line(
    path: str, value: str, limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    graph = CalcGraph(HOST, PREFIXES)
    with caplog.at_level(logging.WARNING, logger="calico.felix.calc.graph"):
        graph.on_update(path, value)
    (record,) = caplog.records
    line = record.getMessage()
    assert len(line) < limit, (len(line), line[:300])
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    assert record.exc_info is None
    # It names the key: whole, or for a megabyte key its quoted start.
    assert path in line if len(path) < 200 else repr(path)[:60] in line


def test_a_megabyte_bird_ip_is_logged_as_one_short_line(caplog: pytest.LogCaptureFixture) -> None:
    graph = CalcGraph(HOST, PREFIXES)
    with caplog.at_level(logging.WARNING, logger="calico.felix.calc.graph"):
        graph.on_update("/calico/v1/host/h2/bird_ip", HUGE)
    (record,) = caplog.records
    line = record.getMessage()
    assert len(line) < 2_000 and "\n" not in line
    assert line.startswith("Invalid bird_ip 'x\\nx") and " for host h2;" in line


# --- Shorthand IPv4 in rules: refused, logged once per key (issue 12) -----------------------------


def test_a_shorthand_ipv4_rule_is_refused_and_logged_once_per_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # docs/design/security.md: "10/8" and "10.0.1/32" (Felix 1.4 expanded them) are refused; the
    # profile is invalid, so the endpoint using it gets the deny-all stand-in (fail closed).
    r = state_after("local_ep_missing_profile")
    path = "/calico/v1/policy/profile/web/rules"
    shorthand = profile_rules("web", [{"src_net": "10/8"}], [{"dst_net": "10.0.1/32"}])[path]
    with caplog.at_level(logging.WARNING, logger="calico.felix.calc.graph"):
        r.update(path, shorthand)
        r.flush()
        r.update(path, shorthand)  # the same value again (a resync delivers the snapshot again)
        r.flush()
    assert r.dataplane.state.profiles["web"].stand_in
    (record,) = caplog.records
    assert record.getMessage() == (
        f"invalid profile rules {path}: "
        "inbound_rules[0]: src_net: shorthand IPv4 form '10/8' is not accepted (Felix 1.4 "
        "expanded it; write all four octets, e.g. 10.0.0.0/8); "
        "outbound_rules[0]: dst_net: shorthand IPv4 form '10.0.1/32' is not accepted (Felix 1.4 "
        "expanded it; write all four octets, e.g. 10.0.0.0/8); treating it as deleted"
    )

    # Logged again for another key, for another bad value, and when a value that was fixed goes
    # bad again: each refusal is news once.
    other = "/calico/v1/policy/profile/other/rules"
    fixed = profile_rules("web", [{"src_net": "10.0.0.0/8"}], [])[path]
    with caplog.at_level(logging.WARNING, logger="calico.felix.calc.graph"):
        for update in [
            (other, shorthand),
            (other, shorthand),
            (path, shorthand.replace("10/8", "10.1/16")),
            (path, fixed),
            (path, shorthand),
            (path, None),
            (path, shorthand),
        ]:
            r.update(*update)
            r.flush()
    logged = [rec.getMessage() for rec in caplog.records[1:]]
    assert [line.split(":")[0] for line in logged] == [
        f"invalid profile rules {other}",
        f"invalid profile rules {path}",
        f"invalid profile rules {path}",
        f"invalid profile rules {path}",
    ]
    assert "'10.1/16'" in logged[1]


# --- The checker and the sequencer fail loudly ----------------------------------------------------


def test_checker_rejects_broken_orderings() -> None:
    rule = m.ResolvedRule(src_ip_set_ids=("s:x",))
    checker = ContractChecker()
    with pytest.raises(ContractViolation, match="before the datastore was in sync"):
        checker.apply_flush([m.IPSetUpdate("s:x", ())])
    checker.apply_flush([m.InSync()])
    with pytest.raises(ContractViolation, match="unknown set"):
        checker.apply(m.ActiveProfileUpdate("p", (rule,), ()))
    with pytest.raises(ContractViolation, match="unknown set"):
        checker.apply(m.IPSetDeltaUpdate("s:x", frozenset({"1.2.3.4"}), frozenset()))
    checker.apply(m.IPSetUpdate("s:x", ("1.2.3.4",)))
    with pytest.raises(ContractViolation, match="adding present"):
        checker.apply(m.IPSetDeltaUpdate("s:x", frozenset({"1.2.3.4"}), frozenset()))
    with pytest.raises(ContractViolation, match="removing absent"):
        checker.apply(m.IPSetDeltaUpdate("s:x", frozenset(), frozenset({"9.9.9.9"})))
    checker.apply(m.ActiveProfileUpdate("p", (rule,), ()))
    with pytest.raises(ContractViolation, match="used by p"):
        checker.apply(m.IPSetRemove("s:x"))
    ep = m.WorkloadEndpointUpdate(
        local_wep("e"),
        WorkloadEndpoint(state="active", name="tap1", profile_ids=("p",)),
        (m.TierInfo("t", ("pol",)),),
    )
    with pytest.raises(ContractViolation, match="unknown policy"):
        checker.apply(ep)
    checker.apply(m.ActivePolicyUpdate(PolicyKey("t", "pol"), (), ()))
    checker.apply(ep)
    with pytest.raises(ContractViolation, match="used by"):
        checker.apply(m.ActivePolicyRemove(PolicyKey("t", "pol")))
    with pytest.raises(ContractViolation, match="used by"):
        checker.apply(m.ActiveProfileRemove("p"))
    with pytest.raises(ContractViolation, match="twice"):
        checker.apply(m.InSync())


class SetOwner:
    """Plays the member calculator for sequencer-only tests: owns each set's members and tells
    the sequencer after each change, as the calculator does."""

    def __init__(self, seq: EventSequencer) -> None:
        self.seq = seq
        self.members: dict[str, set[str]] = {}

    def activate(self, set_id: str) -> None:
        self.members[set_id] = set()
        self.seq.add_ip_set(set_id, self.members[set_id])

    def deactivate(self, set_id: str) -> None:
        self.seq.remove_ip_set(set_id)
        del self.members[set_id]

    def add(self, set_id: str, member: str) -> None:
        self.members[set_id].add(member)
        self.seq.add_member(set_id, member)

    def remove(self, set_id: str, member: str) -> None:
        self.members[set_id].discard(member)
        self.seq.remove_member(set_id, member)


def test_sequencer_rejects_contract_breaking_calls() -> None:
    seq = EventSequencer()
    with pytest.raises(ContractError):
        seq.add_member("s:x", "1.2.3.4")
    with pytest.raises(ContractError):
        seq.remove_member("s:x", "1.2.3.4")
    with pytest.raises(ContractError):
        seq.remove_ip_set("s:x")
    sets = SetOwner(seq)
    sets.activate("s:x")
    with pytest.raises(ContractError):
        seq.add_ip_set("s:x", set())
    seq.remove_ip_set("s:x")  # with its members: allowed, the set goes whole
    with pytest.raises(ContractError):
        seq.remove_ip_set("s:x")  # not active any more


def test_sequencer_coalesces() -> None:
    seq = EventSequencer()
    sets = SetOwner(seq)
    seq.on_datastore_in_sync()
    sets.activate("s:x")
    sets.add("s:x", "1.1.1.1")
    assert seq.flush() == [m.IPSetUpdate("s:x", ("1.1.1.1",)), m.InSync()]
    # Add then remove within a flush: nothing. Remove then re-add the set: deltas only.
    sets.add("s:x", "2.2.2.2")
    sets.remove("s:x", "2.2.2.2")
    assert seq.flush() == []
    sets.remove("s:x", "1.1.1.1")
    sets.deactivate("s:x")
    sets.activate("s:x")
    sets.add("s:x", "3.3.3.3")
    assert seq.flush() == [
        m.IPSetDeltaUpdate("s:x", frozenset({"3.3.3.3"}), frozenset({"1.1.1.1"}))
    ]
    # Deactivated with its members (as the member calculator does): no deltas, one removal;
    # and when it comes back within the flush, the deltas from what the dataplane holds.
    sets.add("s:x", "4.4.4.4")
    sets.deactivate("s:x")
    assert seq.flush() == [m.IPSetRemove("s:x")]
    sets.activate("s:x")
    sets.add("s:x", "5.5.5.5")
    sets.add("s:x", "6.6.6.6")
    (update,) = seq.flush()  # (members in no particular order)
    assert update == m.IPSetUpdate("s:x", update.members)  # type: ignore[union-attr]
    assert sorted(update.members) == ["5.5.5.5", "6.6.6.6"]  # type: ignore[union-attr]
    sets.remove("s:x", "5.5.5.5")
    sets.add("s:x", "7.7.7.7")
    sets.deactivate("s:x")  # holding 6.6.6.6 and 7.7.7.7, the dataplane 5.5.5.5 and 6.6.6.6
    sets.activate("s:x")
    sets.add("s:x", "7.7.7.7")
    sets.add("s:x", "8.8.8.8")
    sets.remove("s:x", "8.8.8.8")
    sets.add("s:x", "5.5.5.5")
    assert seq.flush() == [
        m.IPSetDeltaUpdate("s:x", frozenset({"7.7.7.7"}), frozenset({"6.6.6.6"}))
    ]
    # A set activated and deactivated between flushes is never sent.
    sets.activate("s:y")
    sets.add("s:y", "4.4.4.4")
    sets.remove("s:y", "4.4.4.4")
    sets.deactivate("s:y")
    assert seq.flush() == []


# --- Randomised sequences against the oracle ------------------------------------------------------

LABEL_KEYS = ("a", "b", "c")
LABEL_VALUES = ("x", "y")
SELECTORS = (
    "a == 'x'",
    "a in {'x', 'y'}",
    "has(b)",
    "!has(c)",
    "a == 'x' && b == 'y'",
    "a != 'y' || c == 'x'",
    "all()",
    "b not in {'x'}",
    "(a == 'y' || b == 'y') && !has(c)",
)
PROFILES = ("p0", "p1", "p2", "p3")
TAG_NAMES = ("t0", "t1", "t2")
IPS = (*(f"10.65.0.{i}" for i in range(1, 7)), "fd00:65::1", "fd00:65::2")


def random_labels(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(LABEL_VALUES) for k in LABEL_KEYS if rng.random() < 0.4}


def random_rule(rng: random.Random) -> dict[str, object]:
    rule: dict[str, object] = {"action": rng.choice(["allow", "deny", "next-tier", "log"])}
    for field in ("src_tag", "!dst_tag"):
        if rng.random() < 0.3:
            rule[field] = rng.choice(TAG_NAMES)
    for field in ("src_selector", "dst_selector", "!src_selector"):
        if rng.random() < 0.3:
            rule[field] = rng.choice(SELECTORS)
    if rng.random() < 0.05:
        rule["bogus"] = True  # makes the whole profile/policy invalid
    return rule


def random_value(rng: random.Random, path: str) -> str:
    if rng.random() < 0.05:
        return "{broken json"
    if "/workload/" in path:
        ips = rng.sample(IPS, rng.randint(0, 2))
        body: dict[str, object] = {
            "state": rng.choice(["active", "active", "inactive"]),
            "name": rng.choice(["tap" + path[-1], "tap" + path[-1], "eth" + path[-1]]),
            "profile_ids": rng.sample(PROFILES, rng.randint(0, 3)),
            "ipv4_nets": [f"{ip}/32" for ip in ips if ":" not in ip],
            "ipv6_nets": [f"{ip}/128" for ip in ips if ":" in ip],
            "labels": random_labels(rng),
        }
        return json.dumps(body)
    if path.endswith(("/endpoint/eth0", "/endpoint/eth1")):
        return json.dumps(
            {
                "name": "eth0",
                "expected_ipv4_addrs": rng.sample(IPS[:6], 1),
                "profile_ids": rng.sample(PROFILES, rng.randint(0, 2)),
                "labels": random_labels(rng),
            }
        )
    if path.endswith("/rules"):
        return json.dumps(
            {
                "inbound_rules": [random_rule(rng) for _ in range(rng.randint(0, 2))],
                "outbound_rules": [random_rule(rng) for _ in range(rng.randint(0, 1))],
            }
        )
    if path.endswith("/tags"):
        return json.dumps(rng.sample(TAG_NAMES, rng.randint(0, 2)))
    if path.endswith("/labels"):
        return json.dumps(random_labels(rng))
    if path.endswith("/metadata"):
        return json.dumps({"order": rng.choice([1, 2, "default"])})
    if "/policy/tier/" in path:
        return json.dumps(
            {
                "selector": rng.choice(SELECTORS),
                "order": rng.choice([1, 2, None]),
                "inbound_rules": [random_rule(rng)],
                "outbound_rules": [],
                "untracked": rng.random() < 0.2,
            }
        )
    raise AssertionError(path)


def universe() -> list[str]:
    paths = [wep_path(h, f"e{i}") for h in ("h1", "h2") for i in range(4)]
    paths += [f"/calico/v1/host/{h}/endpoint/eth{i}" for h in ("h1", "h2") for i in range(2)]
    for p in PROFILES:
        paths += [f"/calico/v1/policy/profile/{p}/{k}" for k in ("rules", "tags", "labels")]
    for t in ("ta", "tb"):
        paths.append(f"/calico/v1/policy/tier/{t}/metadata")
        paths += [f"/calico/v1/policy/tier/{t}/policy/pol{i}" for i in range(3)]
    return paths


def random_states(seed: int, count: int) -> Iterator[State]:
    rng = random.Random(seed)
    paths = universe()
    state: State = {}
    for _ in range(count):
        state = dict(state)
        for path in rng.sample(paths, rng.randint(1, len(paths) // 2)):
            if path in state and rng.random() < 0.4:
                del state[path]
            else:
                state[path] = random_value(rng, path)
        yield state


@pytest.mark.parametrize("seed", range(40))
def test_random_sequences_match_the_oracle(seed: int) -> None:
    rng = random.Random(seed)
    states = list(random_states(seed, 6))
    r = Replay()
    for index, state in enumerate(states):
        updates = transition(r.datastore, state)
        rng.shuffle(updates)
        for path, value in updates:
            r.update(path, value)
            if rng.random() < 0.2:
                r.flush()
        if index == 0:
            r.set_in_sync()
        r.flush()


# --- Mutated values: bad input of every shape never escapes the graph -----------------------------

STRANGE_VALUES: tuple[object, ...] = (
    None,
    True,
    0,
    -1,
    2**64,
    1e308,
    float("nan"),
    float("-inf"),
    "",
    "x" * 5000,
    "é\u0000\U0001f600",
    "10.65.0.1/33",
    "fd00:65::1/129",
    "a == 'b'",
    "((",
    [],
    [None],
    ["a", 1],
    {},
    {"unknown": "field"},
    [[[[[]]]]],
)


def mutate(rng: random.Random, node: object, depth: int = 0) -> object:
    """The JSON tree with one random node replaced, removed or given a strange sibling."""
    if isinstance(node, dict) and node and rng.random() < 0.8:
        node = dict(node)
        key = rng.choice(sorted(node))
        roll = rng.random()
        if roll < 0.2:
            del node[key]
        elif roll < 0.3:
            node["unexpected_" + key] = rng.choice(STRANGE_VALUES)
        else:
            node[key] = mutate(rng, node[key], depth + 1)
        return node
    if isinstance(node, list) and node and rng.random() < 0.8:
        node = list(node)
        index = rng.randrange(len(node))
        node[index] = mutate(rng, node[index], depth + 1)
        return node
    return rng.choice(STRANGE_VALUES)


def mutated_value(rng: random.Random, path: str) -> str:
    text = random_value(rng, path)
    try:
        tree = json.loads(text)
    except ValueError:
        return text
    for _ in range(rng.randint(1, 3)):
        tree = mutate(rng, tree)
    if rng.random() < 0.05:
        return json.dumps(tree)[: rng.randrange(1, 40)]  # truncated
    return json.dumps(tree)


@pytest.mark.parametrize("seed", range(25))
def test_mutated_values_are_invalid_or_valid_never_a_crash(seed: int) -> None:
    # Every value is a valid one with one to three nodes replaced by something of the wrong type,
    # size or content. Whatever the graph decides (valid, or invalid and so deleted), it must not
    # raise, must keep the message contract, and must agree with the oracle.
    rng = random.Random(seed)
    paths = universe()
    r = Replay()
    r.set_in_sync()
    for _ in range(120):
        path = rng.choice(paths)
        if path in r.datastore and rng.random() < 0.2:
            r.update(path, None)
        else:
            r.update(path, mutated_value(rng, path))
        if rng.random() < 0.3:
            r.flush()
    r.flush()
