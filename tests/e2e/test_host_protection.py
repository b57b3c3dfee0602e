"""End to end: Felix protecting the compute host itself. Real etcd, real calico-felix, packets.

Three things decide whether a packet to or from the host gets through (felix.md §5.3-§5.5, §5.9):

* **DefaultEndpointToHostAction** for VM -> host traffic: DROP drops it; RETURN applies the VM's
  outbound policy and then hands the packet back to the host's own INPUT rules; ACCEPT applies
  the outbound policy and accepts. One Felix per value (the tests restart it).
* **Host endpoints** (``/calico/v1/host/<host>/endpoint/<id>``) police the host's own interfaces
  by their profile: inbound rules for traffic arriving, outbound rules for traffic leaving. An
  endpoint names its interface, or gives only expected IPs and follows whichever interface holds
  one of them. Interfaces without an endpoint are not policed (unknown host interface ->
  RETURN to the host's rules).
* **Failsafe ports**: TCP to FailsafeInboundHostPorts / FailsafeOutboundHostPorts passes host
  endpoints whatever their policy.

Layout (all namespaces created here and always deleted)::

    VM 10.65.0.2 --tap-- [ compute host: Felix ] --ext0 198.18.0.1/24-- external 198.18.0.2
                             |   198.18.9.1/32 (a movable "service" address, on hepa or hepb)
                             +--hepa 198.18.2.1/24-- peer X 198.18.2.2
                             +--hepb 198.18.3.1/24-- peer Y 198.18.3.2

The host's own INPUT chain (not Felix's) accepts tcp/HOST_ALLOWED and rejects tcp/HOST_REJECTED;
its policy is ACCEPT. Every expectation is retried for a bounded time; a failure prints Felix's
log and the host's iptables-save. Every "denied" is paired with an "allowed" between the same
two namespaces, so a denial cannot be a broken lab.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from calico.lab.dataplane_view import DataplaneView
from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.netns import NetNS
from calico.lab.probes import Node, ping, tcp_ok, wait_until
from calico.lab.topology import ComputeHost, ExternalHost

HOST = "hp-host-1"
PROGRAM_TIMEOUT = 40.0  # Felix start + first programming, on a busy 2-core machine
CHANGE_TIMEOUT = 10.0  # an etcd or interface change reaching the kernel
# Ports. Felix's failsafe lists are given in the spec's comma-delimited format, with a
# non-default port in each so the test proves the list is parsed, not just defaulted.
FAILSAFE_IN, FAILSAFE_OUT = 5022, 5379
HOST_ALLOWED, HOST_REJECTED = 8081, 8082  # the host's own INPUT rules (RETURN tests)
VM_DENIED = 8083  # the VM's profile denies this outbound
HEP_ALLOWED_IN, HEP_DENIED_IN = 9080, 9081  # the host endpoint profile's inbound rules
HEP_ALLOWED_OUT, HEP_DENIED_OUT = 9090, 9091  # ... and outbound rules
SERVICE_IP = "198.18.9.1"  # the expected IP of the host endpoint without a name

VM_PROFILE = {
    "inbound_rules": [{"action": "allow"}],
    "outbound_rules": [
        {"action": "deny", "protocol": "tcp", "dst_ports": [VM_DENIED]},
        {"action": "allow"},
    ],
}
HEP_PROFILE = {
    "inbound_rules": [
        {"action": "allow", "protocol": "tcp", "dst_ports": [HEP_ALLOWED_IN]},
        {"action": "allow", "protocol": "icmp"},
    ],
    "outbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [HEP_ALLOWED_OUT]}],
}
DENY_ALL = {"inbound_rules": [], "outbound_rules": []}
BY_IP_PROFILE = {
    "inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [HEP_ALLOWED_IN]}],
    "outbound_rules": [{"action": "allow"}],
}
UPLINK_KEY = f"/calico/v1/host/{HOST}/endpoint/uplink"
BY_IP_KEY = f"/calico/v1/host/{HOST}/endpoint/service"


class Addr(Node):
    """An address in a namespace: a probe destination (listeners bind to exactly this IP)."""

    def __init__(self, ns: NetNS, ip: str) -> None:
        self.ns = ns
        self.ip = ip
        self.ip6 = None

    def __repr__(self) -> str:
        return f"Addr({self.ip} in {self.ns.name})"


class HostLab:
    """The compute host with its VM, external host and two peers, and the running Felix."""

    def __init__(self, etcd: EtcdServer, work_dir: Path) -> None:
        self.etcd = etcd
        self.peers: list[NetNS] = []
        self.felix: FelixProcess | None = None
        self.action: str | None = None
        self.host = ComputeHost(
            etcd, hostname=HOST, name_prefix="hp", work_dir=work_dir, external=True
        )
        self.view = DataplaneView(self.host.ns)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        host = self.host
        external = host.external
        assert isinstance(external, ExternalHost)
        self.external = external
        self.uplink = Addr(host.ns, external.host_ip)  # 198.18.0.1 on ext0
        self.vm = host.add_workload("10.65.0.2", label="hpvm")
        self.x = self._peer("hepa", "198.18.2")
        self.y = self._peer("hepb", "198.18.3")
        self.service = Addr(host.ns, SERVICE_IP)
        host.run(["ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "hepa"])
        # The host's own firewall, which RETURN must defer to (appended: Felix inserts its
        # jump above it).
        host.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(HOST_ALLOWED), "-j", "ACCEPT")
        reject = ["-p", "tcp", "--dport", str(HOST_REJECTED), "-j", "REJECT"]
        host.iptables("-A", "INPUT", *reject, "--reject-with", "tcp-reset")
        self.put("/calico/v1/Ready", "true")
        self.put_profile("vm", VM_PROFILE)
        self.put(self.vm.endpoint_key(HOST), self.vm.endpoint_json(["vm"]))

    def _peer(self, host_if: str, net: str) -> NetNS:
        """A namespace on its own link to the host: host_if <net>.1/24, peer eth0 <net>.2/24,
        routed by default via the host (so it reaches the service address too)."""
        peer = NetNS().create()
        self.peers.append(peer)
        self.host.ns.add_veth_to(peer, host_if, "eth0")
        self.host.ns.set_up(host_if)
        peer.set_up("eth0")
        self.host.ns.add_addr(host_if, f"{net}.1/24")
        peer.add_addr("eth0", f"{net}.2/24")
        peer.run(["ip", "route", "add", "default", "via", f"{net}.1"])
        return peer

    # -- datastore ---------------------------------------------------------------------------

    def put(self, key: str, value: object) -> None:
        self.etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))

    def put_profile(self, name: str, rules: object) -> None:
        self.put(f"/calico/v1/policy/profile/{name}/rules", rules)
        self.put(f"/calico/v1/policy/profile/{name}/tags", [name])

    # -- Felix -------------------------------------------------------------------------------

    def run_felix(self, action: str = "DROP") -> None:
        """Make sure a Felix with DefaultEndpointToHostAction=`action` runs and has programmed
        the host (restarting it if another value is running)."""
        if self.felix is not None and self.action == action and self.felix.proc.poll() is None:
            return
        if self.felix is not None:
            self.felix.stop()
        self.action = action
        self.felix = self.host.start_felix(
            FELIX_DEFAULTENDPOINTTOHOSTACTION=action,
            FELIX_FAILSAFEINBOUNDHOSTPORTS=f"22,{FAILSAFE_IN}",
            FELIX_FAILSAFEOUTBOUNDHOSTPORTS=f"2379,{FAILSAFE_OUT}",
            FELIX_IPV6SUPPORT="true",  # probes are IPv4, but the v6 tables must load too
        )
        try:
            self.felix.wait_for("Dataplane programmed", PROGRAM_TIMEOUT)
        except AssertionError as e:
            self.fail(f"Felix ({action}) never programmed the host: {e}")
        if (said := self.view.running_in(self.felix.text())) is not None:
            self.fail(f"Felix runs another backend than {self.view.backend}: {said}")
        # The VM's route is Felix's work: the positive control that this Felix is in charge.
        self.expect(
            True, "host route to the VM", lambda: self.host.route_to(self.vm.ip) is not None
        )

    # -- checks ------------------------------------------------------------------------------

    def expect(self, allowed: bool, what: str, check: Callable[[], bool]) -> None:
        """Wait (bounded) until `check()` gives `allowed`; fail with the evidence otherwise."""
        if not wait_until(lambda: check() == allowed, CHANGE_TIMEOUT, 0.2):
            self.fail(f"{what}: expected {'allowed' if allowed else 'denied'}, got the opposite")

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n{self.evidence()}")

    def evidence(self) -> str:
        saved = self.host.run(["iptables-save"], check=False).stdout
        if self.view.nftables:
            saved += f"--- Felix's nftables table:\n{self.view.dump()}"
        addrs = self.host.run(["ip", "-br", "addr"], check=False).stdout
        log = "(Felix was never started)"
        if self.felix is not None:
            lines = self.felix.text().splitlines()
            log = f"exit status {self.felix.proc.poll()}\n" + "\n".join(lines[-60:])
        return (
            f"--- host iptables-save:\n{saved}--- host addresses:\n{addrs}"
            f"--- Felix ({self.action}) output, last 60 lines:\n{log}"
        )

    def close(self) -> None:
        errors: list[BaseException] = []
        try:
            self.host.close()  # stops Felix, deletes the host, VM and external namespaces
        except Exception as e:
            errors.append(e)
        for peer in self.peers:
            try:
                peer.delete()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def lab(
    backend: str, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostLab]:
    # A clean /calico for the whole module (the per-test `etcd` fixture would wipe it under
    # the running Felix).
    if not etcd_server.running:
        etcd_server.start()
    etcd_server.v2_delete("/calico", recursive=True)
    etcd_server.v3_delete("/calico", prefix=True)
    lab = HostLab(etcd_server, tmp_path_factory.mktemp("host-protection"))
    try:
        yield lab
    finally:
        lab.close()


# -- DefaultEndpointToHostAction (VM -> the host's own address) -------------------------------

# (allowed?) for the host's own accepted port, its rejected port, and the port the VM's
# outbound policy denies.
TO_HOST = {
    "DROP": (False, False, False),
    "RETURN": (True, False, False),
    "ACCEPT": (True, True, False),
}
# With nftables, Felix's accept ends only its own table's chain: the host's iptables INPUT
# chain (iptables-nft, a later base chain on the same hook) still runs and may drop or reject,
# so ACCEPT gives what RETURN gives (docs/design/dataplane.md, "The nftables backend").
TO_HOST_NFTABLES = {**TO_HOST, "ACCEPT": (True, False, False)}


@pytest.mark.parametrize("action", list(TO_HOST))
def test_default_endpoint_to_host_action(lab: HostLab, action: str) -> None:
    lab.run_felix(action)
    vm, uplink = lab.vm, lab.uplink
    # Positive control: the VM is wired and allowed out (forwarded to the external host).
    lab.expect(True, "VM -> external host ping", lambda: ping(vm, lab.external))
    expected = TO_HOST_NFTABLES if lab.view.nftables else TO_HOST
    own_allowed, own_rejected, policy_denied = expected[action]
    lab.expect(
        own_allowed,
        f"{action}: VM -> host tcp/{HOST_ALLOWED} (host's INPUT accepts it)",
        lambda: tcp_ok(vm, uplink, HOST_ALLOWED),
    )
    lab.expect(
        own_rejected,
        f"{action}: VM -> host tcp/{HOST_REJECTED} (host's INPUT rejects it)",
        lambda: tcp_ok(vm, uplink, HOST_REJECTED),
    )
    lab.expect(
        policy_denied,
        f"{action}: VM -> host tcp/{VM_DENIED} (the VM's outbound policy denies it)",
        lambda: tcp_ok(vm, uplink, VM_DENIED),
    )
    # The host's own rules are untouched whatever Felix does.
    rules = lab.host.iptables("-S", "INPUT")
    assert f"--dport {HOST_ALLOWED} -j ACCEPT" in rules
    assert f"--dport {HOST_REJECTED} -j REJECT" in rules


# -- host endpoint by interface name -----------------------------------------------------------


def test_host_endpoint_by_name_applies_its_profile(lab: HostLab) -> None:
    lab.run_felix(lab.action or "DROP")
    ext, uplink, host_ns = lab.external, lab.uplink, lab.host.ns
    # Before the endpoint exists, ext0 is an unknown host interface: not policed.
    lab.expect(
        True,
        f"no host endpoint yet: ext -> host tcp/{HEP_DENIED_IN}",
        lambda: tcp_ok(ext, uplink, HEP_DENIED_IN),
    )
    lab.put_profile("hep", HEP_PROFILE)
    endpoint = {"name": "ext0", "profile_ids": ["hep"], "expected_ipv4_addrs": ["198.18.0.1"]}
    lab.put(UPLINK_KEY, endpoint)
    try:
        lab.expect(
            False,
            f"ext -> host tcp/{HEP_DENIED_IN} (not in the profile)",
            lambda: tcp_ok(ext, uplink, HEP_DENIED_IN),
        )
        lab.expect(
            True,
            f"ext -> host tcp/{HEP_ALLOWED_IN}",
            lambda: tcp_ok(ext, uplink, HEP_ALLOWED_IN),
        )
        lab.expect(True, "ext -> host ping (the profile allows ICMP)", lambda: ping(ext, uplink))
        lab.expect(
            True,
            f"host -> ext tcp/{HEP_ALLOWED_OUT}",
            lambda: tcp_ok(host_ns, ext, HEP_ALLOWED_OUT),
        )
        lab.expect(
            False,
            f"host -> ext tcp/{HEP_DENIED_OUT} (not in the outbound rules)",
            lambda: tcp_ok(host_ns, ext, HEP_DENIED_OUT),
        )
    finally:
        lab.etcd.v2_delete(UPLINK_KEY)


def test_failsafe_ports_survive_a_deny_all_profile(lab: HostLab) -> None:
    lab.run_felix(lab.action or "DROP")
    ext, uplink, host_ns = lab.external, lab.uplink, lab.host.ns
    lab.put_profile("hep", HEP_PROFILE)
    lab.put(UPLINK_KEY, {"name": "ext0", "profile_ids": ["hep"]})
    try:
        lab.expect(True, "ext -> host ping before deny-all", lambda: ping(ext, uplink))
        lab.put_profile("hep", DENY_ALL)
        lab.expect(False, "deny-all: ext -> host ping", lambda: ping(ext, uplink))
        lab.expect(
            False,
            f"deny-all: ext -> host tcp/{HEP_ALLOWED_IN}",
            lambda: tcp_ok(ext, uplink, HEP_ALLOWED_IN),
        )
        lab.expect(
            True,
            f"deny-all: ext -> host tcp/{FAILSAFE_IN} (FailsafeInboundHostPorts)",
            lambda: tcp_ok(ext, uplink, FAILSAFE_IN),
        )
        lab.expect(
            False,
            f"deny-all: host -> ext tcp/{HEP_ALLOWED_OUT}",
            lambda: tcp_ok(host_ns, ext, HEP_ALLOWED_OUT),
        )
        lab.expect(
            True,
            f"deny-all: host -> ext tcp/{FAILSAFE_OUT} (FailsafeOutboundHostPorts)",
            lambda: tcp_ok(host_ns, ext, FAILSAFE_OUT),
        )
        # hepa has no host endpoint: an unknown host interface is left to the host's rules.
        x_side = Addr(lab.host.ns, "198.18.2.1")
        lab.expect(True, "X -> host via hepa (no endpoint) ping", lambda: ping(lab.x, x_side))
        lab.expect(
            True,
            f"X -> host via hepa (no endpoint) tcp/{HEP_DENIED_IN}",
            lambda: tcp_ok(lab.x, x_side, HEP_DENIED_IN),
        )
    finally:
        lab.etcd.v2_delete(UPLINK_KEY)
    # With the endpoint deleted, ext0 is not policed any more.
    lab.expect(True, "endpoint deleted: ext -> host ping", lambda: ping(ext, uplink))


# -- host endpoint by expected IP only ------------------------------------------------------------


def test_host_endpoint_by_expected_ip_follows_the_address(lab: HostLab) -> None:
    lab.run_felix(lab.action or "DROP")
    x, y, service, host = lab.x, lab.y, lab.service, lab.host
    lab.put_profile("by-ip", BY_IP_PROFILE)
    lab.put(BY_IP_KEY, {"expected_ipv4_addrs": [SERVICE_IP], "profile_ids": ["by-ip"]})
    moved = False
    try:
        # The address is on hepa: X's packets (arriving on hepa) are policed, Y's are not.
        lab.expect(
            False, "on hepa: X -> service tcp/9081", lambda: tcp_ok(x, service, HEP_DENIED_IN)
        )
        lab.expect(
            True, "on hepa: X -> service tcp/9080", lambda: tcp_ok(x, service, HEP_ALLOWED_IN)
        )
        lab.expect(
            True, "on hepa: Y -> service tcp/9081", lambda: tcp_ok(y, service, HEP_DENIED_IN)
        )
        host.run(["ip", "addr", "del", f"{SERVICE_IP}/32", "dev", "hepa"])
        host.run(["ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "hepb"])
        moved = True
        started = time.monotonic()
        # Now hepb holds it: Y is policed and X is not.
        lab.expect(
            False, "on hepb: Y -> service tcp/9081", lambda: tcp_ok(y, service, HEP_DENIED_IN)
        )
        print(f"policy followed the address in {time.monotonic() - started:.1f} s")
        lab.expect(
            True, "on hepb: Y -> service tcp/9080", lambda: tcp_ok(y, service, HEP_ALLOWED_IN)
        )
        lab.expect(
            True, "on hepb: X -> service tcp/9081", lambda: tcp_ok(x, service, HEP_DENIED_IN)
        )
    finally:
        lab.etcd.v2_delete(BY_IP_KEY)
        if moved:
            host.run(["ip", "addr", "del", f"{SERVICE_IP}/32", "dev", "hepb"])
            host.run(["ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "hepa"])
