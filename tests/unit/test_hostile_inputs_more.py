"""Hostile strings through the fields the hostile-input model lacked, into both backends' input.

tests/unit/test_hostile_inputs.py (iptables and ipset) and tests/unit/test_nft_hostile_inputs.py
(nftables) feed issue 12's hostile strings through every key segment and string of one complete
data model. That model has no host endpoint matched by name, no ``expected_ipv6_addrs``, no
``ipv6_nat``, no ``src_ports`` and only two negated rule fields, no IPv6 pool and no config keys.
This module adds them to the same model and runs the same property over each new slot (each new
key segment, each new string, each new label name), for both backends:

* nothing raises and no chain is refused as unsafe;
* the kernel's input is exactly the intended rules (the other modules' checks);
* every key either is not Felix's, is refused as a ``BadKey``, or is a key whose path is exactly
  the key written (a hostile segment never becomes part of a parsed key).

The slots of the original model are not repeated here: they run in the modules above.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import test_hostile_inputs as base
import test_nft_hostile_inputs as nft

from calico.common.datamodel_v1 import BadKey, GlobalConfigKey, HostConfigKey, IPPoolKey, parse_key
from calico.common.sync import SyncStatus
from calico.felix.calc import messages as m
from calico.felix.calc.graph import CalcGraph

HEP_BY_NAME = f"/calico/v1/host/{base.HOST}/endpoint/hep2"
V6_POOL = "/calico/v1/ipam/v6/pool/fd00:65::-64"
GLOBAL_CONFIG = "/calico/v1/config/LogSeverityScreen"
HOST_CONFIG = f"/calico/v1/host/{base.HOST}/config/LogSeverityFile"
PROFILE_RULES = "/calico/v1/policy/profile/prof1/rules"

# Source ports and every negated match with a string in it, in each family.
MORE_RULES: list[dict[str, Any]] = [
    {
        "protocol": "udp",
        "src_ports": ["1:2", 53],
        "!src_ports": ["5:6"],
        "!dst_ports": [9, "10:20"],
        "!src_tag": "prof1",
        "!dst_tag": "prof1",
        "!src_net": "10.0.0.0/8",
        "!dst_net": "10.1.0.0/16",
        "!src_selector": "app == 'db'",
    },
    {
        "ip_version": 6,
        "protocol": "icmpv6",
        "icmp_type": 128,
        "!icmp_type": 1,
        "!src_net": "fd00:1::/64",
        "dst_selector": "has(app)",
    },
]


def _more_model() -> dict[str, Any]:
    model = copy.deepcopy(base.BASE)
    model[base.LOCAL]["ipv6_nat"] = [{"int_ip": "fd00:65::2", "ext_ip": "fd00:99::2"}]
    model[base.HEP]["expected_ipv6_addrs"] = ["fd00:18::1"]
    model[HEP_BY_NAME] = {"name": "eth1", "profile_ids": ["prof1"]}
    model[PROFILE_RULES]["inbound_rules"] += copy.deepcopy(MORE_RULES)
    model[V6_POOL] = {"cidr": "fd00:65::/64", "masquerade": True}
    model[GLOBAL_CONFIG] = "info"
    model[HOST_CONFIG] = "none"
    return model


MORE = _more_model()

# --- the slots: the same as the original module's, over the larger model ---------------------

ALL_SLOTS = dict([*base._key_slots(MORE), *base._value_slots(MORE)])
SLOTS = {name: mutate for name, mutate in ALL_SLOTS.items() if name not in base.SLOTS}


def check_keys(model: dict[str, Any]) -> None:
    for path in model:
        key = parse_key(path)
        assert key is None or isinstance(key, BadKey) or key.path == path, (path, key)


# --- the tests ------------------------------------------------------------------------------


def test_the_larger_model_programs_the_extra_fields() -> None:
    """The positive control: unmutated, every new field reaches the rendering, so the hostile
    cases below exercise it; and the slots are the original ones plus the new ones."""
    assert set(base.SLOTS) < set(ALL_SLOTS)  # the same slot names: only new ones run here
    for name in (
        f"key {HEP_BY_NAME} segment 6",
        f"{HEP_BY_NAME} name",
        f"{base.HEP} expected_ipv6_addrs/0",
        f"{base.LOCAL} ipv6_nat/0/ext_ip",
        f"{PROFILE_RULES} inbound_rules/5/src_ports/0",
        f"{PROFILE_RULES} inbound_rules/5/!src_tag",
        f"{PROFILE_RULES} inbound_rules/6/!src_net",
        f"key {V6_POOL} segment 6",
        f"{V6_POOL} cidr",
        f"key {GLOBAL_CONFIG} segment 4",
        f"value of {GLOBAL_CONFIG}",
        f"key {HOST_CONFIG} segment 4",
        f"key {HOST_CONFIG} segment 6",
    ):
        assert name in SLOTS, name

    check_keys(MORE)
    assert parse_key(GLOBAL_CONFIG) == GlobalConfigKey("LogSeverityScreen")
    assert parse_key(HOST_CONFIG) == HostConfigKey(base.HOST, "LogSeverityFile")
    graph = CalcGraph(base.HOST, ("tap",))
    graph.on_updates((k, v if isinstance(v, str) else json.dumps(v)) for k, v in MORE.items())
    graph.on_status(SyncStatus.IN_SYNC)
    pools = [msg.pool.cidr for msg in graph.flush() if isinstance(msg, m.IPPoolUpdate)]
    assert sorted(pools) == ["10.65.0.0/16", "fd00:65::/64"]
    assert IPPoolKey(6, "fd00:65::-64").path == V6_POOL

    runner, kernel = base.program(copy.deepcopy(MORE))
    base.check_kernel_input(runner, kernel)
    chains = {(t.ip_version, t.table): t.chains for t in kernel.iptables.values()}
    assert {"felix-to-eth1", "felix-from-eth1"} <= set(chains[4, "filter"])
    assert chains[6, "nat"]["felix-FIP-DNAT"] == (
        "-d fd00:99::2/128 -j DNAT --to-destination fd00:65::2",
    )
    v4_profile = "\n".join(chains[4, "filter"]["felix-p-prof1-i"])
    for match in ("! -s 10.0.0.0/8", "! -d 10.1.0.0/16", "--sports 1:2,53", "! --sports 5:6"):
        assert match in v4_profile, match
    (ports_rule,) = [rule for rule in v4_profile.split("\n") if "--sports 1:2,53" in rule]
    assert ports_rule.count("-m set ! --match-set") == 3  # !src_tag, !src_selector, !dst_tag
    v6_profile = "\n".join(chains[6, "filter"]["felix-p-prof1-i"])
    for match in ("! -s fd00:1::/64 -p ipv6-icmp", "--icmpv6-type 128", "! --icmpv6-type 1"):
        assert match in v6_profile, match
    ipsets = "".join(text for cmd, text in runner.restores if cmd == "ipset")
    assert "fd00:18::1" in ipsets  # the host endpoint's IPv6 address, in its selector's set

    recorder, table = nft.program(copy.deepcopy(MORE))
    nft.check_nft_input(recorder, table)
    assert {"felix-to-eth1", "felix-from-eth1"} <= set(table.chains)
    assert "dnat ip6 to fd00:65::2" in recorder.scripts[0]
    nft_profile = "\n".join(table.written("felix-p-prof1-i"))
    for match in ("ip saddr != 10.0.0.0/8", "ip6 saddr != fd00:1::/64", "th sport"):
        assert match in nft_profile, match


def _run(slot: str, program_and_check: Callable[[dict[str, Any]], None]) -> None:
    for hostile in base.HOSTILE:
        model = copy.deepcopy(MORE)
        SLOTS[slot](model, hostile)
        try:
            check_keys(model)
            program_and_check(model)
        except AssertionError as e:
            raise AssertionError(f"{slot} = {hostile[:40]!r}: {e}") from None


def _iptables(model: dict[str, Any]) -> None:
    base.check_kernel_input(*base.program(model))


def _nftables(model: dict[str, Any]) -> None:
    nft.check_nft_input(*nft.program(model))


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_hostile_strings_in_more_slots_iptables(slot: str) -> None:
    _run(slot, _iptables)


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_hostile_strings_in_more_slots_nftables(slot: str) -> None:
    _run(slot, _nftables)
