"""`calico-dhcp-agent`: DHCP for this host's routed TAPs, driven by etcd (openstack.md §6.2).

It watches `/calico` with the common Syncer (a consistent snapshot, then the watch, resyncing
when the watch breaks) and keeps from it only this host's workload endpoints
(`/calico/v1/host/<host>/workload/...`) and the DHCP subnets (`/calico/dhcp/v1/subnet/<id>`).
Watching the common parent is what lets one snapshot + watch cover both trees; the price is that
the agent also receives (and ignores) other hosts' changes. Like Felix, it waits for
`/calico/v1/Ready` to be "true" (the Neutron driver sets it).

After the first complete snapshot, and after every burst of changes, it computes the wanted
dnsmasq configuration (`calico.dhcp.dnsmasq.build_config`), creates or updates the `ns-`
interfaces and starts, restarts or reloads its one dnsmasq. On SIGTERM / SIGINT it stops
dnsmasq and deletes its interfaces. At start it first stops any dnsmasq and deletes any `ns-`
interface an earlier run left behind (docs/dhcp.md, "A crash and a restart"). Each endpoint and
subnet is validated and rendered on its own: a bad one is logged once with its key and left out,
and everything else is still served.

Configuration comes from the same files as Neutron's (`--config-file neutron.conf`):
`[calico] etcd_host` (localhost), `etcd_port` (4001), or `etcd_endpoints` (the comma-separated
client URLs of an etcd cluster, which override host and port; the syncer moves to the next one
when one fails), `etcd_key_file` / `etcd_cert_file` / `etcd_ca_cert_file` (with host and port,
any of them means https), `etcd_api_version` (v2 or v3, default v2); `[DEFAULT] host` (default:
the system host name; must equal Nova's `binding:host_id`) and `dhcp_lease_duration` (86400).
"""

from __future__ import annotations

import argparse
import configparser
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from calico.common import logs
from calico.common.datamodel_v1 import (
    DHCP_SUBNET_DIR,
    ID_SEGMENT_RULE,
    ROOT,
    BadKey,
    DhcpSubnetKey,
    WorkloadEndpointKey,
    parse_dhcp_subnet_key,
    parse_key,
)
from calico.common.etcd import API_VERSIONS, connect
from calico.common.etcd.base import (
    ClusterIdChanged,
    EtcdSettings,
    KVStore,
    settings_for_endpoints,
    settings_for_host,
)
from calico.common.etcd.syncer import Syncer, SyncStatus, Update
from calico.common.quoting import quoted
from calico.common.resources import InvalidValue
from calico.dhcp.dnsmasq import DEFAULT_LEASE_SECONDS, DnsmasqConfig, Refusal, build_config
from calico.dhcp.dnsmasq_process import Dnsmasq, prepare_state_dir, stop_leftovers
from calico.dhcp.links import DhcpLinks
from calico.dhcp.model import (
    DhcpEndpoint,
    DhcpSubnet,
    key_path,
    parse_dhcp_endpoint,
    parse_dhcp_subnet,
)

log = logging.getLogger("calico.dhcp.agent")

PROG = "calico-dhcp-agent"
DEFAULT_STATE_DIR = "/var/lib/calico/dhcp"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
# Changes are applied once the datastore has been quiet this long (a burst, such as a resync or
# many VMs booting, restarts dnsmasq once), but never later than SETTLE_MAX after the first one.
SETTLE_QUIET = 0.2
SETTLE_MAX = 1.0
MAX_PROBLEMS = 10  # problems of one invalid value shown in its log line
MAX_PROBLEM_LEN = 300
RETRY_INTERVAL = 5.0  # after a failure to program interfaces or dnsmasq
CHECK_INTERVAL = 1.0  # how often a dead dnsmasq is noticed


@dataclass(frozen=True)
class AgentConfig:
    hostname: str
    etcd: EtcdSettings
    etcd_api: str = "v2"
    lease_seconds: int = DEFAULT_LEASE_SECONDS


def load_config(paths: Sequence[str]) -> AgentConfig:
    """Read the agent's settings from Neutron-style ini files (later files win).

    Raises ValueError for a bad value or an unreadable file.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f, path)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        except configparser.Error as exc:
            raise ValueError(f"{path}: {exc}") from None

    def get(section: str, name: str) -> str | None:
        value = parser.get(section, name, fallback=None) if parser.has_section(section) else None
        if value is None:
            value = parser.defaults().get(name) if section == "DEFAULT" else None
        return value.strip() if value is not None and value.strip() else None

    tls = (
        get("calico", "etcd_key_file"),
        get("calico", "etcd_cert_file"),
        get("calico", "etcd_ca_cert_file"),
    )
    host = get("calico", "etcd_host") or "localhost"
    port_text = get("calico", "etcd_port") or "4001"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"[calico] etcd_port: invalid port {port_text!r}")
    endpoints = get("calico", "etcd_endpoints")
    if endpoints is not None:
        # As the Neutron driver reads it: the list wins over etcd_host and etcd_port.
        try:
            etcd = settings_for_endpoints(endpoints, *tls)
        except ValueError as exc:
            raise ValueError(f"[calico] etcd_endpoints: {exc}") from None
    else:
        etcd = settings_for_host(host, port_text, *tls)
    api = get("calico", "etcd_api_version") or "v2"
    if api not in API_VERSIONS:
        raise ValueError(f"[calico] etcd_api_version: {api!r} is not one of {API_VERSIONS}")
    lease_text = get("DEFAULT", "dhcp_lease_duration") or str(DEFAULT_LEASE_SECONDS)
    # Neutron's -1 means "infinite"; dnsmasq spells that out.
    if not lease_text.lstrip("-").isdigit() or (int(lease_text) < 120 and lease_text != "-1"):
        raise ValueError(f"[DEFAULT] dhcp_lease_duration: {lease_text!r} (need >= 120 or -1)")
    return AgentConfig(
        hostname=get("DEFAULT", "host") or socket.gethostname(),
        etcd=etcd,
        etcd_api=api,
        lease_seconds=int(lease_text),
    )


class DhcpState:
    """The Syncer's listener: this host's endpoints and all DHCP subnets, valid ones only.

    Everything refused (an invalid key or value, or an object the renderer leaves out) is logged
    once with its key, and again only when the reason changes or after it was fixed and broke
    again; every other object is still served.
    """

    def __init__(self, hostname: str):
        self.hostname = hostname
        self.endpoints: dict[WorkloadEndpointKey, DhcpEndpoint] = {}
        self.subnets: dict[str, DhcpSubnet] = {}
        self.in_sync = False
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._reported: dict[str, str] = {}  # etcd key -> the problem logged for it
        self._refused: frozenset[Refusal] = frozenset()  # logged by the last wanted()

    def on_status(self, status: SyncStatus) -> None:
        if status == SyncStatus.IN_SYNC:
            with self._lock:
                self.in_sync = True
            self.changed.set()

    def on_updates(self, updates: list[Update]) -> None:
        relevant = False
        with self._lock:
            for path, value in updates:
                relevant |= self._update(path, value)
        if relevant:
            self.changed.set()

    def _report(self, path: str, problem: str | None) -> None:
        """Log `problem` with the key, once; None: the key is fine (or gone) now."""
        if problem is None:
            self._reported.pop(path, None)
        elif self._reported.get(path) != problem:
            self._reported[path] = problem
            log.warning("Ignoring %s: %s", quoted(path), problem)

    def _update(self, path: str, value: str | None) -> bool:
        """Apply one update; whether it was one of ours."""
        if path.startswith(DHCP_SUBNET_DIR + "/"):
            subnet_key = parse_dhcp_subnet_key(path)
            if subnet_key is None:
                # Shaped like a subnet, but its ID could not be used safely: as if absent.
                bad = f"invalid DHCP subnet key (need an ID of {ID_SEGMENT_RULE})"
                self._report(path, None if value is None else bad)
                return False
            self._update_subnet(subnet_key, value)
            return True
        key = parse_key(path)
        if isinstance(key, BadKey):
            parts = path.split("/")
            if key.kind is WorkloadEndpointKey and len(parts) > 4 and parts[4] == self.hostname:
                self._report(path, None if value is None else key.reason)
            return False
        if isinstance(key, WorkloadEndpointKey) and key.hostname == self.hostname:
            self._update_endpoint(key, value)
            return True
        return False

    def _update_subnet(self, key: DhcpSubnetKey, value: str | None) -> None:
        self.subnets.pop(key.subnet_id, None)
        problem = None
        if value is not None:
            try:
                self.subnets[key.subnet_id] = parse_dhcp_subnet(value, key)
            except Exception as exc:  # InvalidValue, or a bug: this subnet alone is left out
                problem = _problem(exc)
        self._report(key_path(key), problem)

    def _update_endpoint(self, key: WorkloadEndpointKey, value: str | None) -> None:
        self.endpoints.pop(key, None)
        problem = None
        if value is not None:
            try:
                self.endpoints[key] = parse_dhcp_endpoint(value, key)
            except Exception as exc:  # InvalidValue, or a bug: this endpoint alone is left out
                problem = _problem(exc)
        self._report(key_path(key), problem)

    def wanted(
        self, lease_seconds: int, skip_devices: frozenset[str] = frozenset()
    ) -> DnsmasqConfig | None:
        """The dnsmasq configuration for the current data; None before the first snapshot.
        `skip_devices`: ns- devices that could not be set up; their networks are left out."""
        with self._lock:
            if not self.in_sync:
                return None
            config = build_config(
                self.endpoints.values(), self.subnets, lease_seconds, skip_devices
            )
            refused = frozenset(config.refused)
            for refusal in sorted(refused - self._refused, key=lambda r: (r.key, r.reason)):
                log.warning("Not serving %s: %s", quoted(refusal.key), refusal.reason)
            self._refused = refused
            return config


def _problem(exc: Exception) -> str:
    """What was wrong with a value, for a log line that already names its key."""
    if isinstance(exc, InvalidValue):
        # The validators quote the values they name; anything unprintable left is escaped.
        shown = [
            (p if p.isprintable() else quoted(p))[:MAX_PROBLEM_LEN]
            for p in exc.problems[:MAX_PROBLEMS]
        ]
        more = len(exc.problems) - len(shown)
        return "; ".join(shown) + (f"; ... ({more} more)" if more > 0 else "")
    log.debug("Validation failed unexpectedly", exc_info=True)
    return f"cannot be read ({type(exc).__name__}: {quoted(str(exc))})"


class DhcpAgent:
    def __init__(
        self,
        client: KVStore,
        config: AgentConfig,
        state_dir: Path,
        dnsmasq_binary: str = "dnsmasq",
        log_dhcp: bool = False,
    ):
        self.config = config
        self.state = DhcpState(config.hostname)
        self.syncer = Syncer(client, self.state, prefix=ROOT)
        self.dnsmasq = Dnsmasq(state_dir, dnsmasq_binary, log_dhcp)
        self.links = DhcpLinks()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._link_problems: dict[str, str] = {}  # ns- device -> the failure logged for it

    def _sync(self) -> None:
        try:
            self.syncer.run()
        except Exception as exc:  # re-raised by run()
            self.error = exc
            self.stop_event.set()
            self.state.changed.set()

    def run(self) -> None:
        """Serve until stop_event is set (or the Syncer fails: then raise its error)."""
        prepare_state_dir(self.dnsmasq.files.state_dir)
        # Left behind by a run that did not stop cleanly: its dnsmasq (if the platform could
        # not make it die with that run) and its ns- devices. Never two dnsmasq.
        stop_leftovers(self.dnsmasq.files, self.dnsmasq.binary)
        self.links.remove_all()
        thread = threading.Thread(target=self._sync, name="syncer", daemon=True)
        thread.start()
        try:
            self._loop()
        finally:
            self.syncer.stop()
            self.dnsmasq.stop()
            self.links.remove_all()
            # A daemon thread: no need to wait out its current long poll.
            thread.join(2)
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        retry_at: float | None = None
        while not self.stop_event.is_set():
            self.state.changed.wait(CHECK_INTERVAL)
            if self.stop_event.is_set():
                return
            due = self.state.changed.is_set() or (
                retry_at is not None and time.monotonic() >= retry_at
            )
            dnsmasq_ok = self.dnsmasq.running is None or self.dnsmasq.alive()
            if not due and dnsmasq_ok:
                continue
            self._settle()
            try:
                complete = self._apply()
            except Exception:
                log.exception("Failed to program DHCP; retrying in %.0f s", RETRY_INTERVAL)
                complete = False
            retry_at = None if complete else time.monotonic() + RETRY_INTERVAL

    def _settle(self) -> None:
        """Wait for a burst of changes to end (see SETTLE_QUIET)."""
        deadline = time.monotonic() + SETTLE_MAX
        while self.state.changed.is_set() and not self.stop_event.is_set():
            self.state.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.state.changed.wait(min(SETTLE_QUIET, remaining)):
                return

    def _apply(self) -> bool:
        """Program the ns- devices and dnsmasq; False if some network had to be left out (its
        device could not be set up), to be retried."""
        wanted = self.state.wanted(self.config.lease_seconds)
        if wanted is None:
            return True
        failed = self.links.ensure(wanted.interfaces)
        for name, problem in failed.items():
            if self._link_problems.get(name) != problem:
                log.warning("DHCP interface %s: %s; its network is not served", name, problem)
        for name in set(self._link_problems) - set(failed):
            log.info("DHCP interface %s is set up now", name)
        self._link_problems = dict(failed)
        if failed:
            # Every other network is still served; this one is retried every RETRY_INTERVAL.
            reduced = self.state.wanted(self.config.lease_seconds, frozenset(failed))
            assert reduced is not None
            wanted = reduced
        self.dnsmasq.apply(wanted)
        return not failed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="DHCP for Calico's routed TAP interfaces, driven by etcd"
    )
    parser.add_argument(
        "--config-file",
        action="append",
        default=[],
        help="Neutron-style ini file ([calico] etcd settings, [DEFAULT] host); repeatable, "
        "later files win",
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where dnsmasq's hosts and options files live (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--dnsmasq", default="dnsmasq", help="the dnsmasq binary")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--log-file", help="also log to this file")
    parser.add_argument(
        "--log-dhcp", action="store_true", help="have dnsmasq log every DHCP exchange"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config_file)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for warning in logs.configure(
        program=PROG,
        screen=args.log_level,
        file_path=args.log_file,
        file_level=args.log_level,
        syslog_level=None,
        stream=sys.stderr,
    ):
        log.warning("%s", warning)
    log.info(
        "Starting for host %r, etcd %s (%s)",
        config.hostname,
        ", ".join(config.etcd.endpoints),
        config.etcd_api,
    )
    client = connect(config.etcd_api, config.etcd)
    agent = DhcpAgent(client, config, Path(args.state_dir), args.dnsmasq, args.log_dhcp)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("Signal %d: stopping", signum)
        agent.stop_event.set()
        agent.state.changed.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    except ClusterIdChanged as exc:
        log.error("etcd cluster ID changed (%s): exiting to start afresh", exc)
        return EXIT_FAILED
    except Exception:
        log.exception("DHCP agent failed")
        return EXIT_FAILED
    finally:
        client.close()
    log.info("Stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
