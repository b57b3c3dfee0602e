"""End to end: switching NFTablesMode on a running host (issue 17). Real etcd, calico-felix,
kernel and packets.

Felix runs with iptables, then is restarted with nftables, then with iptables again. Each time
the new backend programs everything while the previous one's rules and sets still police the
traffic (the matrix holds throughout), and StartupCleanupDelay after the first in-sync it removes
the other backend's state: every ``felix-*`` chain, hook and ipset, or ``table inet felix``.
The host's own iptables rule and ipset stay.

VMs A and B carry profile ``web`` (tcp/80 and ping from ``web`` members); D carries
``isolated`` (nothing inbound).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lab_support import ALLOW, DENY, Expectation, Flow, Lab, reset_etcd

from calico.lab.dataplane_view import DataplaneView
from calico.lab.etcd_server import EtcdServer
from calico.lab.probes import wait_until

HOST = "e2e-switch-1"
DELAY = 4  # StartupCleanupDelay
WEB = {
    "inbound_rules": [
        {"protocol": "tcp", "dst_ports": [80], "src_tag": "web"},
        {"protocol": "icmp", "ip_version": 4, "src_tag": "web"},
        {"protocol": "icmpv6", "ip_version": 6, "src_tag": "web"},
    ],
    "outbound_rules": [{}],
}
MATRIX: list[Expectation] = [
    (Flow("A", "B", "tcp", 80), ALLOW),
    (Flow("B", "A", "icmp"), ALLOW),
    (Flow("A", "D", "tcp", 80), DENY),
    (Flow("B", "D", "icmp"), DENY),
]


@pytest.fixture(scope="module")
def lab(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reset_etcd(etcd_server)
    lab = Lab(etcd_server, tmp_path_factory.mktemp("switch"), HOST, "sw")
    try:
        for name, octet in (("A", 2), ("B", 3), ("D", 5)):
            lab.add_vm(name, octet)
        lab.put("/calico/v1/Ready", "true")
        lab.put_profile("web", WEB, tags=["web"])
        lab.put_profile("isolated", {"inbound_rules": [], "outbound_rules": [{}]})
        for vm, profile in (("A", "web"), ("B", "web"), ("D", "isolated")):
            lab.put_endpoint(vm, [profile])
        # The host's own rule and set, which no backend may touch.
        lab.host.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"])
        lab.host.run(["ipset", "create", "host-own", "hash:ip"])
        yield lab
    finally:
        lab.close()


def run(lab: Lab, mode: str) -> None:
    if lab.felix is not None:
        lab.felix.stop()
    lab.view = DataplaneView(lab.host.ns, "nftables" if mode == "Enabled" else "iptables")
    lab.start_felix(FELIX_NFTABLESMODE=mode, FELIX_STARTUPCLEANUPDELAY=str(DELAY))


def iptables_state(lab: Lab) -> tuple[bool, bool]:
    """(felix- chains in iptables, felix- ipsets)."""
    saved = lab.host.run(["iptables-save"]).stdout + lab.host.run(["ip6tables-save"]).stdout
    sets = lab.host.run(["ipset", "list", "-n"]).stdout.split()
    return "felix-" in saved, any(name.startswith("felix-") for name in sets)


def nft_table(lab: Lab) -> bool:
    return "table inet felix" in lab.host.run(["nft", "list", "tables"]).stdout


def host_state_kept(lab: Lab) -> None:
    assert "--dport 2222 -j ACCEPT" in lab.host.run(["iptables-save"]).stdout
    assert "host-own" in lab.host.run(["ipset", "list", "-n"]).stdout.split()


def test_switching_backends_keeps_policy_and_removes_the_other_state(lab: Lab) -> None:
    run(lab, "Disabled")
    lab.wait_pings("A", "B", timeout=20)
    lab.expect(MATRIX, what="iptables")
    assert iptables_state(lab) == (True, True) and not nft_table(lab)

    run(lab, "Enabled")
    # Both backends' state now: the old one goes only after the delay.
    assert nft_table(lab) and iptables_state(lab) == (True, True)
    lab.expect(MATRIX, what="nftables, iptables state still there")
    assert lab.felix is not None
    lab.felix.wait_for("Start-of-day cleanup done", timeout=DELAY + 30)
    if not wait_until(lambda: iptables_state(lab) == (False, False), 10):
        lab.fail(f"the iptables backend's state is left: {iptables_state(lab)}")
    lab.expect(MATRIX, what="nftables alone")
    host_state_kept(lab)

    run(lab, "Disabled")
    assert nft_table(lab) and iptables_state(lab) == (True, True)
    lab.expect(MATRIX, what="iptables, nftables table still there")
    assert lab.felix is not None
    lab.felix.wait_for("Start-of-day cleanup done", timeout=DELAY + 30)
    if not wait_until(lambda: not nft_table(lab), 10):
        lab.fail("table inet felix is left after the switch back to iptables")
    lab.expect(MATRIX, what="iptables alone")
    host_state_kept(lab)
