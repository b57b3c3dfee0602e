"""Issue 12, fuzzed: hostile strings through every string field and key segment that the DHCP
agent reads, all the way from etcd updates to dnsmasq's command line and files.

Each case starts from a valid picture (two endpoints of this host, an IPv4 and an IPv6 subnet),
puts one hostile string into one field of the victim endpoint or of one subnet (or into a key
segment), and feeds it through the agent's own listener (`DhcpState`: key parsing, validation,
rendering). Whatever the agent makes of it must be either refused or exactly the intended
entries:

* nothing raises, and the other endpoint is always served with exactly its line;
* every host line, option line, range and argument matches a strict grammar written here
  independently of the renderer (so no field can carry a ',', newline, '#', '=', quote, space,
  NUL or anything else dnsmasq reads as syntax), and no line reaches dnsmasq's 1 KiB line limit;
* there are never more entries than objects: at most one host line per endpoint, and the option
  lines of at most the two subnets;
* a refused object leaves the output exactly as if it were absent;
* dnsmasq itself (`--test`) accepts the command line and each host and option line as one
  entry, for a sample of the cases.

The hostile strings come from a fixed list (newlines, quotes, commas, '#', '=', '-A', 'COMMIT',
'*filter', NUL, very long, unicode, IPv6 scopes, dnsmasq keywords) and from seeded random
splicing of those into valid values, so every run checks the same cases.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calico.common.datamodel_v1 import DhcpSubnetKey, WorkloadEndpointKey
from calico.common.etcd.syncer import SyncStatus
from calico.dhcp.agent import DhcpState
from calico.dhcp.dnsmasq import DnsmasqConfig, DnsmasqFiles, command_line

HOST = "h1"
NET = "5e8b0f9a-3c1d-4e2f-9a7b-0c1d2e3f4a5b"
GOOD_KEY = WorkloadEndpointKey(HOST, "openstack", "vm-good", "port-good")
VICTIM_KEY = WorkloadEndpointKey(HOST, "openstack", "vm-victim", "port-victim")
S4, S6 = "subnet-v4", "subnet-v6"

GOOD: dict[str, Any] = {
    "state": "active",
    "name": "tapgood0000-aa",
    "mac": "02:00:00:00:00:01",
    "profile_ids": ["sg-1"],
    "ipv4_nets": ["10.65.0.2/32"],
    "ipv4_subnet_ids": [S4],
    "ipv6_nets": ["fd00:65::2/128"],
    "ipv6_subnet_ids": [S6],
    "fqdn": "good-vm.openstacklocal",
}
GOOD_LINE = "02:00:00:00:00:01,10.65.0.2,[fd00:65::2],good-vm"
VICTIM: dict[str, Any] = {
    **GOOD,
    "name": "tapvictim00-bb",
    "mac": "02:00:00:00:00:03",
    "ipv4_nets": ["10.65.0.3/32"],
    "ipv4_gateway": "10.65.0.1",
    "ipv6_nets": ["fd00:65::3/128"],
    "ipv6_gateway": "fd00:65::1",
    "fqdn": "victim.openstacklocal",
    "labels": {"app": "web"},
}
SUBNETS: dict[str, dict[str, Any]] = {
    S4: {
        "network_id": NET,
        "cidr": "10.65.0.0/24",
        "gateway_ip": "10.65.0.1",
        "dns_servers": ["10.65.255.53"],
        "host_routes": [{"destination": "192.168.0.0/24", "nexthop": "10.65.0.254"}],
    },
    S6: {
        "network_id": NET,
        "cidr": "fd00:65::/64",
        "gateway_ip": "fd00:65::1",
        "dns_servers": ["fd00:65::53"],
        "host_routes": [{"destination": "fd01::/64", "nexthop": "fd00:65::254"}],
    },
}

UNUSED_SUBNET = {"network_id": "other-net", "cidr": "10.66.0.0/24", "gateway_ip": "10.66.0.1"}

# Every string field of the values the agent reads, as a path into the JSON.
ENDPOINT_FIELDS: list[tuple[Any, ...]] = [
    ("state",),
    ("name",),
    ("mac",),
    ("profile_ids", 0),
    ("ipv4_nets", 0),
    ("ipv4_subnet_ids", 0),
    ("ipv4_gateway",),
    ("ipv6_nets", 0),
    ("ipv6_subnet_ids", 0),
    ("ipv6_gateway",),
    ("fqdn",),
    ("labels", "app"),
]
SUBNET_FIELDS: list[tuple[Any, ...]] = [
    ("network_id",),
    ("cidr",),
    ("gateway_ip",),
    ("dns_servers", 0),
    ("host_routes", 0, "destination"),
    ("host_routes", 0, "nexthop"),
]
KEY_SEGMENTS = ["orchestrator", "workload", "endpoint", "subnet"]

HOSTILE = [
    "",
    " ",
    "\n",
    "a\nb",
    "x\n02:00:00:00:00:09,10.65.0.9,evil",
    "\r\n",
    "\x00",
    "a\x00b",
    ",",
    "a,b",
    "#",
    "a #comment",
    "=",
    "a=b",
    '"',
    "'",
    "\\",
    "-A FORWARD -j ACCEPT",
    "COMMIT",
    "*filter",
    "--dhcp-range=10.0.0.0,static",
    "--conf-file=/etc/passwd",
    "tag:x,option:router,1.2.3.4",
    "set:evil",
    "ignore",
    "infinite",
    "12h",
    "3600",
    "[fd00::1]",
    "fd00:65::9%eth0",
    "fd00:65::9%a\nb",
    "fd00:65::9%a,b",
    "fd00::%x/64",
    "10.65.0.9/32\n",
    "10.65.0.9,10.65.0.10",
    "10.65.0.256",
    "0x0a.0.0.1",
    "010.065.000.002",
    "::ffff:10.65.0.9",
    "fd00:65::/48",
    "10/8",
    "10.0.1/32",
    "ns-evil",
    "tap../../etc",
    "..",
    ".",
    "é",
    "vm-ü.example",
    "\u202e",
    "\u2028",
    "\u210c",  # black-letter H
    "\uff10",  # full-width 0
    "x" * 64,
    "y" * 300,
    "z" * 5000,
    "a." * 200,
    "%",
    "%%",
    "$(reboot)",
    "`id`",
    "\t",
    "\x1b[31m",
]


def _splice(rng: random.Random, base: str) -> str:
    """A hostile string mixed into a valid value: before, after or inside it."""
    hostile = rng.choice(HOSTILE)
    at = rng.randrange(len(base) + 1)
    return rng.choice([base + hostile, hostile + base, base[:at] + hostile + base[at:]])


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


def _set(data: Any, path: tuple[Any, ...], value: str) -> None:
    for step in path[:-1]:
        data = data[step]
    data[path[-1]] = value


def _cases(seed: int, count: int) -> Iterator[tuple[str, tuple[Any, ...], str]]:
    """(target, field path, hostile value): target is "endpoint", a subnet ID or "key"."""
    rng = random.Random(seed)
    targets = (
        [("endpoint", f) for f in ENDPOINT_FIELDS]
        + [(sid, f) for sid in SUBNETS for f in SUBNET_FIELDS]
        + [("key", (seg,)) for seg in KEY_SEGMENTS]
    )
    for i in range(count):
        target, path = targets[i % len(targets)] if i < len(targets) else rng.choice(targets)
        if target == "key":
            base = {"orchestrator": "openstack", "workload": "vm-victim", "endpoint": "p"}.get(
                path[0], S4
            )
        else:
            base = str(_get(VICTIM if target == "endpoint" else SUBNETS[target], path))
        value = rng.choice(HOSTILE) if rng.random() < 0.4 else _splice(rng, base)
        yield target, path, value


def _run(
    endpoints: dict[str, str], subnets: dict[str, str], junk: list[tuple[str, str]] = ()
) -> DnsmasqConfig:
    """What the agent would run for these etcd keys (path -> JSON)."""
    return _state(endpoints, subnets, junk)[0]


def _state(
    endpoints: dict[str, str], subnets: dict[str, str], junk: list[tuple[str, str]] = ()
) -> tuple[DnsmasqConfig, set[str]]:
    """The configuration, and the keys the agent kept (valid values)."""
    state = DhcpState(HOST)
    state.on_status(SyncStatus.IN_SYNC)
    state.on_updates([*endpoints.items(), *subnets.items(), *junk])
    config = state.wanted(86400)
    assert config is not None
    kept = {k.path for k in state.endpoints} | {DhcpSubnetKey(s).path for s in state.subnets}
    return config, kept


# --- The grammar: what may reach dnsmasq, written independently of the renderer ----------------

_MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_V4 = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}"
_V6 = r"[0-9a-f:.]{2,45}"
_TAG = r"subnet-[a-zA-Z0-9_.-]{1,255}"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
HOST_LINE = re.compile(
    rf"(?P<mac>{_MAC})(?:,(?P<v4>{_V4}))?(?P<v6>(?:,\[{_V6}\])*),(?P<name>{_LABEL})"
)
OPTION_LINES = [
    re.compile(rf"tag:{_TAG},option:router,{_V4}"),
    re.compile(rf"tag:{_TAG},option:dns-server,{_V4}(?:,{_V4})*"),
    re.compile(
        rf"tag:{_TAG},option:classless-static-route,(?:{_V4}/[0-9]{{1,2}},{_V4},)+0\.0\.0\.0/0,{_V4}"
    ),
    re.compile(rf"tag:{_TAG},option6:dns-server,\[{_V6}\](?:,\[{_V6}\])*"),
]
RANGE = re.compile(
    rf"set:{_TAG},(?:{_V4},static,{_V4}|{_V6},static,off-link,[0-9]{{2,3}}),(?:[0-9]+s|infinite)"
)
ARG = re.compile(
    r"--(?:interface|bridge-interface)=[a-zA-Z0-9_,-]+|--dhcp-range=.*|--pid-file=/state/dnsmasq\.pid"
    r"|--dhcp-(?:hostsfile|optsfile)=/state/(?:hosts|opts)|--[a-z-]+(?:=[a-z0-9/-]+)?|dnsmasq"
)


def _canonical_ips(text: str, version: int) -> bool:
    """Every address (or CIDR) in `text` is as ipaddress prints it: no scope, no odd forms."""
    pattern = _V4 + r"(?:/[0-9]+)?" if version == 4 else r"(?<=\[)[^\]]*(?=\])"
    for match in re.findall(pattern, text):
        try:
            value = ipaddress.ip_network(match) if "/" in match else ipaddress.ip_address(match)
        except ValueError:
            return False
        if str(value) != match:
            return False
    return True


def _check_output(config: DnsmasqConfig) -> None:
    assert len(config.hosts) <= 2
    assert len(config.options) <= 4  # router, DNS, routes (v4) + DNS (v6)
    assert len(config.ranges) <= 2
    for line in (*config.hosts, *config.options, *config.ranges):
        assert len(line) < 1000
        assert line.isascii() and line.isprintable() and " " not in line, repr(line)
        assert not set(line) & set("#=\"'\\"), repr(line)
    for line in config.hosts:
        match = HOST_LINE.fullmatch(line)
        assert match, repr(line)
        assert match["name"].lower() not in ("ignore", "infinite")
        assert not re.fullmatch(r"[0-9]+[smhdw]?", match["name"], re.IGNORECASE)
        assert _canonical_ips(line, 4) and _canonical_ips(line, 6), repr(line)
    for line in config.options:
        assert any(p.fullmatch(line) for p in OPTION_LINES), repr(line)
        assert _canonical_ips(line, 4) and _canonical_ips(line, 6), repr(line)
    for line in config.ranges:
        assert RANGE.fullmatch(line), repr(line)
    if not config.empty:
        for arg in command_line(config, DnsmasqFiles(Path("/state"))):
            assert ARG.fullmatch(arg) and "\n" not in arg and "\0" not in arg, repr(arg)
        for iface in config.interfaces:
            for addr in iface.addresses:
                assert str(ipaddress.ip_interface(addr)) == addr and "%" not in addr


def _dnsmasq_accepts(config: DnsmasqConfig, tmp_path: Path) -> None:
    """dnsmasq's own parser: the command line, and each host and option line given as one
    --dhcp-host / --dhcp-option (the parser it uses for the files' lines)."""
    argv = command_line(config, DnsmasqFiles(tmp_path))
    argv += [f"--dhcp-host={h}" for h in config.hosts]
    argv += [f"--dhcp-option={o}" for o in config.options]
    proc = subprocess.run([*argv, "--test"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (proc.stderr, argv)


def _etcd_picture(
    target: str, path: tuple[Any, ...], value: str
) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str]], str | None]:
    """The keys with the hostile value in place; the key of the object it went into."""
    victim = copy.deepcopy(VICTIM)
    subnets = copy.deepcopy(SUBNETS)
    victim_key = VICTIM_KEY.path
    junk: list[tuple[str, str]] = []
    mutated: str | None = victim_key
    if target == "endpoint":
        _set(victim, path, value)
    elif target == "key":
        segment = path[0]
        if segment == "subnet":
            # A subnet key with a hostile ID next to the good ones, for a network without
            # endpoints here: whether it is valid or not, the output must not change.
            junk.append((f"/calico/dhcp/v1/subnet/{value}", json.dumps(UNUSED_SUBNET)))
            mutated = None
        else:
            parts = {"orchestrator": "openstack", "workload": "vm-victim", "endpoint": "p"}
            parts[segment] = value
            victim_key = (
                f"/calico/v1/host/{HOST}/workload/{parts['orchestrator']}/{parts['workload']}"
                f"/endpoint/{parts['endpoint']}"
            )
            mutated = victim_key
    else:
        _set(subnets[target], path, value)
        mutated = DhcpSubnetKey(target).path
    endpoints = {GOOD_KEY.path: json.dumps(GOOD), victim_key: json.dumps(victim)}
    subnet_values = {DhcpSubnetKey(sid).path: json.dumps(v) for sid, v in subnets.items()}
    return endpoints, subnet_values, junk, mutated


BASELINE_ENDPOINTS = {GOOD_KEY.path: json.dumps(GOOD), VICTIM_KEY.path: json.dumps(VICTIM)}
BASELINE_SUBNETS = {DhcpSubnetKey(sid).path: json.dumps(v) for sid, v in SUBNETS.items()}


def test_the_valid_picture_serves_both_endpoints() -> None:
    config = _run(BASELINE_ENDPOINTS, BASELINE_SUBNETS)
    assert config.hosts == (GOOD_LINE, "02:00:00:00:00:03,10.65.0.3,[fd00:65::3],victim")
    assert config.refused == ()
    _check_output(config)


@pytest.mark.parametrize("seed", range(8))
def test_hostile_strings_are_refused_or_exactly_the_intended_entries(
    seed: int, tmp_path: Path
) -> None:
    checked_by_dnsmasq = 0
    for target, path, value in _cases(seed, 120):
        endpoints, subnets, junk, mutated = _etcd_picture(target, path, value)
        where = f"{target} {path} = {value[:80]!r}"
        config, kept = _state(endpoints, subnets, junk)
        try:
            _check_output(config)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
        dropped = mutated is not None and (
            mutated not in kept or mutated in {r.key for r in config.refused}
        )
        if dropped:
            # Refused, at parse time or by the renderer: exactly as if it were absent.
            without = (
                {k: v for k, v in endpoints.items() if k != mutated},
                {k: v for k, v in subnets.items() if k != mutated},
            )
            assert config == _run(*without, junk), where
        if target == "key" and path == ("subnet",):
            assert config == _run(BASELINE_ENDPOINTS, BASELINE_SUBNETS), where
        if target in ("endpoint", "key"):
            # The other endpoint is always served, exactly.
            assert GOOD_LINE in config.hosts, where
        else:
            # A subnet's change can change how the other endpoint is served, but never into
            # more than its one entry.
            assert sum(h.startswith(GOOD["mac"]) for h in config.hosts) <= 1, where
        if seed == 0 or checked_by_dnsmasq < 8:
            if not config.empty:
                _dnsmasq_accepts(config, tmp_path)
                checked_by_dnsmasq += 1


def test_a_value_dropped_by_validation_is_as_if_absent() -> None:
    """An invalid endpoint or subnet value is left out at parse time: the output is the one
    without it (the victim's hostile MAC, the subnet's hostile DNS server)."""
    endpoints, subnets, _, _ = _etcd_picture("endpoint", ("mac",), "02:00:00:00:00:03\nx")
    assert _run(endpoints, subnets) == _run({GOOD_KEY.path: endpoints[GOOD_KEY.path]}, subnets)
    endpoints, subnets, _, _ = _etcd_picture(S6, ("dns_servers", 0), "fd00::53%a]\ntag:x")
    config = _run(endpoints, subnets)
    assert not config.enable_ra and all("option6" not in line for line in config.options)
