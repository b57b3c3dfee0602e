"""Felix across hosts, with packets: three compute hosts on a fabric, each running BIRD,
calico-bgp and calico-felix (``calico.lab.cloud``), VMs on every host, security-group-like
profiles and a tier of policy whose rules name tags and selectors.

Routes come from BGP; what is admitted comes from each destination host's Felix, whose tag and
selector IP sets hold the addresses of VMs on the other hosts. The whole cross-host matrix
(ping, TCP, UDP; IPv4 and IPv6; allowed and denied) is checked against an oracle written here;
then label and profile changes of a VM on one host change what VMs on the other hosts admit,
timed from the etcd write to the far host's kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from multihost_support import (
    ALLOW,
    DENY,
    Expectation,
    cloud_on,
    expect,
    put_profile,
    set_members,
    wait_routed,
)

from calico.common.selectors import parse_selector, tag_id
from calico.felix.dataplane import names
from calico.lab.cloud import Cloud, wait
from calico.lab.etcd_server import EtcdServer
from calico.lab.flows import Flow

pytestmark = pytest.mark.root

TIER = "platform"
CHANGE_BOUND = 10.0  # seconds from an etcd write to the far host's kernel, on a busy machine

PROFILES: dict[str, dict[str, object]] = {
    "sg-web": {
        "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "dst_ports": [80]},
            {"action": "allow", "protocol": "icmp", "src_tag": "sg-web"},
            {"action": "allow", "protocol": "icmpv6", "src_tag": "sg-web"},
        ],
        "outbound_rules": [{"action": "allow"}],
    },
    "sg-db": {
        "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "dst_ports": [5432], "src_tag": "sg-web"},
            {"action": "allow", "protocol": "udp", "dst_ports": [5433], "src_tag": "sg-web"},
            {"action": "allow", "protocol": "icmp", "src_tag": "sg-web"},
            {"action": "allow", "protocol": "icmpv6", "src_tag": "sg-web"},
        ],
        "outbound_rules": [{"action": "allow"}],
    },
    "sg-ops": {"inbound_rules": [], "outbound_rules": [{"action": "allow"}]},
}
OPS = "role == 'ops'"
TAINTED = "tainted == 'true'"
POLICIES: dict[str, dict[str, object]] = {
    # Nothing talks to or from a tainted VM: its peers' hosts drop it (selector IP sets).
    "deny-tainted": {
        "order": 1,
        "selector": "all()",
        "inbound_rules": [{"action": "deny", "src_selector": TAINTED}],
        "outbound_rules": [{"action": "deny", "dst_selector": TAINTED}],
    },
    # Ops VMs may ping and ssh anything; then the security groups decide.
    "ops-access": {
        "order": 10,
        "selector": "all()",
        "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "dst_ports": [22], "src_selector": OPS},
            {"action": "allow", "protocol": "icmp", "src_selector": OPS},
            {"action": "allow", "protocol": "icmpv6", "src_selector": OPS},
            {"action": "next-tier"},
        ],
        "outbound_rules": [{"action": "next-tier"}],
    },
}
# name -> (host index 0-2, security group, labels)
VMS: dict[str, tuple[int, str, dict[str, str]]] = {
    "web1": (0, "sg-web", {"role": "web"}),
    "db1": (0, "sg-db", {"role": "db"}),
    "web2": (1, "sg-web", {"role": "web"}),
    "ops2": (1, "sg-ops", {"role": "ops"}),
    "db3": (2, "sg-db", {"role": "db"}),
}
PROBES: list[tuple[str, int | None]] = [
    ("icmp", None),
    ("tcp", 80),
    ("tcp", 5432),
    ("udp", 5433),
    ("tcp", 22),
]


def allowed(cloud: Cloud, flow: Flow) -> bool:
    """The oracle: what the tier and the profiles above say about ``flow`` now."""
    src, dst = cloud.vms[flow.src], cloud.vms[flow.dst]
    if "true" in (src.labels.get("tainted"), dst.labels.get("tainted")):
        return False  # deny-tainted
    if src.labels.get("role") == "ops" and (flow.proto == "icmp" or flow.port == 22):
        return True  # ops-access
    web_src = "sg-web" in src.profiles
    what = (flow.proto, flow.port)
    for profile in dst.profiles:
        if profile == "sg-web" and (what == ("tcp", 80) or (what == ("icmp", None) and web_src)):
            return True
        if profile == "sg-db" and web_src and what in DB_PORTS:
            return True
    return False  # next-tier, then no profile rule matched


DB_PORTS = {("tcp", 5432), ("udp", 5433), ("icmp", None)}
Probe = tuple[str, int | None]


def cross_host_flows(
    cloud: Cloud, src: str | None = None, probes: list[Probe] | None = None
) -> list[Expectation]:
    """Every flow between VMs on different hosts (from ``src`` only, if given), both
    families, with the oracle's verdict."""
    rows = []
    for a, vm_a in cloud.vms.items():
        for b, vm_b in cloud.vms.items():
            if vm_a.host is vm_b.host or src not in (None, a):
                continue
            for proto, port in probes or PROBES:
                for v6 in (False, True):
                    flow = Flow(a, b, proto, port, v6=v6)
                    rows.append((flow, allowed(cloud, flow)))
    return rows


@pytest.fixture(scope="module")
def cloud(etcd_server: EtcdServer) -> Iterator[Cloud]:
    with cloud_on(etcd_server, 3) as c:
        for name, rules in PROFILES.items():
            put_profile(c, name, rules)
        c.put(f"/calico/v1/policy/tier/{TIER}/metadata", {"order": 10})
        for name, policy in POLICIES.items():
            c.put(f"/calico/v1/policy/tier/{TIER}/policy/{name}", policy)
        for name, (index, group, labels) in VMS.items():
            c.add_vm(name, c.hosts[index], [group], labels)
        wait_routed(c)
        yield c


def _set_name(set_id: str, v6: bool = False) -> str:
    return names.ipset_name(set_id, 6 if v6 else 4)


def test_the_cross_host_matrix_follows_tags_selectors_and_tiers(cloud: Cloud) -> None:
    rows = cross_host_flows(cloud)
    assert sum(ok for _, ok in rows) >= 30 and sum(not ok for _, ok in rows) >= 60
    expect(cloud, rows, "the cross-host matrix")
    # The allowed rows across hosts exist because the destination host's tag and selector sets
    # hold the other hosts' VMs (Felix learnt them from etcd; BGP carried only routes).
    web_tag = _set_name(tag_id("sg-web"))
    ops = _set_name(parse_selector(OPS).unique_id, v6=True)
    on_h3 = set_members(cloud, "compute-3")
    assert {cloud.vms["web1"].ip, cloud.vms["web2"].ip} <= on_h3[web_tag]
    assert on_h3[ops] == {cloud.vms["ops2"].ip6}


def _timed_change(
    cloud: Cloud, far_host: str, set_name: str, ip: str, write: Callable[[], None]
) -> float:
    """Make the change (``write``, a callable) and return the seconds until ``ip`` is in
    ``set_name`` on ``far_host``."""
    started = time.monotonic()
    write()
    wait(
        lambda: ip in set_members(cloud, far_host).get(set_name, set()),
        CHANGE_BOUND,
        f"{ip} in {set_name} on {far_host}",
        interval=0.01,
    )
    return time.monotonic() - started


def test_a_label_change_on_one_host_changes_what_the_others_admit(cloud: Cloud) -> None:
    db3 = cloud.vms["db3"]
    ssh_and_ping: list[Probe] = [("tcp", 22), ("icmp", None)]
    before = cross_host_flows(cloud, src="db3", probes=ssh_and_ping)
    assert not any(ok for _, ok in before)
    # db3 (compute-3) becomes an ops VM: web1 and db1 on compute-1 now admit its ssh and ping.
    took = _timed_change(
        cloud,
        "compute-1",
        _set_name(parse_selector(OPS).unique_id),
        db3.ip,
        lambda: cloud.write_endpoint("db3", labels={"role": "ops"}),
    )
    print(f"label change on compute-3 -> selector set on compute-1: {took * 1000:.0f} ms")
    after = cross_host_flows(cloud, src="db3", probes=ssh_and_ping)
    assert all(ok for _, ok in after)
    expect(cloud, after, "db3 relabelled role=ops")

    # web2 (compute-2) is tainted: compute-1 stops admitting it and stops sending to it.
    took = _timed_change(
        cloud,
        "compute-1",
        _set_name(parse_selector(TAINTED).unique_id),
        cloud.vms["web2"].ip,
        lambda: cloud.write_endpoint("web2", labels={"role": "web", "tainted": "true"}),
    )
    print(f"taint on compute-2 -> selector set on compute-1: {took * 1000:.0f} ms")
    rows = [
        (Flow(a, b, proto, port, v6=v6), allowed(cloud, Flow(a, b, proto, port, v6=v6)))
        for a, b in (("web2", "web1"), ("web1", "web2"), ("web2", "db1"), ("web2", "db3"))
        for proto, port in (("icmp", None), ("tcp", 80), ("tcp", 5432))
        for v6 in (False, True)
    ]
    assert not any(ok for _, ok in rows)
    expect(cloud, [*rows, (Flow("web1", "db3", "tcp", 5432), ALLOW)], "web2 tainted")

    # Untainted again, and back to the matrix's start for db3.
    cloud.write_endpoint("web2", labels={"role": "web"})
    cloud.write_endpoint("db3", labels={"role": "db"})
    expect(cloud, [(Flow("web2", "db1", "tcp", 5432, v6=True), ALLOW)], "web2 untainted")


def test_a_profile_change_on_one_host_changes_what_the_others_admit(cloud: Cloud) -> None:
    """The tag side: ops2 (compute-2) joins sg-web; db1 (compute-1) and db3 (compute-3) then
    admit its database traffic; leaving the group takes that away again."""
    flows = [
        Flow("ops2", dst, proto, port, v6=v6)
        for dst in ("db1", "db3")
        for proto, port in (("tcp", 5432), ("udp", 5433))
        for v6 in (False, True)
    ]
    assert not any(allowed(cloud, flow) for flow in flows)
    expect(cloud, [(flow, DENY) for flow in flows], "ops2 outside sg-web")
    took = _timed_change(
        cloud,
        "compute-3",
        _set_name(tag_id("sg-web"), v6=True),
        str(cloud.vms["ops2"].ip6),
        lambda: cloud.write_endpoint("ops2", profiles=["sg-ops", "sg-web"]),
    )
    print(f"profile change on compute-2 -> tag set on compute-3: {took * 1000:.0f} ms")
    assert all(allowed(cloud, flow) for flow in flows)
    expect(cloud, [(flow, ALLOW) for flow in flows], "ops2 in sg-web")
    cloud.write_endpoint("ops2", profiles=["sg-ops"])
    expect(cloud, [(flow, DENY) for flow in flows], "ops2 out of sg-web again")
