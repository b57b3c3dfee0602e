"""End to end: Felix's nat table (felix.md §5.8, §5.9) proven with packets.

One compute host namespace runs the real ``calico-felix``; three VMs hang off it and an
external host sits on its uplink (calico.lab.topology)::

    VM A 10.65.0.2 --+                         +-- external host 198.18.0.2/24
    VM B 10.65.0.3 --+-- compute host (Felix) -+   (default route via the host's
    VM F 10.65.0.4 --+   ext0 198.18.0.1/24        uplink address 198.18.0.1)

What is proven, each by its own test:

* metadata: a VM fetching ``http://169.254.169.254:80/`` gets the answer of a stand-in
  metadata server listening in the host namespace on MetadataAddr:MetadataPort: the default
  127.0.0.1:8775 (which needs ``route_localnet`` on the TAP), then the host's uplink address
  on another port; with ``MetadataAddr=none`` the DNAT and its INPUT accept are gone and the
  VM no longer reaches the server;
* floating IP: F's endpoint maps ext_ip 198.19.0.10 to its own address; the external host
  reaches F by the ext_ip (ping, TCP and UDP, replies from the ext_ip; its default route
  goes via the host's uplink), so does the compute host itself (nat OUTPUT) and F itself
  (hairpin SNAT); removing the mapping stops it and flushes the ext_ip's conntrack entries;
* masquerade: with the pool 10.65.0.0/16 ``masquerade: true`` the external host sees A's
  connection coming from the host's uplink address; with ``masquerade: false`` from A's own
  address; between two VMs of the pool never masqueraded.

Every server here answers an HTTP GET with a random token and the peer and local addresses
of the connection as it saw them, so each check proves both that the packets got through
and which addresses NAT left on them. Every check is retried for a bounded time; a failure
prints Felix's log, ``iptables-save -t nat`` and the routes of the host namespace.

Felix is started once for the module with the default metadata configuration; the two
other metadata configurations need a restart (the lab gives them in Felix's environment,
read at start), so those tests come last and restart Felix only when its configuration
differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import pytest

from calico.lab.dataplane_view import DataplaneView
from calico.lab.echo import EchoServer, Reply, ping_reply_from
from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.probes import wait_until
from calico.lab.topology import ComputeHost, ExternalHost, Workload

HOST = "nat-host-1"
PROGRAM_TIMEOUT = 30.0  # Felix start + first programming, on a busy 2-core machine
CHANGE_TIMEOUT = 8.0  # an etcd change reaching the kernel
DENY_CONFIRM = 2  # a denial must hold for this many further attempts
SERVER_PORT = 8080  # the echo servers in the VMs and on the external host
UDP_SPORT = 40001  # the external host's source port for its long-lived UDP flow
METADATA_IP = "169.254.169.254"
EXT_IP = "198.19.0.10"  # F's floating IP: in 198.18.0.0/15, off the uplink's /24
POOL_CIDR = "10.65.0.0/16"
POOL_KEY = "/calico/v1/ipam/v4/pool/10.65.0.0-16"
PROFILE = "nat-open"
# Everything that the tests send to a VM is allowed by its profile, so whether a packet
# gets through is decided by routing and NAT alone.
PROFILE_RULES = {
    "inbound_rules": [
        {"protocol": "icmp"},
        {"protocol": "tcp", "dst_ports": [SERVER_PORT]},
        {"protocol": "udp", "dst_ports": [SERVER_PORT]},
    ],
    "outbound_rules": [{"action": "allow"}],
}


class NatLab:
    """The compute host with its uplink and external host, three VMs and Felix."""

    def __init__(self, etcd: EtcdServer, work_dir: Path):
        self.etcd = etcd
        self.host = ComputeHost(
            etcd, hostname=HOST, name_prefix="nat", work_dir=work_dir, external=True
        )
        assert self.host.external is not None
        self.ext: ExternalHost = self.host.external
        self.view = DataplaneView(self.host.ns)
        try:
            self.a = self.host.add_workload("10.65.0.2", label="vma")
            self.b = self.host.add_workload("10.65.0.3", label="vmb")
            self.f = self.host.add_workload("10.65.0.4", label="vmf")
        except BaseException:
            self.host.close()  # the fixture only closes a lab it got
            raise
        self.felix: FelixProcess | None = None
        self.felix_config: dict[str, str] | None = None

    # -- datastore -----------------------------------------------------------------------------

    def put(self, key: str, value: object) -> None:
        self.etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))

    def put_endpoint(self, vm: Workload, nat: list[dict[str, str]] | None = None) -> None:
        data = json.loads(vm.endpoint_json([PROFILE]))
        if nat is not None:
            data["ipv4_nat"] = nat
        self.put(vm.endpoint_key(HOST), data)

    def build(self) -> None:
        self.put("/calico/v1/Ready", "true")
        self.put(f"/calico/v1/policy/profile/{PROFILE}/rules", PROFILE_RULES)
        self.put(f"/calico/v1/policy/profile/{PROFILE}/tags", [PROFILE])
        for vm in (self.a, self.b, self.f):
            self.put_endpoint(vm)

    # -- Felix -----------------------------------------------------------------------------

    def ensure_felix(self, config: Mapping[str, str]) -> None:
        """Felix running with exactly this extra configuration (restarted if it differs) and
        done programming; FAIL (never skip) with its log otherwise."""
        if self.felix is not None and self.felix_config == dict(config):
            if self.felix.proc.poll() is not None:
                self.fail("calico-felix has exited")
            return
        if self.felix is not None:
            self.felix.stop()
        self.felix_config = dict(config)
        self.felix = self.host.start_felix(config)
        try:
            self.felix.wait_for("Dataplane programmed", PROGRAM_TIMEOUT)
        except AssertionError as exc:
            self.fail(f"Felix did not program the host: {exc}")
        if (said := self.view.running_in(self.felix.text())) is not None:
            self.fail(f"Felix runs another backend than {self.view.backend}: {said}")
        # Positive control: with Felix's routes and proxy ARP, A reaches B.
        if not wait_until(lambda: ping_reply_from(self.a.ns, self.b.ip) == self.b.ip, 10, 0.5):
            self.fail("A never pinged B after Felix programmed the host")

    # -- diagnostics ---------------------------------------------------------------------------

    def fail(self, message: str) -> NoReturn:
        nat = self.view.nat_dump()
        routes = self.host.run(["ip", "-4", "route", "show"], check=False).stdout
        log = self.felix.text().splitlines()[-60:] if self.felix else ["(Felix never started)"]
        status = self.felix.proc.poll() if self.felix else None
        pytest.fail(
            f"{message}\n--- iptables-save -t nat (host):\n{nat}--- host routes:\n{routes}"
            f"--- Felix (exit status {status}), last 60 lines:\n" + "\n".join(log)
        )

    def udp_conntrack(self, orig_dst: str, sport: int) -> str:
        """The host's conntrack entries of UDP flows to ``orig_dst`` from source port ``sport``
        (as ``conntrack -L`` prints them; empty if none)."""
        argv = ["conntrack", "-L", "-p", "udp", "--orig-dst", orig_dst, "--sport", str(sport)]
        return self.host.run(argv, check=False).stdout.strip()

    # -- checks ------------------------------------------------------------------------------

    def expect_allowed(self, what: str, attempt: Callable[[], bool]) -> None:
        """``attempt()`` succeeded within CHANGE_TIMEOUT (retried)."""
        if not wait_until(attempt, CHANGE_TIMEOUT, 0.5):
            self.fail(f"expected allowed, got denied: {what}")

    def expect_reply(
        self, what: str, fetch: Callable[[], Reply | None], peer: str | None = None
    ) -> Reply:
        """``fetch()`` answered within CHANGE_TIMEOUT (retried), and if ``peer`` is given the
        server saw the connection come from it; the reply."""
        replies: list[Reply] = []

        def answered() -> bool:
            reply = fetch()
            if reply is not None:
                replies.append(reply)
            return reply is not None and peer in (None, reply.peer)

        if not wait_until(answered, CHANGE_TIMEOUT, 0.5):
            if not replies:
                self.fail(f"expected allowed, got denied: {what}")
            self.fail(f"{what}: expected the server to see peer {peer}, last reply {replies[-1]}")
        return replies[-1]

    def expect_denied(self, what: str, attempt: Callable[[], bool]) -> None:
        """``attempt()`` failed within CHANGE_TIMEOUT (retried), then kept failing."""
        if not wait_until(lambda: not attempt(), CHANGE_TIMEOUT, 0.5):
            self.fail(f"expected denied, got allowed: {what}")
        for _ in range(DENY_CONFIRM):
            if attempt():
                self.fail(f"expected denied, allowed again: {what}")

    def close(self) -> None:
        self.host.close()


@pytest.fixture(scope="module")
def lab(
    backend: str, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatLab]:
    # A clean /calico for the whole module: this lab's Felix must not see it wiped under it.
    if not etcd_server.running:
        etcd_server.start()
    etcd_server.v2_delete("/calico", recursive=True)
    etcd_server.v3_delete("/calico", prefix=True)
    lab = NatLab(etcd_server, tmp_path_factory.mktemp("nat"))
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


DEFAULT_METADATA: dict[str, str] = {}  # MetadataAddr 127.0.0.1, MetadataPort 8775


# -- metadata --------------------------------------------------------------------------------


def test_metadata_reaches_loopback_server(lab: NatLab) -> None:
    """The default MetadataAddr 127.0.0.1:8775: DNAT from 169.254.169.254:80, accepted in
    INPUT, and routable only because Felix set route_localnet on the TAP."""
    lab.ensure_felix(DEFAULT_METADATA)
    assert lab.host.read_sysctl(f"net.ipv4.conf.{lab.a.tap}.route_localnet") == "1"
    assert lab.view.metadata_accept() == ("127.0.0.1", "8775")
    with EchoServer(lab.host.ns, "127.0.0.1", 8775) as server:
        reply = lab.expect_reply(
            "A -> http://169.254.169.254/ (metadata at 127.0.0.1:8775)",
            lambda: server.fetch(lab.a.ns, METADATA_IP, 80),
        )
    # The server saw A itself (no SNAT) arriving at its loopback address (DNAT); A saw the
    # answer come from the address it asked.
    assert reply == Reply(server.token, lab.a.ip, "127.0.0.1", METADATA_IP), reply


# -- floating IPs ----------------------------------------------------------------------------


def test_floating_ip(lab: NatLab) -> None:
    """F's ext_ip, from the external host (PREROUTING DNAT) and from the host itself (nat
    OUTPUT); gone with the mapping."""
    lab.ensure_felix(DEFAULT_METADATA)
    f, ext = lab.f, lab.ext
    with EchoServer(f.ns, "0.0.0.0", SERVER_PORT) as server:
        # Control: the external host reaches F's own address (routed by the host), and the
        # floating IP is nobody's yet.
        lab.expect_reply("external -> F by its own address", lambda: server.fetch(ext.ns, f.ip))
        assert server.fetch(ext.ns, EXT_IP) is None, "the floating IP answered before the NAT"
        lab.put_endpoint(f, nat=[{"int_ip": f.ip, "ext_ip": EXT_IP}])
        try:
            reply = lab.expect_reply(
                f"external -> F by floating IP {EXT_IP}", lambda: server.fetch(ext.ns, EXT_IP)
            )
            # F saw the external host itself (no SNAT) reaching its own address (DNAT); the
            # answer came back from the floating IP (the connection was to it).
            assert reply == Reply(server.token, ext.ip, f.ip, EXT_IP), reply
            assert lab.view.fip_dnat(EXT_IP, f.ip)
            # §5.11: a host route for the ext_ip too (programmed after the nat table).
            if not wait_until(lambda: lab.host.route_to(EXT_IP) == f.tap, CHANGE_TIMEOUT):
                lab.fail(f"no route {EXT_IP} dev {f.tap}")
            lab.expect_allowed(
                f"external pings {EXT_IP}, answered from it",
                lambda: ping_reply_from(ext.ns, EXT_IP) == EXT_IP,
            )
            # The host itself: its OUTPUT traffic to the ext_ip is DNATed too.
            reply = lab.expect_reply(
                f"host -> F by floating IP {EXT_IP}", lambda: server.fetch(lab.host.ns, EXT_IP)
            )
            assert (reply.local, reply.remote) == (f.ip, EXT_IP), reply
            # A flow through the floating IP, which leaves a conntrack entry behind.
            lab.expect_allowed(
                f"external -> {EXT_IP} UDP from port {UDP_SPORT}",
                lambda: server.udp_exchange(ext.ns, EXT_IP, UDP_SPORT) == ext.ip,
            )
            assert lab.udp_conntrack(EXT_IP, UDP_SPORT), "the UDP flow left no conntrack entry"
        finally:
            lab.put_endpoint(f)
        # §5.11: the conntrack entries of the lost ext_ip are flushed (the kernel keeps them
        # when only the DNAT rule goes). Checked before any new packet of that flow.
        if not wait_until(lambda: not lab.udp_conntrack(EXT_IP, UDP_SPORT), CHANGE_TIMEOUT):
            lab.fail(f"conntrack entry of {EXT_IP} left:\n{lab.udp_conntrack(EXT_IP, UDP_SPORT)}")
        lab.expect_denied(
            f"external -> {EXT_IP} after the mapping was removed",
            lambda: server.fetch(ext.ns, EXT_IP) is not None,
        )
        assert ping_reply_from(ext.ns, EXT_IP) is None
        # The flow that was established no longer reaches F either.
        lab.expect_denied(
            f"the UDP flow to {EXT_IP} after the mapping was removed",
            lambda: server.udp_exchange(ext.ns, EXT_IP, UDP_SPORT) is not None,
        )
        assert not lab.view.fip_dnat(EXT_IP, f.ip)
        # Only the floating IP went: F's own address is still reachable.
        lab.expect_reply(
            "external -> F by its own address, after", lambda: server.fetch(ext.ns, f.ip)
        )


def test_floating_ip_hairpin(lab: NatLab) -> None:
    """F reaches its own floating IP: DNAT to itself, and the SNAT of FIP-SNAT makes the
    packet come from the ext_ip so that F's answer goes back through the host."""
    lab.ensure_felix(DEFAULT_METADATA)
    f = lab.f
    lab.put_endpoint(f, nat=[{"int_ip": f.ip, "ext_ip": EXT_IP}])
    try:
        with EchoServer(f.ns, "0.0.0.0", SERVER_PORT) as server:
            reply = lab.expect_reply(
                f"F -> its own floating IP {EXT_IP}", lambda: server.fetch(f.ns, EXT_IP)
            )
        assert reply == Reply(server.token, EXT_IP, f.ip, EXT_IP), reply
    finally:
        lab.put_endpoint(f)


# -- masquerade --------------------------------------------------------------------------------


def test_masquerade(lab: NatLab) -> None:
    """A pool with masquerade: true: traffic from it to outside all pools leaves with the
    host's address; false: with the VM's own; between VMs of the pool: never masqueraded."""
    lab.ensure_felix(DEFAULT_METADATA)
    a, b, ext = lab.a, lab.b, lab.ext
    try:
        with EchoServer(ext.ns, ext.ip, SERVER_PORT) as outside:
            lab.put(POOL_KEY, {"cidr": POOL_CIDR, "masquerade": True})
            lab.expect_reply(
                "A -> external, masqueraded to the host's uplink address",
                lambda: outside.fetch(a.ns, ext.ip),
                peer=ext.host_ip,
            )
            with EchoServer(b.ns, b.ip, SERVER_PORT) as inside:
                reply = lab.expect_reply("A -> B in the pool", lambda: inside.fetch(a.ns, b.ip))
                assert reply.peer == a.ip, f"VM-to-VM traffic was NATed: {reply}"
            lab.put(POOL_KEY, {"cidr": POOL_CIDR, "masquerade": False})
            lab.expect_reply(
                "A -> external with its own address (masquerade off)",
                lambda: outside.fetch(a.ns, ext.ip),
                peer=a.ip,
            )
            if lab.view.masquerades():
                lab.fail("a MASQUERADE rule is left with no masquerade pool")
    finally:
        lab.etcd.v2_delete(POOL_KEY)


# -- other metadata configurations (each restarts Felix) ------------------------------------


def test_metadata_reaches_host_address_server(lab: NatLab) -> None:
    """MetadataAddr may be any host address, on any port: here the uplink's, port 8781."""
    lab.ensure_felix({"FELIX_METADATAADDR": lab.ext.host_ip, "FELIX_METADATAPORT": "8781"})
    assert lab.view.metadata_dnat() == f"{lab.ext.host_ip}:8781"
    assert lab.view.metadata_accept() == (lab.ext.host_ip, "8781")
    with EchoServer(lab.host.ns, lab.ext.host_ip, 8781) as server:
        reply = lab.expect_reply(
            f"A -> http://169.254.169.254/ (metadata at {lab.ext.host_ip}:8781)",
            lambda: server.fetch(lab.a.ns, METADATA_IP, 80),
        )
    assert reply == Reply(server.token, lab.a.ip, lab.ext.host_ip, METADATA_IP), reply


def test_metadata_none_removes_dnat_and_accept(lab: NatLab) -> None:
    """MetadataAddr=none: no DNAT, no INPUT accept, and the VM cannot reach the server that
    the default configuration sent it to."""
    lab.ensure_felix({"FELIX_METADATAADDR": "none"})
    if lab.view.metadata_dnat() or lab.view.metadata_accept():
        lab.fail(f"metadata rules left with MetadataAddr=none:\n{lab.view.dump()}")
    with EchoServer(lab.host.ns, "127.0.0.1", 8775) as server:
        # The server itself is up (the host reaches it), so only the missing NAT denies A.
        assert server.fetch(lab.host.ns, "127.0.0.1") is not None
        lab.expect_denied(
            "A -> http://169.254.169.254/ with MetadataAddr=none",
            lambda: server.fetch(lab.a.ns, METADATA_IP, 80) is not None,
        )
    # ...and Felix is otherwise at work: A still reaches B.
    assert ping_reply_from(lab.a.ns, lab.b.ip) == lab.b.ip


def test_metadata_addr_as_a_host_name_is_resolved(lab: NatLab) -> None:
    """The seed allows a domain name for MetadataAddr; Felix used to crash-loop on it (issue 12,
    item 5). "localhost" resolves to 127.0.0.1, where the metadata server listens."""
    lab.ensure_felix({"FELIX_METADATAADDR": "localhost"})
    assert lab.view.metadata_accept() == ("127.0.0.1", "8775")
    with EchoServer(lab.host.ns, "127.0.0.1", 8775) as server:
        reply = lab.expect_reply(
            "A -> http://169.254.169.254/ (MetadataAddr localhost)",
            lambda: server.fetch(lab.a.ns, METADATA_IP, 80),
        )
    assert reply == Reply(server.token, lab.a.ip, "127.0.0.1", METADATA_IP), reply


def test_metadata_addr_that_does_not_resolve_leaves_felix_running(lab: NatLab) -> None:
    """A name that does not resolve: Felix runs and programs everything else, says why there
    is no metadata NAT, and retries (it resolves again later)."""
    lab.ensure_felix({"FELIX_METADATAADDR": "no-such-host.invalid"})
    assert lab.felix is not None
    lab.felix.wait_for("MetadataAddr 'no-such-host.invalid' does not resolve", 10)
    assert lab.view.metadata_dnat() is None
    assert ping_reply_from(lab.a.ns, lab.b.ip) == lab.b.ip
    assert lab.felix.proc.poll() is None
