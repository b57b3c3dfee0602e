"""The pure part of the DHCP agent: endpoints + subnets -> dnsmasq arguments and files, the
start / restart / reload decision, and the process handling (with a stand-in dnsmasq)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from calico.dhcp.dnsmasq import (
    EMPTY_CONFIG,
    Action,
    DhcpInterface,
    Dnsmasq,
    DnsmasqConfig,
    DnsmasqFiles,
    build_config,
    command_line,
    device_name,
    plan,
)
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
# A stand-in dnsmasq: records its start (PID, arguments) and each SIGHUP.
echo "$$ $*" >> "{dir}/starts"
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


def test_process_start_reload_restart_stop(tmp_path: Path) -> None:
    fake = tmp_path / "fake-dnsmasq"
    fake.write_text(FAKE_DNSMASQ.format(dir=tmp_path))
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    dnsmasq = Dnsmasq(state, str(fake))
    try:
        one = build_config([ep(2)], SUBNETS)
        assert dnsmasq.apply(one) is Action.START
        assert wait_for(lambda: len(lines(tmp_path / "starts")) == 1)
        first_pid = dnsmasq.pid
        assert lines(tmp_path / "starts")[0].startswith(f"{first_pid} --keep-in-foreground")
        assert lines(state / "hosts") == list(one.hosts)
        assert lines(state / "opts") == list(one.options)
        assert (state / "hosts").stat().st_mode & 0o777 == 0o644

        assert dnsmasq.apply(one) is Action.NONE
        added = DnsmasqConfig(one.interfaces, one.ranges, (*one.hosts, "h"), one.options, True)
        assert dnsmasq.apply(added) is Action.RELOAD
        assert wait_for(lambda: lines(tmp_path / "hups") == [str(first_pid)])
        assert lines(state / "hosts")[-1] == "h"
        assert dnsmasq.pid == first_pid

        two = build_config([ep(2), ep(3)], SUBNETS)
        assert dnsmasq.apply(two) is Action.RESTART
        assert wait_for(lambda: len(lines(tmp_path / "starts")) == 2)
        assert dnsmasq.pid != first_pid
        assert not _running(first_pid)

        # A dnsmasq that dies is started again on the next apply, even with nothing new.
        second_pid = dnsmasq.pid
        assert second_pid is not None
        dnsmasq._proc.kill()  # type: ignore[union-attr]
        dnsmasq._proc.wait()  # type: ignore[union-attr]
        assert dnsmasq.apply(two) is Action.START
        assert dnsmasq.pid != second_pid and dnsmasq.alive()

        last_pid = dnsmasq.pid
        assert dnsmasq.apply(EMPTY_CONFIG) is Action.STOP
        assert dnsmasq.pid is None and not _running(last_pid)
    finally:
        dnsmasq.stop()


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
