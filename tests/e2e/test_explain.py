"""End to end: `calicoctl explain` agrees with the kernel for every cell of the e2e matrices.

One compute host runs the real calico-felix with the policy of both e2e matrices at once: the
profiles, tags and VMs of test_connectivity.py (VMs renamed nA..nE) and the profiles, selectors,
tiers with next-tier, negations, port ranges and ICMP types of test_policy_features.py, with V
inactive and M's profile missing from the start, plus an external host on the uplink and two VMs
of this test's own (N: both selector negations, a one-family net; Z: the NEXT-TIER mark carried
from a tier into the profiles). For every flow of those matrices (both IP versions where they
have them, and flows to and from the external host) explain is run in-process as an operator
would run it on that host (`calicoctl explain SRC DST --protocol P --port N -o json`, with
Felix's own environment), and the packets are measured concurrently (calico.lab.flows); every
measured result must equal explain's verdict (flows that disagree are measured again for a few
seconds, so a slow probe cannot fail the test, but a wrong verdict always does). A denial only
counts where the path exists: a route to the destination and an answered gateway at the source,
unless explain says the endpoint has no chains.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import test_connectivity as conn
import test_policy_features as feat
from lab_support import Lab, reset_etcd

from calico.ctl.cli import main
from calico.lab.dataplane_view import DataplaneView
from calico.lab.etcd_server import EtcdServer
from calico.lab.flows import Flow, settle
from calico.lab.probes import Node
from calico.lab.topology import ComputeHost

HOST = "e2e-explain-1"
EXT = "EXT"
SETTLE = 8.0  # how long a disagreeing flow is measured again
CONN_OCTET = 30  # connectivity VMs at 10.65.0.32-36
# One more VM of this test's own, N (10.65.0.16): the two selector negations side by side (a
# negated selector is a set of endpoints, so an external host is never in it; a negated match
# admits any address outside the set, external hosts included) and a rule whose net is of one
# family only (skipped in the other family's table).
NEGATIONS = {
    "inbound_rules": [
        {"protocol": "tcp", "dst_ports": [7100], "src_selector": "!(role == 'client')"},
        {"protocol": "tcp", "dst_ports": [7101], "!src_selector": "role == 'client'"},
        {"protocol": "tcp", "dst_ports": [7102], "src_net": "10.65.0.0/16"},
        {"protocol": "udp", "dst_ports": ["7000:7010"], "!src_net": "10.65.0.3/32"},
    ],
    "outbound_rules": [{}],
}
# And Z (10.65.0.17): a tier whose only policy says next-tier, then a profile whose first rule is
# a next-tier for UDP. The NEXT-TIER mark is still set from the tier when the profile's chain
# runs; the profile's next-tier rule must still act on its own match only: UDP to Z ends the
# profile (dropped), TCP reaches the allow-all (felix.md §2.5, §5.5). Felix used to return for
# every packet there (found by this test).
QUIRK = {"inbound_rules": [{"action": "next-tier", "protocol": "udp"}, {}], "outbound_rules": [{}]}
QUIRK_TIER = ("tq", 30, {"selector": "quirk == 'yes'", "inbound_rules": [{"action": "next-tier"}]})


def conn_name(name: str) -> str:
    return f"n{name}"


class ExplainLab(Lab):
    """lab_support's Lab, on a compute host with an external host on its uplink."""

    def __init__(self, etcd: EtcdServer, work_dir: Path) -> None:
        self.etcd = etcd
        self.hostname = HOST
        self.host = ComputeHost(
            etcd, hostname=HOST, name_prefix="expl", work_dir=work_dir, external=True
        )
        self.vms = {}
        self.felix = None
        self.view = DataplaneView(self.host.ns)

    @property
    def nodes(self) -> dict[str, Node]:
        assert self.host.external is not None
        return {**self.vms, EXT: self.host.external}


def build(lab: ExplainLab) -> None:
    for name, (octet, _, _) in feat.VMS.items():
        if name not in feat.UNPLUGGED:
            lab.add_vm(name, octet)
    for name, (octet, _, _) in conn.VMS.items():
        lab.add_vm(conn_name(name), CONN_OCTET + octet)
    lab.add_vm("N", 16)
    lab.add_vm("Z", 17)
    lab.put("/calico/v1/Ready", "true")
    for name, spec in feat.PROFILES.items():
        lab.put_profile(name, spec["rules"], labels=spec.get("labels"))  # type: ignore[arg-type]
    for name, spec in conn.PROFILES.items():
        lab.put_profile(name, spec["rules"], tags=spec["tags"])  # type: ignore[arg-type]
    lab.put_profile("negations", NEGATIONS)
    lab.put_profile("quirk", QUIRK)
    tier, order, policy = QUIRK_TIER
    lab.put(f"{feat.TIER}/{tier}/metadata", {"order": order})
    lab.put(f"{feat.TIER}/{tier}/policy/pass", policy)
    for tier, order in feat.TIERS.items():
        if order is not None:
            lab.put(f"{feat.TIER}/{tier}/metadata", {"order": order})
    for (tier, policy), spec in feat.POLICIES.items():
        lab.put(f"{feat.TIER}/{tier}/policy/{policy}", spec)
    for name, (_, profiles, labels) in feat.VMS.items():
        if name in feat.UNPLUGGED:
            continue
        listed = [profiles] if isinstance(profiles, str) else profiles
        lab.put_endpoint(name, listed, labels, state="inactive" if name == "V" else "active")
    for name, (_, profile, labels) in conn.VMS.items():
        lab.put_endpoint(conn_name(name), [profile], labels)
    lab.put_endpoint("N", ["negations"])
    lab.put_endpoint("Z", ["quirk"], {"quirk": "yes"})
    lab.start_felix()
    lab.wait_pings("C", "T1", timeout=20)
    lab.wait_pings(conn_name("A"), conn_name("B"), timeout=20)


@pytest.fixture(scope="module")
def lab(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExplainLab]:
    reset_etcd(etcd_server)
    lab = ExplainLab(etcd_server, tmp_path_factory.mktemp("explain"))
    try:
        build(lab)
        yield lab
    finally:
        lab.close()


def tcp(src: str, dst: str, port: int, v6: bool = False) -> Flow:
    return Flow(src, dst, "tcp", port, v6)


def udp(src: str, dst: str, port: int, v6: bool = False) -> Flow:
    return Flow(src, dst, "udp", port, v6)


def icmp(src: str, dst: str, v6: bool = False) -> Flow:
    return Flow(src, dst, "icmp", None, v6)


def feature_flows() -> list[Flow]:
    """Every flow test_policy_features.py measures with the lab in its built state."""
    flows: list[Flow] = []
    for v6 in (False, True):
        flows += [
            tcp("C", "W", 80, v6), tcp("X", "W", 80, v6), tcp("W2", "W", 80, v6),
            tcp("C2", "W", 80, v6), tcp("C", "W", 81, v6),
            tcp("X", "T1", 80, v6), icmp("X", "T1", v6), tcp("X", "T2", 80, v6),
            icmp("X", "T2", v6), tcp("C", "T2", 80, v6),
        ]  # fmt: skip
    flows.append(icmp("C", "W"))
    flows += [tcp("C", "P", port) for port in range(81, 89)]
    flows += [icmp("C", "P"), icmp("C", "P", True)]
    flows += [tcp("C", "P", port, True) for port in (81, 82, 86)]
    flows += [tcp("C", "Q", 7000), tcp("C", "Q", 7001), icmp("C", "Q"), tcp("C", "T1", 7001)]
    flows.append(tcp("C", "P", 7000))
    flows += [tcp("C", "R", port) for port in (8000, 8005, 8010, 7999, 8011)]
    flows += [tcp("C", "R", 8005, True), tcp("C", "R", 8011, True)]
    flows += [udp("C", "R", port) for port in (6000, 4999, 5000, 5999)]
    flows += [tcp("C", "R", 9000), tcp("X", "R", 9000), tcp("W2", "R", 9001), tcp("C", "R", 9001)]
    flows += [icmp("C", "R"), icmp("C", "R", True), icmp("C", "K"), icmp("C", "K", True)]
    flows += [tcp("C", "K", port) for port in (999, 1000, 1500, 2000, 2001, 22)]
    flows += [tcp("C", "K", 1500, True), tcp("C", "K", 2001, True)]
    flows += [icmp("C", "V"), tcp("C", "V", 80), icmp("C", "V", True), icmp("V", "T1")]
    flows += [icmp("C", "M"), tcp("C", "M", 80), icmp("C", "M", True), icmp("M", "T1")]
    flows.append(tcp("M", "T1", 80))
    return flows


def connectivity_flows() -> list[Flow]:
    """Every cell of test_connectivity.py's matrix, in both IP versions."""
    return [
        Flow(conn_name(row.src), conn_name(row.dst), row.proto, row.port, v6)
        for v6 in (False, True)
        for row in conn.MATRIX
    ]


def external_flows() -> list[Flow]:
    """To and from an address outside every endpoint (only the other side's policy applies)."""
    na, nc = conn_name("A"), conn_name("C")
    return [
        tcp(EXT, na, 80), tcp(EXT, nc, 5432), tcp(EXT, nc, 80), tcp(EXT, "W", 80),
        tcp(EXT, "T1", 80), icmp(EXT, "R"), icmp(EXT, "K"), tcp(na, EXT, 80),
        tcp("X", EXT, 80), icmp("X", EXT), udp("W", EXT, 53), icmp("M", EXT),
    ]  # fmt: skip


def negation_flows() -> list[Flow]:
    return [
        tcp("C", "N", 7100), tcp("W2", "N", 7100), tcp(EXT, "N", 7100),
        tcp("C", "N", 7101), tcp("W2", "N", 7101), tcp(EXT, "N", 7101),
        tcp("C", "N", 7102), tcp("C", "N", 7102, True), tcp(EXT, "N", 7102),
        udp("C", "N", 7005), udp("W", "N", 7005), udp("W", "N", 7011),
        tcp("C", "Z", 80), icmp("C", "Z"), udp("C", "Z", 53), icmp("Z", "C"),
    ]  # fmt: skip


def explain(lab: ExplainLab, flow: Flow) -> dict[str, Any]:
    """`calicoctl explain` for one flow, run as on the compute host: SRC by its endpoint ID,
    DST by its address (the external host by its address on both ends)."""
    nodes = lab.nodes
    src = nodes[flow.src]
    src_name = src.port_id if flow.src in lab.vms else src.addr(flow.v6)  # type: ignore[attr-defined]
    argv = ["explain", src_name, nodes[flow.dst].addr(flow.v6), "--protocol", flow.proto]
    if flow.port is not None:
        argv += ["--port", str(flow.port)]
    if flow.v6:
        argv.append("-6")
    argv += ["-o", "json", "-c", str(lab.host.work_dir / "absent.cfg")]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv, lab.host.felix_env())
    assert code == 0, f"explain {' '.join(argv)}: exit {code}\n{err.getvalue()}"
    return json.loads(out.getvalue())


def _no_path(lab: ExplainLab, flow: Flow) -> str | None:
    """Why a denial could be something else than policy (for VM-to-VM flows)."""
    if flow.src not in lab.vms or flow.dst not in lab.vms:
        return None
    src, dst = lab.vms[flow.src], lab.vms[flow.dst]
    if lab.host.route_to(dst.addr(flow.v6)) != dst.tap:
        return f"no host route to {dst.addr(flow.v6)}"
    if not src.gateway_resolved(flow.v6):
        return f"{flow.src}'s gateway never answered"
    return None


def test_explain_agrees_with_packets_for_every_cell(lab: ExplainLab) -> None:
    lab.require_felix()
    flows = feature_flows() + connectivity_flows() + external_flows() + negation_flows()
    assert len(set(flows)) == len(flows)
    explained = {flow: explain(lab, flow) for flow in flows}
    expected = {flow: e["verdict"] == "allow" for flow, e in explained.items()}
    problems = settle(lab.nodes, expected, SETTLE)  # type: ignore[arg-type]
    for flow, verdict in expected.items():
        legs = explained[flow]["legs"]
        no_chains = any(leg["chain"] is None for leg in legs)
        if not verdict and not no_chains and (why := _no_path(lab, flow)) is not None:
            problems.append(f"{flow}: denied, but not by policy: {why}")
    if problems:
        details = "\n".join(
            f"--- {flow}:\n{json.dumps(explained[flow]['legs'], indent=1)}"
            for flow in flows
            if any(line.startswith(str(flow)) for line in problems)
        )
        lab.fail(
            f"{len(problems)} of {len(flows)} cells disagree:\n"
            + "\n".join(problems)
            + "\n"
            + details
        )
    # The two negations and the one-family net, as this test means them (packets agreed above).
    meant = {
        tcp(EXT, "N", 7100): False,  # not in a set of endpoints
        tcp(EXT, "N", 7101): True,  # outside the set of clients
        tcp("W2", "N", 7100): True,
        tcp("C", "N", 7101): False,
        tcp("C", "N", 7102): True,
        tcp("C", "N", 7102, True): False,  # the IPv4 net's rule is not in the IPv6 table
        udp("C", "N", 7005): False,
        udp("W", "N", 7005): True,
        tcp("C", "Z", 80): True,  # the tier's next-tier mark does not end the profile
        udp("C", "Z", 53): False,  # the profile's own next-tier rule ends it
    }
    assert {flow: expected[flow] for flow in meant} == meant
    allowed = sum(expected.values())
    assert 0 < allowed < len(flows)  # both verdicts occur
    print(f"{len(flows)} cells: {allowed} allowed, {len(flows) - allowed} denied; all agree")
