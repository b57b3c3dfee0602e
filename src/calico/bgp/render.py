"""The BIRD 2 configuration of one host, as text (IPv4 and IPv6 in one daemon). Pure.

What the file does (docs/multihost.md explains it to operators):

* `protocol kernel` (one per family) learns the kernel's routes (`learn`), including Felix's
  routes to local workloads and floating IPs, which carry `proto 80` (`RTPROT_FELIX`): BIRD sees
  them as `krt_source = 80` at once, through netlink. Those get preference 200, so a local
  workload's route wins over a copy learned from a peer (a VM being migrated). It installs
  only BGP-learned routes in the kernel (metric 32, below Felix's and the host's own), keeps
  them across a BIRD restart (`persist`) and defers its sync during a graceful restart.
* Exported to peers: only Felix's routes (`krt_source = 80`, host-length, `source =
  RTS_INHERIT`), never the default route, the host's subnets, any other route, or an address of
  a Calico host. A route reflector also passes on the workload routes it learned.
* Imported from peers: host-length routes (/32, /128) and prefixes inside an IP pool; never a
  default route or a prefix holding a Calico host's address (which would hijack BGP itself).
* `protocol direct` gives the host's subnets so that next hops resolve (bgp.md §3.1).
* One `protocol bgp` per session (`calico.bgp.peers`), all `multihop`, with graceful restart
  on (BIRD must be started with `-R` to restart gracefully itself, bgp.md §5.1).

Nothing reaches the text unchecked: every address is re-parsed and must be canonical, numbers
must be in range, names and paths match short safe patterns. `UnsafeValue` otherwise (which the
daemon logs and counts as a render failure; the old file stays).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from calico.bgp.model import AS_TRANS, MAX_AS, BgpData
from calico.bgp.peers import KIND_DESCRIPTIONS, LocalHost, Plan, Session, plan

RTPROT_FELIX = 80  # calico.felix.kernel.routes.RTPROT_FELIX (not imported: that is kernel code)
LOCAL_PREFERENCE = 200  # above BGP's 100: a local workload's own route is the best one
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_HOST_RE = re.compile(r"[a-zA-Z0-9_.-]{1,255}")
_PATH_RE = re.compile(r"/[A-Za-z0-9_./-]{1,1000}")
_DOTTED_RE = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                        r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")  # fmt: skip
_DEBUG = {"none": "off", "info": "{ states }", "debug": "all"}
_HOST_LEN = {4: 32, 6: 128}
_DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}


class UnsafeValue(ValueError):
    """A value that must not be written into BIRD's configuration."""


@dataclass(frozen=True, slots=True)
class RenderOptions:
    log: str = "syslog"  # "syslog", "stderr" or an absolute file path
    kernel_scan_time: int = 2  # seconds; routes are learned at once through netlink anyway
    device_scan_time: int = 10
    connect_delay_time: int = 1
    connect_retry_time: int = 5
    error_wait_time: tuple[int, int] = (1, 30)
    graceful_restart_time: int = 120  # how long peers keep our routes while we restart
    # How long a restarted BIRD waits for its peers before it ends the recovery (BIRD's default,
    # 240 s, holds back every route change when one configured peer is down).
    graceful_restart_wait: int = 20

    def __post_init__(self) -> None:
        if self.log not in ("syslog", "stderr") and not _PATH_RE.fullmatch(self.log):
            raise UnsafeValue(f"log target {self.log!r}: need syslog, stderr or a plain path")


def render(data: BgpData, me: LocalHost, options: RenderOptions | None = None) -> str:
    """The whole configuration file."""
    return render_plan(data, me, plan(data, me), options or RenderOptions())


def render_plan(data: BgpData, me: LocalHost, the_plan: Plan, options: RenderOptions) -> str:
    host = _check(me.hostname, _HOST_RE, "host name")
    out = [
        f"# BIRD configuration of Calico host {host}, written by calico-bgp from etcd",
        "# (/calico/bgp/v1, /calico/v1/ipam). Do not edit: it is rewritten on every change.",
        "",
        f"log {_log_target(options.log)} all;",
        f"router id {router_id(me)};",
        'timeformat protocol "%F %T";',
        f"debug protocols {_DEBUG[data.loglevel]};",
        f"graceful restart wait {_num(options.graceful_restart_wait, 1, 3600)};",
        "",
    ]
    host_addresses = sorted({a for h in data.hosts.values() for a in (h.ip4, h.ip6) if a})
    host_addresses = sorted(set(host_addresses) | me.addresses)
    for version in (4, 6):
        pools = [p for p in data.pools if (":" in p) == (version == 6)]
        addresses = [a for a in host_addresses if (":" in a) == (version == 6)]
        out += _filters(version, addresses, pools, any(s.reflect for s in the_plan.sessions))
    out += [
        f"protocol device {{ scan time {_num(options.device_scan_time, 1, 3600)}; }}",
        'protocol direct { ipv4; ipv6; interface "*"; }',
        "",
    ]
    scan = _num(options.kernel_scan_time, 1, 3600)
    for version in (4, 6):
        out += [
            f"protocol kernel kernel{version} {{",
            f"  ipv{version} {{ import filter calico_learn_v{version}; "
            f"export filter calico_kernel_v{version}; }};",
            f"  learn; persist; scan time {scan}; graceful restart;",
            "}",
        ]
    out.append("")
    for version in (4, 6):
        address = me.ip(version)
        if address is None:
            out += [f"# No IPv{version} address on this host: no IPv{version} sessions.", ""]
            continue
        out += [
            f"template bgp calico_v{version} {{",
            f"  local {_addr(address, version)} as {_as(the_plan.local_as)};",
            "  multihop;",
            "  graceful restart on;",
            f"  graceful restart time {_num(options.graceful_restart_time, 1, 65535)};",
            f"  connect delay time {_num(options.connect_delay_time, 1, 65535)};",
            f"  connect retry time {_num(options.connect_retry_time, 1, 65535)};",
            f"  error wait time {_num(options.error_wait_time[0], 1, 65535)}, "
            f"{_num(options.error_wait_time[1], options.error_wait_time[0], 65535)};",
            "}",
            "",
        ]
        for session in the_plan.sessions:
            if session.version == version:
                out += _session(session, the_plan)
    return "\n".join(out) + "\n"


def router_id(me: LocalHost) -> str:
    """This host's IPv4 address; without one, a stable ID made from the host name."""
    if me.ip4 is not None:
        return _addr(me.ip4, 4)
    digest = int.from_bytes(hashlib.sha256(me.hostname.encode()).digest()[:4], "big")
    return str(ipaddress.IPv4Address(digest or 1))


def _filters(version: int, addresses: list[str], pools: list[str], reflects: bool) -> list[str]:
    v, host_len, default = version, _HOST_LEN[version], _DEFAULT[version]
    out = [f"# IPv{v}: addresses of Calico hosts, never taken from or given to a peer as a route."]
    out.append(f"function calico_host_address_v{v}() {{")
    if addresses:
        # a/32{0,32}: every prefix that holds the address a (a trie: one lookup for any number)
        patterns = [f"    {_addr(a, v)}/{host_len}{{0,{host_len}}}" for a in addresses]
        out += ["  if net ~ [", ",\n".join(patterns), "  ] then return true;"]
    out += ["  return false;", "}"]
    out += [
        f"# A route Felix programmed to a local workload or floating IP (proto {RTPROT_FELIX}).",
        f"function calico_local_v{v}() {{",
        "  if source != RTS_INHERIT then return false;",
        f"  if krt_source != {RTPROT_FELIX} then return false;",
        f"  if net.len != {host_len} then return false;",
        f"  if calico_host_address_v{v}() then return false;",
        "  return true;",
        "}",
        "# A route to a workload on another host, as a peer may give it.",
        f"function calico_workload_v{v}() {{",
        f"  if net = {default} then return false;",
        f"  if calico_host_address_v{v}() then return false;",
        f"  if net.len = {host_len} then return true;",
    ]
    if pools:
        prefixes = ", ".join(f"{_net(p, v)}+" for p in pools)
        out.append(f"  if net ~ [ {prefixes} ] then return true;")
    out += [
        "  return false;",
        "}",
        f"filter calico_export_v{v} {{ if calico_local_v{v}() then accept; reject; }}",
        f"filter calico_import_v{v} {{ if calico_workload_v{v}() then accept; reject; }}",
        f"filter calico_kernel_v{v} {{ if source = RTS_BGP then accept; reject; }}",
        f"filter calico_learn_v{v} {{",
        f"  if krt_source = {RTPROT_FELIX} then preference = {LOCAL_PREFERENCE};",
        "  accept;",
        "}",
    ]
    if reflects:
        out += [
            f"filter calico_reflect_v{v} {{",
            f"  if calico_local_v{v}() then accept;",
            f"  if source = RTS_BGP then {{ if calico_workload_v{v}() then accept; }}",
            "  reject;",
            "}",
        ]
    return [*out, ""]


def _session(session: Session, the_plan: Plan) -> list[str]:
    v = session.version
    name = _check(session.name, _NAME_RE, "protocol name")
    description = KIND_DESCRIPTIONS[session.kind]
    if session.host is not None:
        description += f": host {_check(session.host, _HOST_RE, 'host name')}"
    export = f"calico_reflect_v{v}" if session.reflect else f"calico_export_v{v}"
    lines = [
        f"protocol bgp {name} from calico_v{v} {{",
        f'  description "{description}";',
        f"  neighbor {_addr(session.ip, v)} as {_as(session.peer_as)};",
    ]
    if session.rr_client:
        cluster = _check(the_plan.rr_cluster_id or "", _DOTTED_RE, "cluster ID")
        lines.append(f"  rr client; rr cluster id {cluster};")
    lines += [
        f"  ipv{v} {{ import filter calico_import_v{v}; export filter {export}; }};",
        "}",
        "",
    ]
    return lines


def _log_target(target: str) -> str:
    if target in ("syslog", "stderr"):
        return target
    return f'"{_check(target, _PATH_RE, "log file")}"'


def _check(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UnsafeValue(f"{what} {value!r} cannot be written into BIRD's configuration")
    return value


def _addr(value: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        addr = None
    if addr is None or addr.version != version or str(addr) != value:
        raise UnsafeValue(f"{value!r} is not a canonical IPv{version} address")
    return value


def _net(value: str, version: int) -> str:
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        net = None
    if net is None or net.version != version or str(net) != value:
        raise UnsafeValue(f"{value!r} is not a canonical IPv{version} network")
    return value


def _num(value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UnsafeValue(f"{value!r} is not a number from {low} to {high}")
    return value


def _as(value: int) -> int:
    if _num(value, 1, MAX_AS) == AS_TRANS:
        raise UnsafeValue(f"AS {AS_TRANS} (AS_TRANS) is not an AS number")
    return value
