"""calico-dhcp-agent end to end: real etcd, real dnsmasq, busybox udhcpc in VM namespaces.

A compute-host namespace runs the agent (etcd reached through the lab's loopback relay); VMs
are namespaces joined by veths whose host ends are named as Nova names TAPs. The test writes
what the Neutron driver would (endpoints with subnet IDs, a DHCP subnet per IP version, Ready)
and checks, with real DHCP exchanges, that each VM is offered exactly its own address, router,
DNS server and host name; that a VM added later is served; that a deleted endpoint no longer is;
and, for IPv6, that dnsmasq is configured for RA + DHCPv6 and that a VM gets a router
advertisement and a DHCPv6 offer of exactly its address. Nothing is changed outside the
namespaces the test creates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from calico.lab.etcd_server import EtcdServer
from calico.lab.probes import wait_until
from calico.lab.topology import ComputeHost, Workload

pytestmark = pytest.mark.root

HOSTNAME = "dhcp-host-1"
NETWORK_ID = "5e8b0f9a-3c1d-4e2f-9a7b-0c1d2e3f4a5b"
SUBNET_V4 = "a1b2c3d4-0000-4000-8000-000000000004"
SUBNET_V6 = "a1b2c3d4-0000-4000-8000-000000000006"
DNS_V4 = "10.65.255.53"
DNS_V6 = "fd00:65::53"

# udhcpc's event script: report the lease in one parseable line, configure nothing.
UDHCPC_SCRIPT = """#!/bin/sh
if [ "$1" = bound ]; then
  echo "LEASE ip=$ip mask=$mask router=$router dns=$dns hostname=$hostname serverid=$serverid"
fi
exit 0
"""

# A minimal DHCPv6 client (no DHCPv6 client ships with busybox here): one Solicit with a DUID-LL
# made of the VM's MAC and an IA_NA, then print the addresses of the first Advertise as JSON.
DHCPV6_SOLICIT = textwrap.dedent(
    """
    import json, os, socket, struct, sys, time
    mac = bytes.fromhex(sys.argv[1].replace(":", ""))
    ifindex = socket.if_nametoindex("eth0")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    sock.bind(("::", 546))
    sock.settimeout(1.0)
    xid = os.urandom(3)
    def opt(code, data):
        return struct.pack("!HH", code, len(data)) + data
    duid = struct.pack("!HH", 3, 1) + mac
    ia_na = struct.pack("!III", 1, 0, 0)
    msg = (b"\\x01" + xid + opt(1, duid) + opt(3, ia_na) + opt(8, b"\\x00\\x00")
           + opt(6, struct.pack("!H", 23)))
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        sock.sendto(msg, ("ff02::1:2", 547, 0, ifindex))
        try:
            data, _ = sock.recvfrom(4096)
        except socket.timeout:
            continue
        if data[0] != 2 or data[1:4] != xid:
            continue
        addrs, dns = [], []
        def walk(buf):
            i = 0
            while i + 4 <= len(buf):
                code, length = struct.unpack("!HH", buf[i:i + 4])
                body = buf[i + 4:i + 4 + length]
                if code == 3:
                    walk(body[12:])
                elif code == 5:
                    addrs.append(socket.inet_ntop(socket.AF_INET6, body[:16]))
                elif code == 23:
                    dns.extend(socket.inet_ntop(socket.AF_INET6, body[j:j + 16])
                               for j in range(0, len(body), 16))
                i += 4 + length
        walk(data[4:])
        print(json.dumps({"addresses": addrs, "dns": dns}))
        sys.exit(0)
    sys.exit(1)
    """
)


def endpoint_json(vm: Workload, hostname: str | None = None) -> str:
    """What the Neutron driver writes for the VM's port (openstack.md §3)."""
    data = {
        "state": "active",
        "name": vm.tap,
        "mac": vm.mac,
        "profile_ids": [],
        "ipv4_nets": [f"{vm.ip}/32"],
        "ipv4_subnet_ids": [SUBNET_V4],
        "ipv4_gateway": "10.65.0.1",
        "ipv6_nets": [f"{vm.ip6}/128"],
        "ipv6_subnet_ids": [SUBNET_V6],
        "ipv6_gateway": "fd00:65::1",
    }
    if hostname:
        data["fqdn"] = f"{hostname}.openstacklocal"
    return json.dumps(data)


def subnet_json(cidr: str, gateway: str, dns: str) -> str:
    return json.dumps(
        {
            "network_id": NETWORK_ID,
            "cidr": cidr,
            "gateway_ip": gateway,
            "host_routes": [],
            "dns_servers": [dns],
        }
    )


class Agent:
    """calico-dhcp-agent running inside the compute-host namespace."""

    def __init__(
        self,
        host: ComputeHost,
        etcd: EtcdServer,
        work_dir: Path,
        state_dir: Path,
        log_name: str = "agent.log",
    ):
        self.host = host
        self.state_dir = state_dir
        self.log_path = work_dir / log_name
        conf = work_dir / "neutron.conf"
        conf.write_text(
            f"[DEFAULT]\nhost = {HOSTNAME}\n\n"
            f"[calico]\netcd_host = 127.0.0.1\netcd_port = {etcd.port}\n"
        )
        self._log = self.log_path.open("wb")
        argv = [
            sys.executable, "-m", "calico.dhcp.agent", "--config-file", str(conf),
            "--state-dir", str(self.state_dir), "--log-level", "DEBUG", "--log-dhcp",
        ]  # fmt: skip
        self.proc = host.ns.popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def hosts_file(self) -> str:
        path = self.state_dir / "hosts"
        return path.read_text() if path.exists() else ""

    def dnsmasqs(self) -> dict[int, list[str]]:
        """PID -> command line of each dnsmasq process in the host namespace."""
        pids = self.host.run(["ip", "netns", "pids", self.host.name]).stdout.split()
        found = {}
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq":
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                    found[int(pid)] = raw.decode().split("\0")[:-1]
            except FileNotFoundError:
                continue
        return found

    def kill(self) -> None:
        """SIGKILL by PID: a crash that no clean-up code sees."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self) -> int:
        """SIGTERM by PID, as a service manager would; the exit status."""
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


@pytest.fixture
def host(etcd: EtcdServer) -> Iterator[ComputeHost]:
    with ComputeHost(etcd=etcd, hostname=HOSTNAME, name_prefix="dhcph") as host:
        yield host


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """The agent's state directory, outside pytest's private (0700) tree: dnsmasq re-reads its
    hosts file after dropping root privileges."""
    path = Path(tempfile.mkdtemp(prefix="calico-dhcp-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def add_vm(host: ComputeHost, n: int) -> Workload:
    """A VM whose eth0 starts without an IPv4 address: it must get one by DHCP."""
    vm = host.add_workload(f"10.65.0.{n}", f"fd00:65::{n}", label=f"dhcpvm{n}")
    vm.run(["ip", "-4", "addr", "flush", "dev", "eth0"])
    return vm


def udhcpc(vm: Workload, script: Path, tries: int = 3) -> dict[str, str] | None:
    """One udhcpc run in the VM (about `tries` seconds): the lease's fields, or None."""
    proc = vm.run(
        ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", str(tries), "-T", "1",
         "-A", "1", "-s", str(script)],
        check=False,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("LEASE "):
            return dict(field.split("=", 1) for field in line.split()[1:])
    return None


def lease_within(vm: Workload, script: Path, timeout: float) -> dict[str, str] | None:
    """Retry udhcpc until a lease comes (the agent may still be restarting dnsmasq)."""
    deadline = time.monotonic() + timeout
    while True:
        lease = udhcpc(vm, script)
        if lease is not None or time.monotonic() >= deadline:
            return lease


def dhcpv6_offer(vm: Workload, timeout: float) -> dict[str, list[str]] | None:
    proc = vm.run([sys.executable, "-c", DHCPV6_SOLICIT, vm.mac, str(timeout)], check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_dhcp_agent_serves_routed_taps(
    etcd: EtcdServer, host: ComputeHost, state_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)

    vm1, vm2 = add_vm(host, 11), add_vm(host, 12)
    etcd.v2_put(
        f"/calico/dhcp/v1/subnet/{SUBNET_V4}", subnet_json("10.65.0.0/24", "10.65.0.1", DNS_V4)
    )
    etcd.v2_put(
        f"/calico/dhcp/v1/subnet/{SUBNET_V6}", subnet_json("fd00:65::/64", "fd00:65::1", DNS_V6)
    )
    etcd.v2_put(vm1.endpoint_key(), endpoint_json(vm1, "vm-one"))
    etcd.v2_put(vm2.endpoint_key(), endpoint_json(vm2))
    # Another host's endpoint: must not be served here.
    etcd.v2_put(vm2.endpoint_key("other-host"), endpoint_json(vm2))
    etcd.v2_put("/calico/v1/Ready", "true")

    agent = Agent(host, etcd, tmp_path, state_dir)
    try:
        # IPv4: each VM gets exactly its address, the gateway as router, the subnet's DNS.
        lease1 = lease_within(vm1, script, 30)
        assert lease1 is not None, agent.log()
        assert lease1 == {
            "ip": "10.65.0.11",
            "mask": "24",
            "router": "10.65.0.1",
            "dns": DNS_V4,
            "hostname": "vm-one",
            "serverid": "10.65.0.1",
        }
        lease2 = lease_within(vm2, script, 10)
        assert lease2 is not None, agent.log()
        assert (lease2["ip"], lease2["router"], lease2["hostname"]) == (
            "10.65.0.12",
            "10.65.0.1",
            "host-10-65-0-12",
        )

        # The DHCP interface: gateway addresses, no on-link subnet routes.
        dev = "ns-" + NETWORK_ID[:11]
        addrs = host.run(["ip", "addr", "show", "dev", dev]).stdout
        assert "10.65.0.1/24" in addrs and "fd00:65::1/64" in addrs
        assert "10.65.0.0/24" not in host.routes()
        assert "fd00:65::/64" not in host.routes(v6=True)

        # IPv6: dnsmasq is set up for RA and stateful DHCPv6 off-link ...
        (cmdline,) = agent.dnsmasqs().values()
        assert "--enable-ra" in cmdline
        assert f"--dhcp-range=set:subnet-{SUBNET_V6},fd00:65::,static,off-link,64,86400s" in (
            cmdline
        )
        assert f"--bridge-interface={dev},{','.join(sorted((vm1.tap, vm2.tap)))}" in cmdline
        # ... the VM learns its router by RA (bouncing eth0 makes it solicit one now) ...
        vm1.run(["ip", "link", "set", "eth0", "down"])
        vm1.run(["ip", "link", "set", "eth0", "up"])
        assert wait_until(
            lambda: "proto ra" in vm1.run(["ip", "-6", "route", "show", "default"]).stdout,
            timeout=30,
            interval=0.5,
        ), vm1.run(["ip", "-6", "route"]).stdout + agent.log()
        # ... and DHCPv6 offers exactly its address and the subnet's DNS server.
        offer = dhcpv6_offer(vm1, 15)
        assert offer == {"addresses": ["fd00:65::11"], "dns": [DNS_V6]}, agent.log()

        # A VM added later is served too.
        vm3 = add_vm(host, 13)
        etcd.v2_put(vm3.endpoint_key(), endpoint_json(vm3))
        lease3 = lease_within(vm3, script, 30)
        assert lease3 is not None, agent.log()
        assert lease3["ip"] == "10.65.0.13"

        # A changed DNS server reaches the VMs through a reload (SIGHUP), not a restart.
        (pid,) = agent.dnsmasqs()
        etcd.v2_put(
            f"/calico/dhcp/v1/subnet/{SUBNET_V4}",
            subnet_json("10.65.0.0/24", "10.65.0.1", "10.65.255.54"),
        )
        assert wait_until(
            lambda: (udhcpc(vm3, script) or {}).get("dns") == "10.65.255.54", timeout=20
        ), agent.log()
        assert list(agent.dnsmasqs()) == [pid]

        # A deleted endpoint is no longer served (while the others still are).
        etcd.v2_delete(vm2.endpoint_key())
        assert wait_until(
            lambda: (
                [f"--interface={vm2.tap}" in argv for argv in agent.dnsmasqs().values()] == [False]
            ),
            timeout=15,
        ), agent.log()
        assert vm2.mac not in agent.hosts_file()
        lease1_again = lease_within(vm1, script, 15)
        assert lease1_again is not None and lease1_again["ip"] == "10.65.0.11"
        assert udhcpc(vm2, script, tries=4) is None, agent.log()

        # Stopping the agent stops its dnsmasq and removes its interface.
        assert agent.stop() == 0, agent.log()
        assert agent.dnsmasqs() == {}
        assert host.run(["ip", "link", "show", "dev", dev], check=False).returncode != 0
    finally:
        if agent.proc.poll() is None:
            agent.stop()


def _ready(etcd: EtcdServer) -> None:
    etcd.v2_put(
        f"/calico/dhcp/v1/subnet/{SUBNET_V4}", subnet_json("10.65.0.0/24", "10.65.0.1", DNS_V4)
    )
    etcd.v2_put(
        f"/calico/dhcp/v1/subnet/{SUBNET_V6}", subnet_json("fd00:65::/64", "fd00:65::1", DNS_V6)
    )
    etcd.v2_put("/calico/v1/Ready", "true")


def _udhcpc_script(tmp_path: Path) -> Path:
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    return script


def test_hostile_objects_next_to_good_ones(
    etcd: EtcdServer, host: ComputeHost, state_dir: Path, tmp_path: Path
) -> None:
    """Issue 12 with real dnsmasq: hostile objects in etcd are each refused (and logged once
    with their key) while the good VMs on the same host keep getting exactly their leases.

    Before the fix, the /48 IPv6 subnet alone made dnsmasq refuse its command line (no VM of
    the host got an address), the scoped DNS server injected an option line, and a VM named
    "ignore" was never answered.
    """
    script = _udhcpc_script(tmp_path)
    vm1, vm2 = add_vm(host, 11), add_vm(host, 12)
    _ready(etcd)
    etcd.v2_put(vm1.endpoint_key(), endpoint_json(vm1, "vm-one"))
    # A tenant's own name that dnsmasq would read as "ignore this host": the default name.
    etcd.v2_put(vm2.endpoint_key(), endpoint_json(vm2, "ignore"))
    hostile = {
        # A key segment dnsmasq must never see (BadKey), claiming vm2's MAC for another IP.
        f"/calico/v1/host/{HOSTNAME}/workload/openstack/vm,evil=1/endpoint/p": json.dumps(
            {**json.loads(endpoint_json(vm2)), "ipv4_nets": ["10.65.0.66/32"]}
        ),
        # A scoped "address" whose scope carries an option line for the good subnet.
        "/calico/dhcp/v1/subnet/hostile-dns": json.dumps(
            {
                "network_id": NETWORK_ID,
                "cidr": "fd00:66::/64",
                "gateway_ip": "fd00:66::1",
                "dns_servers": [f"fd00::53%x]\ntag:subnet-{SUBNET_V4},option:dns-server,6.6.6.6"],
            }
        ),
        # A prefix dnsmasq refuses on its command line.
        "/calico/dhcp/v1/subnet/hostile-prefix": json.dumps(
            {"network_id": NETWORK_ID, "cidr": "fd00:67::/48", "gateway_ip": "fd00:67::1"}
        ),
        # An fqdn with an injected host entry.
        f"/calico/v1/host/{HOSTNAME}/workload/openstack/vm-x/endpoint/px": json.dumps(
            {
                **json.loads(endpoint_json(vm2)),
                "mac": "02:00:00:00:00:77",
                "ipv4_nets": ["10.65.0.77/32"],
                "fqdn": f"x\n{vm2.mac},10.65.0.66,stolen",
            }
        ),
    }
    for key, value in hostile.items():
        etcd.v2_put(key, value)

    agent = Agent(host, etcd, tmp_path, state_dir)
    try:
        lease1 = lease_within(vm1, script, 30)
        assert lease1 is not None, agent.log()
        assert lease1 == {
            "ip": "10.65.0.11",
            "mask": "24",
            "router": "10.65.0.1",
            "dns": DNS_V4,
            "hostname": "vm-one",
            "serverid": "10.65.0.1",
        }
        lease2 = lease_within(vm2, script, 10)
        assert lease2 is not None, agent.log()
        assert (lease2["ip"], lease2["dns"], lease2["hostname"]) == (
            "10.65.0.12",
            DNS_V4,
            "host-10-65-0-12",
        )
        # Exactly the two intended entries and option lines; nothing of the hostile values.
        assert sorted(agent.hosts_file().splitlines()) == sorted(
            [
                f"{vm1.mac},10.65.0.11,[fd00:65::11],vm-one",
                f"{vm2.mac},10.65.0.12,[fd00:65::12],host-10-65-0-12",
            ]
        )
        options = (state_dir / "opts").read_text()
        assert "6.6.6.6" not in options and "hostile" not in options
        (cmdline,) = agent.dnsmasqs().values()
        assert not [arg for arg in cmdline if "hostile" in arg or "fd00:67" in arg]
        # Each hostile object is logged once, with its key (quoted: newlines escaped).
        log = agent.log()
        for key in hostile:
            assert log.count(repr(key)[:60]) == 1, (key, log)
        assert agent.proc.poll() is None
        assert agent.stop() == 0, agent.log()
    finally:
        if agent.proc.poll() is None:
            agent.stop()


# udhcpc running the whole time in a VM, as a VM's DHCP client does: it configures its lease
# on eth0 (so it can renew by unicast) and records every event.
UDHCPC_RENEWING_SCRIPT = """#!/bin/sh
echo "$1 ip=$ip" >> {events}
case "$1" in
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
  deconfig) ip -4 addr flush dev "$interface" ;;
esac
exit 0
"""


def _dnsmasq_parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_sigkilled_agent_leaves_no_stale_dnsmasq(
    etcd: EtcdServer, host: ComputeHost, state_dir: Path, tmp_path: Path
) -> None:
    """Issue 19 with real dnsmasq: after the agent is SIGKILLed its dnsmasq goes too; the
    restarted agent runs exactly one dnsmasq, which forgets an endpoint deleted after the
    restart and ACKs the renewal of a VM that keeps its address. Should dnsmasq outlive the
    agent anyway (here: its keeper killed too, as on a platform without a parent-death signal),
    it is serving stale entries, and the next start stops it before starting its own."""
    script = _udhcpc_script(tmp_path)
    vm1, vm2 = add_vm(host, 11), add_vm(host, 12)
    host.add_routes(vm1)  # what Felix does: the VM's renewals are answered by unicast
    _ready(etcd)
    etcd.v2_put(vm1.endpoint_key(), endpoint_json(vm1, "vm-one"))
    etcd.v2_put(vm2.endpoint_key(), endpoint_json(vm2))

    events = tmp_path / "vm1-events"
    renewing = tmp_path / "udhcpc-renewing.sh"
    renewing.write_text(UDHCPC_RENEWING_SCRIPT.format(events=events))
    renewing.chmod(0o755)

    def vm1_events() -> list[str]:
        return events.read_text().splitlines() if events.exists() else []

    agents = [Agent(host, etcd, tmp_path, state_dir, "agent-1.log")]
    try:
        client = vm1.ns.popen(
            ["busybox", "udhcpc", "-i", "eth0", "-f", "-t", "3", "-T", "1", "-A", "1",
             "-s", str(renewing)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert wait_until(lambda: "bound ip=10.65.0.11" in vm1_events(), 30), agents[0].log()
        assert lease_within(vm2, script, 10) is not None, agents[0].log()
        (first_dnsmasq,) = agents[0].dnsmasqs()

        # 1. SIGKILL: the agent's dnsmasq dies with it.
        agents[0].kill()
        assert wait_until(lambda: agents[0].dnsmasqs() == {}, 10), agents[0].log()

        # 2. Restart: exactly one dnsmasq serves the host.
        agents.append(Agent(host, etcd, tmp_path, state_dir, "agent-2.log"))
        assert lease_within(vm2, script, 30) is not None, agents[1].log()
        (second_dnsmasq,) = agents[1].dnsmasqs()
        assert second_dnsmasq != first_dnsmasq

        # An endpoint deleted after the restart gets no lease any more ...
        etcd.v2_delete(vm2.endpoint_key())
        assert wait_until(lambda: vm2.mac not in agents[1].hosts_file(), 15), agents[1].log()
        assert wait_until(lambda: len(agents[1].dnsmasqs()) == 1, 10)
        assert udhcpc(vm2, script, tries=4) is None, agents[1].log()
        # ... and a VM renewing keeps its address (its lease was in the old dnsmasq's memory).
        client.send_signal(signal.SIGUSR1)  # udhcpc: renew now
        assert wait_until(lambda: "renew ip=10.65.0.11" in vm1_events(), 15), (
            vm1_events(),
            agents[1].log(),
        )
        assert not [e for e in vm1_events() if e.startswith(("nak", "deconfig ip=1"))]
        assert len(agents[1].dnsmasqs()) == 1

        # 3. dnsmasq outlives the agent (keeper and agent both SIGKILLed): stale, it still
        # answers vm2 ... until the next start stops it.
        etcd.v2_put(vm2.endpoint_key(), endpoint_json(vm2))
        assert wait_until(lambda: vm2.mac in agents[1].hosts_file(), 15), agents[1].log()
        (orphan,) = agents[1].dnsmasqs()
        os.kill(_dnsmasq_parent(orphan), signal.SIGKILL)  # the keeper
        agents[1].kill()
        etcd.v2_delete(vm2.endpoint_key())
        assert list(agents[1].dnsmasqs()) == [orphan]
        assert lease_within(vm2, script, 10) is not None  # the stale orphan's answer

        agents.append(Agent(host, etcd, tmp_path, state_dir, "agent-3.log"))
        assert wait_until(
            lambda: f"Stopping dnsmasq PID {orphan} left by an earlier run" in agents[2].log(), 20
        ), agents[2].log()
        assert wait_until(lambda: len(agents[2].dnsmasqs()) == 1, 15), agents[2].log()
        assert orphan not in agents[2].dnsmasqs()
        assert udhcpc(vm2, script, tries=4) is None, agents[2].log()
        client.send_signal(signal.SIGUSR1)
        assert wait_until(lambda: vm1_events().count("renew ip=10.65.0.11") == 2, 15), (
            vm1_events(),
            agents[2].log(),
        )
        assert len(agents[2].dnsmasqs()) == 1
        assert agents[2].stop() == 0, agents[2].log()
        assert agents[2].dnsmasqs() == {}
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.stop()
        # Any dnsmasq still in the host (only a failed test leaves one) goes with the namespace.


def test_a_killed_keeper_is_replaced_by_exactly_one_dnsmasq(
    etcd: EtcdServer, host: ComputeHost, state_dir: Path, tmp_path: Path
) -> None:
    """The keeper alone SIGKILLed (the agent lives on): its dnsmasq goes, the agent starts
    exactly one new one, and it serves."""
    script = _udhcpc_script(tmp_path)
    vm = add_vm(host, 12)
    _ready(etcd)
    etcd.v2_put(vm.endpoint_key(), endpoint_json(vm))
    agent = Agent(host, etcd, tmp_path, state_dir, "agent.log")
    try:
        assert lease_within(vm, script, 30) is not None, agent.log()
        (first,) = agent.dnsmasqs()
        os.kill(_dnsmasq_parent(first), signal.SIGKILL)
        assert wait_until(
            lambda: first not in agent.dnsmasqs() and len(agent.dnsmasqs()) == 1, 20
        ), agent.log()
        time.sleep(2)  # nothing else starts meanwhile
        assert len(agent.dnsmasqs()) == 1, agent.log()
        assert lease_within(vm, script, 10) is not None, agent.log()
    finally:
        agent.stop()
    assert agent.dnsmasqs() == {}


def test_kills_at_any_point_of_start_up_leave_one_dnsmasq(
    etcd: EtcdServer, host: ComputeHost, state_dir: Path, tmp_path: Path
) -> None:
    """Four agents SIGKILLed at different points of their start (before, while and after
    starting dnsmasq), then a fifth: exactly one dnsmasq; none once the host's last endpoint
    is deleted (and no lease), and none once the agent stops."""
    script = _udhcpc_script(tmp_path)
    vm = add_vm(host, 12)
    _ready(etcd)
    etcd.v2_put(vm.endpoint_key(), endpoint_json(vm))
    agents: list[Agent] = []
    try:
        for i in range(4):
            agents.append(Agent(host, etcd, tmp_path, state_dir, f"killed-{i}.log"))
            time.sleep(0.7 + 0.4 * i)
            agents[-1].kill()
        last = Agent(host, etcd, tmp_path, state_dir, "last.log")
        agents.append(last)
        assert lease_within(vm, script, 30) is not None, last.log()
        time.sleep(6)  # longer than a keeper's stop timeout (5 s): any leftover would show
        assert len(last.dnsmasqs()) == 1, (last.dnsmasqs(), last.log())
        etcd.v2_delete(vm.endpoint_key())  # the host's last endpoint: dnsmasq stops
        assert wait_until(lambda: last.dnsmasqs() == {}, 15), last.log()
        assert udhcpc(vm, script, tries=4) is None, last.log()
        assert last.stop() == 0
        assert last.dnsmasqs() == {}
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.stop()
