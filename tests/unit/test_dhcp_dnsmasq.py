"""The pure part of the DHCP agent: endpoints + subnets -> dnsmasq arguments and files, the
start / restart / reload decision, and the process handling (with a stand-in dnsmasq)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from calico.dhcp.dnsmasq import (
    EMPTY_CONFIG,
    DhcpInterface,
    DnsmasqConfig,
    DnsmasqFiles,
    build_config,
    command_line,
    device_name,
)
from calico.dhcp.dnsmasq_process import Action, Dnsmasq, is_our_dnsmasq, plan, stop_leftovers
from calico.dhcp.model import DhcpEndpoint, DhcpSubnet, HostRoute

NET = "5e8b0f9a-3c1d-4e2f-9a7b-0c1d2e3f4a5b"
NET2 = "77777777-aaaa-bbbb-cccc-000000000000"
DEV = "ns-5e8b0f9a-3c"
V4 = DhcpSubnet("s4", NET, "10.65.0.0/24", "10.65.0.1", ("8.8.8.8",))
V6 = DhcpSubnet("s6", NET, "fd00:65::/64", "fd00:65::1", ("fd00:65::53",))
SUBNETS = {"s4": V4, "s6": V6}


def ep(n: int, **kw: object) -> DhcpEndpoint:
    fields: dict[str, object] = {
        "endpoint_id": f"port-{n}",
        "name": f"tap0000000{n}-aa",
        "mac": f"02:00:00:00:00:0{n}",
        "ipv4_addrs": (f"10.65.0.{n}",),
        "ipv6_addrs": (f"fd00:65::{n}",),
        "ipv4_subnet_ids": ("s4",),
        "ipv6_subnet_ids": ("s6",),
    }
    fields.update(kw)
    return DhcpEndpoint(**fields)  # type: ignore[arg-type]


def test_device_name_is_neutrons() -> None:
    assert device_name(NET) == DEV
    assert len(DEV) <= 15


def test_build_config_dual_stack() -> None:
    config = build_config([ep(3), ep(2, fqdn="web.example")], SUBNETS)
    assert config == DnsmasqConfig(
        interfaces=(
            DhcpInterface(
                DEV, ("10.65.0.1/24", "fd00:65::1/64"), ("tap00000002-aa", "tap00000003-aa")
            ),
        ),
        ranges=(
            "set:subnet-s4,10.65.0.0,static,255.255.255.0,86400s",
            "set:subnet-s6,fd00:65::,static,off-link,64,86400s",
        ),
        hosts=(
            "02:00:00:00:00:02,10.65.0.2,[fd00:65::2],web",
            "02:00:00:00:00:03,10.65.0.3,[fd00:65::3],host-10-65-0-3",
        ),
        options=(
            "tag:subnet-s4,option:router,10.65.0.1",
            "tag:subnet-s4,option:dns-server,8.8.8.8",
            "tag:subnet-s6,option6:dns-server,[fd00:65::53]",
        ),
        enable_ra=True,
    )


def test_build_config_ipv4_only_with_host_routes_and_lease() -> None:
    subnet = DhcpSubnet(
        "s4", NET, "10.65.0.0/16", "10.65.0.1", (), (HostRoute("192.168.0.0/24", "10.65.0.9"),)
    )
    config = build_config([ep(2, ipv6_addrs=(), ipv6_subnet_ids=())], {"s4": subnet}, 600)
    assert config.ranges == ("set:subnet-s4,10.65.0.0,static,255.255.0.0,600s",)
    assert config.options == (
        "tag:subnet-s4,option:router,10.65.0.1",
        "tag:subnet-s4,option:classless-static-route,192.168.0.0/24,10.65.0.9,0.0.0.0/0,10.65.0.1",
    )
    assert config.hosts == ("02:00:00:00:00:02,10.65.0.2,host-10-65-0-2",)
    assert not config.enable_ra


def test_infinite_lease() -> None:
    config = build_config([ep(2)], SUBNETS, -1)
    assert config.ranges == (
        "set:subnet-s4,10.65.0.0,static,255.255.255.0,infinite",
        "set:subnet-s6,fd00:65::,static,off-link,64,infinite",
    )


def test_nothing_to_serve() -> None:
    assert build_config([], SUBNETS).empty
    # Unknown subnet, subnet without a gateway, address outside the named subnet.
    assert build_config([ep(2, ipv4_subnet_ids=("zz",), ipv6_subnet_ids=("zz",))], SUBNETS).empty
    no_gw = {"s4": DhcpSubnet("s4", NET, "10.65.0.0/24", None)}
    assert build_config([ep(2, ipv6_addrs=(), ipv6_subnet_ids=())], no_gw).empty
    assert build_config([ep(2, ipv4_addrs=("10.66.0.2",), ipv6_addrs=())], SUBNETS).empty


def test_subnet_found_by_address_without_ids() -> None:
    config = build_config([ep(2, ipv4_subnet_ids=(), ipv6_subnet_ids=())], SUBNETS)
    assert config.hosts == ("02:00:00:00:00:02,10.65.0.2,[fd00:65::2],host-10-65-0-2",)


def test_two_networks_get_two_interfaces() -> None:
    other = DhcpSubnet("t4", NET2, "10.66.0.0/24", "10.66.0.1")
    subnets = {"s4": V4, "t4": other}
    config = build_config(
        [
            ep(2, ipv6_addrs=(), ipv6_subnet_ids=()),
            ep(3, ipv4_addrs=("10.66.0.3",), ipv4_subnet_ids=("t4",), ipv6_addrs=()),
        ],
        subnets,
    )
    assert [(i.name, i.addresses, i.taps) for i in config.interfaces] == [
        (DEV, ("10.65.0.1/24",), ("tap00000002-aa",)),
        ("ns-77777777-aa", ("10.66.0.1/24",), ("tap00000003-aa",)),
    ]


def test_one_bad_endpoint_is_left_out_and_the_others_served() -> None:
    """Issue 12: an endpoint that cannot be rendered safely (here: values that bypassed the
    model's validation) is refused with its key; every other endpoint is still served."""
    good = build_config([ep(2)], SUBNETS)
    for bad in (
        ep(3, mac="02:00:00:00:00:03\n02:00:00:00:00:09", key="/k/mac"),
        ep(3, fqdn=None, ipv4_addrs=("10.65.0.3\n",), key="/k/ip"),
        ep(3, ipv6_addrs=("fd00:65::3%x,y",), key="/k/scope"),
        ep(3, name="tap3,tap4", key="/k/name"),
        ep(3, ipv4_addrs=("not an address",), key="/k/raises"),
        ep(
            3,
            ipv6_addrs=tuple(f"fd00:65::1234:5678:9abc:{i:x}" for i in range(3, 60)),
            ipv6_subnet_ids=(),
            ipv4_subnet_ids=(),
            key="/k/long",
        ),
    ):
        config = build_config([ep(2), bad], SUBNETS)
        assert (config.interfaces, config.hosts, config.ranges) == (
            good.interfaces,
            good.hosts,
            good.ranges,
        ), bad
        assert [r.key for r in config.refused] == [bad.key]
    long = build_config([ep(2), bad], SUBNETS).refused[0].reason
    assert "dnsmasq reads at most" in long


def test_one_bad_subnet_is_left_out_and_the_others_served() -> None:
    v6_short = DhcpSubnet("s6", NET, "fd00:65::/48", "fd00:65::1", ())  # dnsmasq would refuse
    for bad in (
        v6_short,
        DhcpSubnet("s6", NET, "fd00:65::/64", "fd00:65::1%x", ()),
        DhcpSubnet("s6", NET, "fd00:65::/64", "fd00:65::1", ("fd00::53\ntag:x",)),
        DhcpSubnet("s6", NET, "garbage", "fd00:65::1"),  # .network raises
        DhcpSubnet("s6,x", NET, "fd00:65::/64", "fd00:65::1"),
    ):
        config = build_config([ep(2)], {"s4": V4, "s6": bad})
        assert [r.key for r in config.refused] == [bad.key], bad
        assert config.hosts == ("02:00:00:00:00:02,10.65.0.2,host-10-65-0-2",)
        assert config.ranges == ("set:subnet-s4,10.65.0.0,static,255.255.255.0,86400s",)
        assert not config.enable_ra


def test_conflicts_are_resolved_the_same_way_and_name_both_keys() -> None:
    first = ep(2, key="/calico/v1/host/h/workload/o/a/endpoint/e2")
    same_mac = ep(3, mac=first.mac, key="/calico/v1/host/h/workload/o/b/endpoint/e3")
    same_ip = ep(4, ipv4_addrs=first.ipv4_addrs, key="/calico/v1/host/h/workload/o/c/endpoint/e4")
    for order in ([first, same_mac, same_ip], [same_ip, same_mac, first]):
        config = build_config(order, SUBNETS)
        assert config.hosts == ("02:00:00:00:00:02,10.65.0.2,[fd00:65::2],host-10-65-0-2",)
        assert [(r.key, first.key in r.reason) for r in config.refused] == [
            (same_mac.key, True),
            (same_ip.key, True),
        ]
    # One TAP on two networks.
    other = DhcpSubnet("t4", NET2, "10.66.0.0/24", "10.66.0.1")
    twin = ep(5, name=first.name, ipv4_addrs=("10.66.0.5",), ipv4_subnet_ids=("t4",),
              ipv6_addrs=(), ipv6_subnet_ids=(), key="/k/twin")  # fmt: skip
    config = build_config([first, twin], {**SUBNETS, "t4": other})
    assert [r.key for r in config.refused] == ["/k/twin"]
    assert [i.name for i in config.interfaces] == [DEV]


def test_networks_sharing_a_device_name() -> None:
    """Two network IDs with the same first 11 characters: the second (by subnet ID) is refused
    rather than served on the first one's device."""
    twin_net = NET[:11] + "-different"
    twin = DhcpSubnet("t4", twin_net, "10.66.0.0/24", "10.66.0.1")
    config = build_config(
        [ep(2), ep(3, ipv4_addrs=("10.66.0.3",), ipv4_subnet_ids=("t4",), ipv6_addrs=())],
        {**SUBNETS, "t4": twin},
    )
    assert [r.key for r in config.refused] == [twin.key]
    assert "would share the DHCP interface" in config.refused[0].reason
    assert [h.split(",")[0] for h in config.hosts] == ["02:00:00:00:00:02"]


def test_skipped_devices_leave_only_their_networks_out() -> None:
    other = DhcpSubnet("t4", NET2, "10.66.0.0/24", "10.66.0.1")
    endpoints = [ep(2), ep(3, ipv4_addrs=("10.66.0.3",), ipv4_subnet_ids=("t4",), ipv6_addrs=())]
    config = build_config(endpoints, {**SUBNETS, "t4": other}, skip_devices=frozenset({DEV}))
    assert [i.name for i in config.interfaces] == ["ns-77777777-aa"]
    assert {r.key for r in config.refused} == {V4.key, V6.key}


def test_command_line() -> None:
    config = build_config([ep(2), ep(3)], SUBNETS)
    files = DnsmasqFiles(Path("/state"))
    argv = command_line(config, files, "/usr/sbin/dnsmasq", log_dhcp=True)
    assert argv[0] == "/usr/sbin/dnsmasq"
    for arg in (
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--pid-file=/state/dnsmasq.pid",
        "--leasefile-ro",
        "--dhcp-authoritative",
        "--bind-dynamic",
        f"--interface={DEV}",
        "--interface=tap00000002-aa",
        "--interface=tap00000003-aa",
        f"--bridge-interface={DEV},tap00000002-aa,tap00000003-aa",
        "--dhcp-range=set:subnet-s4,10.65.0.0,static,255.255.255.0,86400s",
        "--dhcp-range=set:subnet-s6,fd00:65::,static,off-link,64,86400s",
        "--dhcp-hostsfile=/state/hosts",
        "--dhcp-optsfile=/state/opts",
        "--enable-ra",
        "--log-dhcp",
    ):
        assert arg in argv
    v4_only = build_config([ep(2, ipv6_addrs=(), ipv6_subnet_ids=())], {"s4": V4})
    assert "--enable-ra" not in command_line(v4_only, files)
    assert "--log-dhcp" not in command_line(v4_only, files)


def test_plan() -> None:
    one = build_config([ep(2)], SUBNETS)
    two = build_config([ep(2), ep(3)], SUBNETS)
    assert plan(None, EMPTY_CONFIG) is Action.NONE
    assert plan(None, one) is Action.START
    assert plan(one, one) is Action.NONE
    assert plan(one, EMPTY_CONFIG) is Action.STOP
    assert plan(one, two) is Action.RESTART  # a new TAP: command line changes
    assert plan(two, one) is Action.RESTART
    # Same TAPs and ranges: options or new host entries only need a SIGHUP ...
    new_dns = {"s4": DhcpSubnet("s4", NET, "10.65.0.0/24", "10.65.0.1", ("1.1.1.1",)), "s6": V6}
    assert plan(one, build_config([ep(2)], new_dns)) is Action.RELOAD
    renamed = build_config([ep(2, fqdn="new")], SUBNETS)
    # ... but a removed or changed host entry restarts (dnsmasq must forget its lease).
    assert plan(one, renamed) is Action.RESTART
    added = DnsmasqConfig(one.interfaces, one.ranges, (*one.hosts, "x"), one.options, True)
    assert plan(one, added) is Action.RELOAD
    assert plan(added, one) is Action.RESTART


FAKE_DNSMASQ = """#!/bin/sh
# A stand-in dnsmasq: records its start (PID, arguments) and each SIGHUP, and writes its PID
# file as dnsmasq does.
echo "$$ $*" >> "{dir}/starts"
for arg; do case "$arg" in --pid-file=*) echo $$ > "${{arg#--pid-file=}}";; esac; done
trap 'echo $$ >> "{dir}/hups"' HUP
trap 'exit 0' TERM
while :; do sleep 0.05; done
"""


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def fake_dnsmasq(tmp_path: Path) -> str:
    fake = tmp_path / "fake-dnsmasq"
    fake.write_text(FAKE_DNSMASQ.format(dir=tmp_path))
    fake.chmod(0o755)
    return str(fake)


def started_pids(tmp_path: Path) -> list[int]:
    """The stand-in dnsmasq's PIDs, in start order."""
    return [int(line.split()[0]) for line in lines(tmp_path / "starts")]


def test_process_start_reload_restart_stop(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    dnsmasq = Dnsmasq(state, fake_dnsmasq(tmp_path))
    try:
        one = build_config([ep(2)], SUBNETS)
        assert dnsmasq.apply(one) is Action.START
        assert wait_for(lambda: len(started_pids(tmp_path)) == 1)
        (first_pid,) = started_pids(tmp_path)
        assert lines(tmp_path / "starts")[0].startswith(f"{first_pid} --keep-in-foreground")
        assert wait_for(lambda: lines(state / "dnsmasq.pid") == [str(first_pid)])
        assert lines(state / "hosts") == list(one.hosts)
        assert lines(state / "opts") == list(one.options)
        assert (state / "hosts").stat().st_mode & 0o777 == 0o644
        # dnsmasq runs under its keeper, the agent's child (calico.dhcp.keeper).
        assert _parent(first_pid) == dnsmasq.pid

        assert dnsmasq.apply(one) is Action.NONE
        added = DnsmasqConfig(one.interfaces, one.ranges, (*one.hosts, "h"), one.options, True)
        assert dnsmasq.apply(added) is Action.RELOAD
        # The keeper passes SIGHUP on to dnsmasq.
        assert wait_for(lambda: lines(tmp_path / "hups") == [str(first_pid)])
        assert lines(state / "hosts")[-1] == "h"
        assert started_pids(tmp_path) == [first_pid]

        two = build_config([ep(2), ep(3)], SUBNETS)
        assert dnsmasq.apply(two) is Action.RESTART
        assert wait_for(lambda: len(started_pids(tmp_path)) == 2)
        assert not _running(first_pid)

        # A dnsmasq that dies is started again on the next apply, even with nothing new.
        second_pid = started_pids(tmp_path)[1]
        os.kill(second_pid, signal.SIGKILL)
        assert wait_for(lambda: not dnsmasq.alive())  # its keeper exits with it
        assert dnsmasq.apply(two) is Action.START
        assert wait_for(lambda: len(started_pids(tmp_path)) == 3)
        assert dnsmasq.alive()

        last_pid = started_pids(tmp_path)[2]
        assert dnsmasq.apply(EMPTY_CONFIG) is Action.STOP
        assert dnsmasq.pid is None and not _running(last_pid)
        assert not (state / "dnsmasq.pid").exists()
    finally:
        dnsmasq.stop()


# What an agent does, in a process of its own that the test can SIGKILL.
AGENT = """
import sys
from pathlib import Path
from calico.dhcp.dnsmasq import DnsmasqConfig, DhcpInterface
from calico.dhcp.dnsmasq_process import Dnsmasq
config = DnsmasqConfig(interfaces=(DhcpInterface("ns-x", ("10.65.0.1/24",), ("tap1",)),))
dnsmasq = Dnsmasq(Path(sys.argv[1]), sys.argv[2])
dnsmasq.apply(config)
print(dnsmasq.pid, flush=True)
sys.stdin.read()
"""


def test_dnsmasq_dies_with_a_sigkilled_agent(tmp_path: Path) -> None:
    """Issue 19: nothing keeps serving after the agent is killed (the keeper's parent-death
    signal; dnsmasq's own would be cleared when it drops root)."""
    state = tmp_path / "state"
    state.mkdir()
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(state), fake_dnsmasq(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        keeper_pid = int(agent.stdout.readline())
        assert wait_for(lambda: len(started_pids(tmp_path)) == 1)
        (dnsmasq_pid,) = started_pids(tmp_path)
        assert _parent(dnsmasq_pid) == keeper_pid
        agent.kill()
        agent.wait()
        assert wait_for(lambda: not _running(dnsmasq_pid), timeout=10)
        assert wait_for(lambda: not _running(keeper_pid), timeout=10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        for pid in started_pids(tmp_path):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_keeper_refuses_to_start_for_a_dead_parent(tmp_path: Path) -> None:
    """A keeper whose agent died before it could set its parent-death signal starts nothing."""
    proc = subprocess.run(
        [sys.executable, "-m", "calico.dhcp.keeper", "1", "--", fake_dnsmasq(tmp_path)],
        check=False,
        timeout=30,
    )
    assert proc.returncode == 0
    assert started_pids(tmp_path) == []


def test_keeper_passes_on_the_exit_status(tmp_path: Path) -> None:
    script = "import os, sys; sys.exit(int(sys.argv[1]))"
    for status in (0, 3):
        argv = [sys.executable, "-c", script, str(status)]
        # The keeper checks that its parent is the PID it was given: this test process.
        keeper = subprocess.run(
            [sys.executable, "-m", "calico.dhcp.keeper", str(os.getpid()), "--", *argv],
            check=False,
            timeout=30,
        )
        assert keeper.returncode == status


def test_stop_leftovers_stops_only_our_dnsmasq(tmp_path: Path) -> None:
    """Issue 19: at start the agent stops a dnsmasq an earlier run left, found by its PID file
    or its command line, after checking /proc/<pid>/cmdline; anything else is left alone."""
    state = tmp_path / "state"
    state.mkdir()
    files = DnsmasqFiles(state)
    fake = fake_dnsmasq(tmp_path)
    config = build_config([ep(2)], SUBNETS)
    procs = []
    try:
        # An orphan of ours, named by the PID file.
        orphan = subprocess.Popen(command_line(config, files, fake))
        procs.append(orphan)
        assert wait_for(lambda: lines(files.pid) == [str(orphan.pid)])
        # Another state directory's dnsmasq, and an unrelated process: never touched.
        other_files = DnsmasqFiles(tmp_path)
        other = subprocess.Popen(command_line(config, other_files, fake))
        unrelated = subprocess.Popen(["sleep", "60"])
        procs += [other, unrelated]
        assert wait_for(lambda: lines(other_files.pid) == [str(other.pid)])

        assert stop_leftovers(files, fake) == [orphan.pid]
        assert orphan.wait(10) == 0  # SIGTERM first
        assert not files.pid.exists()

        # A PID file naming a process that is not ours: left alone, the file removed.
        files.pid.write_text(f"{unrelated.pid}\n")
        assert stop_leftovers(files, fake) == []
        assert unrelated.poll() is None and not files.pid.exists()

        # An orphan whose PID file is gone is found by its command line.
        lost = subprocess.Popen(command_line(config, files, fake))
        procs.append(lost)
        assert wait_for(files.pid.exists)
        files.pid.unlink()
        assert stop_leftovers(files, fake, scan=False) == []
        assert stop_leftovers(files, fake) == [lost.pid]
        assert lost.wait(10) == 0
        assert other.poll() is None and unrelated.poll() is None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_is_our_dnsmasq() -> None:
    files = DnsmasqFiles(Path("/state"))
    ours = ["dnsmasq", "--keep-in-foreground", "--pid-file=/state/dnsmasq.pid"]
    assert is_our_dnsmasq(ours, files, "dnsmasq")
    assert is_our_dnsmasq(["/usr/sbin/dnsmasq", *ours[1:]], files, "/usr/sbin/dnsmasq")
    assert is_our_dnsmasq(["/bin/sh", "/x/dnsmasq", *ours[1:]], files, "dnsmasq")
    assert not is_our_dnsmasq(["dnsmasq", "--pid-file=/other/dnsmasq.pid"], files, "dnsmasq")
    assert not is_our_dnsmasq(["vi", "--pid-file=/state/dnsmasq.pid"], files, "dnsmasq")
    assert not is_our_dnsmasq(
        ["python3", "-m", "calico.dhcp.keeper", "1", "--", *ours], files, "dnsmasq"
    )
    assert not is_our_dnsmasq([], files, "dnsmasq")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_real_dnsmasq_accepts_the_command_line(tmp_path: Path) -> None:
    """dnsmasq's own parser checks every argument we generate (--test parses and exits)."""
    files = DnsmasqFiles(tmp_path)
    for lease in (600, -1):
        config = build_config([ep(2), ep(3)], SUBNETS, lease)
        argv = command_line(config, files, "dnsmasq")
        proc = subprocess.run([*argv, "--test"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "syntax check OK" in proc.stderr + proc.stdout
