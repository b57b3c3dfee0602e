"""End to end: hostile keys, hostile names from the kernel and ordinary operations that used to
open holes or cut VMs off (issue 12), proven with the real calico-felix, real iptables in a
namespace and packets.

Three VMs on one compute host: A and B carry the ``web`` profile (inbound tcp/80 and ping from
``web`` members), D the ``isolated`` profile (nothing inbound). Each test states the matrix
that must hold after the hostile input, so a hole (D reachable) or a cut (A cannot reach B)
fails it; every test restores what it changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from lab_support import ALLOW, DENY, Expectation, Flow, Lab, reset_etcd

from calico.common.datamodel_v1 import WorkloadEndpointKey
from calico.lab.etcd_server import EtcdServer
from calico.lab.flows import measure
from calico.lab.probes import wait_until

HOST = "e2e-hardening-1"
REFRESH = 2  # IptablesRefreshInterval: repairs come within REFRESH * 1.2
CHANGE_TIMEOUT = 10.0

WEB = {
    "inbound_rules": [
        {"protocol": "tcp", "dst_ports": [80], "src_tag": "web"},
        {"protocol": "icmp", "ip_version": 4, "src_tag": "web"},
        {"protocol": "icmpv6", "ip_version": 6, "src_tag": "web"},
    ],
    "outbound_rules": [{}],
}
ISOLATED: dict[str, object] = {"inbound_rules": [], "outbound_rules": [{}]}
INJECTION = "x\n-A felix-FORWARD -j ACCEPT\nCOMMIT\n*filter\n-I FORWARD 1 -j ACCEPT"

# What must hold throughout: web members talk, nothing reaches D.
BASELINE: list[Expectation] = [
    (Flow("A", "B", "tcp", 80), ALLOW),
    (Flow("A", "B", "icmp"), ALLOW),
    (Flow("B", "A", "tcp", 80), ALLOW),
    (Flow("A", "D", "tcp", 80), DENY),
    (Flow("A", "D", "icmp"), DENY),
    (Flow("B", "D", "udp", 53), DENY),
    (Flow("A", "D", "tcp", 80, v6=True), DENY),
]


@pytest.fixture(scope="module")
def lab(
    backend: str, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    reset_etcd(etcd_server)
    lab = Lab(etcd_server, tmp_path_factory.mktemp("hardening"), HOST, "hard")
    try:
        for name, octet in (("A", 2), ("B", 3), ("D", 5)):
            lab.add_vm(name, octet)
        lab.put("/calico/v1/Ready", "true")
        lab.put_profile("web", WEB, tags=["web"])
        lab.put_profile("isolated", ISOLATED, tags=["isolated"])
        lab.put_endpoint("A", ["web"])
        lab.put_endpoint("B", ["web"])
        lab.put_endpoint("D", ["isolated"])
        lab.start_felix(FELIX_IPTABLESREFRESHINTERVAL=str(REFRESH))
        lab.wait_pings("A", "B")
        yield lab
    finally:
        lab.close()


def forward_rules(lab: Lab) -> str:
    hook = "" if lab.view.nftables else lab.host.iptables("-S", "FORWARD")
    return hook + "\n".join(lab.view.chain_rules("felix-FORWARD"))


def test_injection_through_the_endpoint_key_opens_nothing(lab: Lab) -> None:
    """Item 1: a newline in the workload ID of an endpoint key used to end a rule comment and
    inject rules into felix-FORWARD. The key is now refused where it is parsed (logged), and no
    rule of it reaches the kernel; deleting it changes nothing either."""
    before = forward_rules(lab)
    d = lab.vms["D"]
    # The keys are built by hand, as an attacker would: key.path refuses such segments.
    for segment_index in (6, 7, 9):  # orchestrator, workload, endpoint
        parts = WorkloadEndpointKey(HOST, "openstack", "w", "e").path.split("/")
        parts[segment_index] = INJECTION
        key = "/".join(parts)
        # A valid value for D's interface, under the hostile key: it must not be applied.
        lab.put(key, json.loads(d.endpoint_json(["web"])))
    assert lab.felix is not None
    lab.felix.wait_for("Ignoring key", 10)
    time.sleep(REFRESH * 1.5)  # past a refresh and its read-back
    lab.expect(BASELINE, what="after hostile endpoint keys")
    assert forward_rules(lab) == before
    saved = lab.view.dump()
    assert "-A felix-FORWARD -j ACCEPT" not in saved and "-I FORWARD" not in saved
    lab.delete(f"/calico/v1/host/{HOST}/workload", recursive=True)
    lab.put_endpoint("A", ["web"])
    lab.put_endpoint("B", ["web"])
    lab.put_endpoint("D", ["isolated"])
    lab.expect(BASELINE, what="after deleting the hostile keys")
    assert forward_rules(lab) == before


def test_hostile_ids_in_values_open_nothing(lab: Lab) -> None:
    """Profile and tag IDs in values with quotes and newlines: refused by validation, so D's
    endpoint is treated as deleted (fail closed) and nothing else changes."""
    d = lab.vms["D"]
    data = json.loads(d.endpoint_json(["isolated"]))
    data["profile_ids"] = ['isolated" -j ACCEPT\n-A felix-FORWARD -j ACCEPT']
    lab.put(d.endpoint_key(), data)
    lab.put_profile("web\n-j ACCEPT", WEB, tags=['web" -j ACCEPT'])
    # D's endpoint is invalid, so it is as if deleted: no route, nothing reaches it.
    assert wait_until(lambda: lab.host.route_to(d.ip) is None, CHANGE_TIMEOUT, 0.2)
    lab.expect(BASELINE, what="with hostile IDs in values", require_path=False)
    assert "-A felix-FORWARD -j ACCEPT" not in lab.view.dump()
    lab.put_endpoint("D", ["isolated"])
    lab.expect(BASELINE, what="after restoring D")


def test_a_quote_in_a_host_interface_name_does_not_stop_the_dataplane(lab: Lab) -> None:
    """Item 3: an interface named with a quote, matched by a host endpoint's expected IP, made
    every later apply fail. Now it is logged and left alone, and policy changes still apply."""
    ns = lab.host.ns.name
    lab.host.run(["ip", "link", "add", 'eth"q', "type", "veth", "peer", "name", "ethq-peer"])
    try:
        lab.host.run(["ip", "addr", "add", "198.18.7.1/24", "dev", 'eth"q'])
        lab.host.run(["ip", "link", "set", 'eth"q', "up"])
        lab.put(
            f"/calico/v1/host/{HOST}/endpoint/by-address",
            {"expected_ipv4_addrs": ["198.18.7.1"], "profile_ids": ["isolated"]},
        )
        assert lab.felix is not None
        lab.felix.wait_for("cannot write into a rule", 10)
        # A policy change after that must still reach the kernel: D opens up to web members.
        lab.put_profile("isolated", WEB, tags=["isolated"])
        lab.expect([(Flow("A", "D", "tcp", 80), ALLOW)], what=f"in {ns}, after the bad name")
        lab.put_profile("isolated", ISOLATED, tags=["isolated"])
        lab.expect(BASELINE, what="after closing D again")
        assert "Dataplane update failed" not in lab.felix.text()
    finally:
        lab.delete(f"/calico/v1/host/{HOST}/endpoint/by-address")
        lab.host.run(["ip", "link", "del", 'eth"q'], check=False)


def _continuous(lab: Lab, seconds: float) -> list[str]:
    """Probe A->B tcp/80 and ping for `seconds`; the failures seen."""
    failures = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for flow in (Flow("A", "B", "tcp", 80), Flow("A", "B", "icmp")):
            if lab.host.route_to(lab.vms["B"].ip) != lab.vms["B"].tap:
                failures.append(f"{time.monotonic():.1f}: no route to B")
            if not measure(lab.vms, [flow])[flow]:
                failures.append(f"{time.monotonic():.1f}: {flow} denied")
        time.sleep(0.1)
    return failures


def test_a_re_keyed_endpoint_keeps_its_vm_connected(lab: Lab) -> None:
    """Item 6: the Neutron resync after a device_id change writes the endpoint under the new
    workload ID, then deletes the old key. The VM must stay reachable throughout, and deleting
    a stale duplicate for the same interface must not cut it off either."""
    b = lab.vms["B"]
    old_key = b.endpoint_key()
    new_key = WorkloadEndpointKey(HOST, "openstack", "b-new-device", b.port_id).path
    stale_key = WorkloadEndpointKey(HOST, "openstack", "a-stale-dup", b.port_id).path
    value = json.loads(b.endpoint_json(["web"]))
    lab.put(new_key, value)
    lab.put(stale_key, value)
    assert lab.felix is not None
    lab.felix.wait_for("Conflict: endpoints", 10)
    lab.delete(old_key)
    failures = _continuous(lab, 3)
    lab.delete(stale_key)
    failures += _continuous(lab, REFRESH * 1.5)  # and past a refresh
    assert not failures, failures
    lab.expect(BASELINE, what="after the re-key")
    lab.delete(new_key)
    lab.put_endpoint("B", ["web"])
    lab.expect(BASELINE, what="after restoring B's key")


def test_interface_settings_set_back_by_another_tool_are_repaired(lab: Lab) -> None:
    """Item 7: proxy_arp, rp_filter and route_localnet set back on a VM's TAP stayed wrong
    until the interface flapped. The refresh now repairs them (and logs it)."""
    tap = lab.vms["B"].tap
    settings = {
        f"net.ipv4.conf.{tap}.proxy_arp": "0",
        f"net.ipv4.conf.{tap}.rp_filter": "0",
        f"net.ipv4.conf.{tap}.route_localnet": "0",
    }
    for name, value in settings.items():
        lab.host.sysctl(name, value)
    assert wait_until(
        lambda: all(lab.host.read_sysctl(name) == "1" for name in settings), REFRESH * 3, 0.2
    ), {name: lab.host.read_sysctl(name) for name in settings}
    assert lab.felix is not None
    lab.felix.wait_for(f"Repaired settings of interface {tap}", 5)
    lab.expect(BASELINE, what="after the repair")
