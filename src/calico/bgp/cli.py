"""`calico-bgp`: BIRD's configuration from etcd on one compute host, and `calico-bgp status`.

The etcd connection and the host name come from Felix's configuration, read exactly as Felix
reads it (`calico.felix.config.loader`: `-c/--config-file`, the `FELIX_*` environment;
EtcdEndpoints / EtcdAddr / EtcdScheme, the TLS files, FelixHostname, DataplaneDriver etcdv2 or
etcdv3). Logs go to stderr (the journal, under systemd).

Exit status: 0 stopped by SIGTERM/SIGINT; 1 a reason to be restarted (no address could be
detected yet, the etcd cluster ID changed, a syncer failed); 2 bad configuration or options,
or no `bird` binary, which a restart will not cure. `calico-bgp status`: 0 when BIRD answered,
1 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from calico.bgp import detect, metrics, registration
from calico.bgp.birdctl import BirdControl, BirdError, BirdUnavailable, safe_path
from calico.bgp.config_file import ConfigFile
from calico.bgp.daemon import EXIT_RESTART, EXIT_STOPPED, PREFIXES, BgpDaemon
from calico.bgp.model import parse_as_num, usable_address
from calico.bgp.peers import LocalHost
from calico.bgp.render import RenderOptions, UnsafeValue
from calico.bgp.status import format_status, parse_protocols
from calico.common import datamodel_v1, logs
from calico.common.etcd import connect
from calico.common.etcd.base import EtcdError, EtcdUnavailable, KVStore
from calico.common.etcd.syncer import Backoff
from calico.common.resources import InvalidValue
from calico.felix.config.loader import (
    DEFAULT_CONFIG_FILE,
    ConfigErrors,
    ConfigFileError,
    etcd_api,
    etcd_settings,
    read_env,
    read_file,
    resolve,
)

log = logging.getLogger("calico.bgp")

PROG = "calico-bgp"
EXIT_BAD_CONFIG = 2
DEFAULT_BIRD_CONFIG = "/etc/bird/bird.conf"
DEFAULT_BIRD_SOCKET = "/run/bird/bird.ctl"
AUTODETECT = "autodetect"
ETCD_DRIVERS = ("etcdv2", "etcdv3")


class _Bad(Exception):
    """A bad option: print it and exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="BIRD's BGP configuration from etcd, for one Calico compute host",
        epilog=f"`{PROG} status`: this host's BGP peers and their state, from BIRD",
    )
    add = parser.add_argument
    add("-c", "--config-file", default=DEFAULT_CONFIG_FILE,
        help=f"Felix's ini file, for the etcd connection and FelixHostname (default "
             f"{DEFAULT_CONFIG_FILE}; FELIX_* variables override it, as for Felix)")  # fmt: skip
    add("--ip", default=AUTODETECT,
        help="this host's IPv4 BGP address, 'none', or 'autodetect' (the default: the address "
             "of the default route's interface)")  # fmt: skip
    add("--ip6", default=AUTODETECT, help="the same for IPv6")
    add("--as-number", help="write this host's AS number to etcd at start (else etcd decides)")
    add(
        "--bird-config",
        default=DEFAULT_BIRD_CONFIG,
        help=f"the file calico-bgp writes and BIRD reads (default {DEFAULT_BIRD_CONFIG})",
    )
    add(
        "--bird-socket",
        default=DEFAULT_BIRD_SOCKET,
        help=f"BIRD's control socket (default {DEFAULT_BIRD_SOCKET})",
    )
    add(
        "--bird-log",
        default="syslog",
        help="where the rendered file makes BIRD log: syslog (default), stderr or a file path",
    )
    add("--bird", default="bird", help="the BIRD binary used to check the file (bird -p)")
    add(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port (default 0: off; 9094 is suggested)",
    )
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="calico-bgp's own log level on stderr (default INFO)")  # fmt: skip
    add(
        "--poll-interval",
        type=float,
        default=5.0,
        help="seconds between reads of BIRD's sessions for the metrics (default 5)",
    )
    return parser


def _status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} status", description="BGP peers from BIRD")
    parser.add_argument("--bird-socket", default=DEFAULT_BIRD_SOCKET)
    parser.add_argument("--timeout", type=float, default=5.0)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:
        return status_main(args[1:])
    env = os.environ if environ is None else environ
    try:
        return _main(_parser().parse_args(args), env)
    except _Bad as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG


def status_main(argv: Sequence[str]) -> int:
    args = _status_parser().parse_args(argv)
    bird = BirdControl(args.bird_socket, timeout=args.timeout)
    try:
        version = bird.version()
        protocols = parse_protocols(bird.show_protocols())
    except (BirdUnavailable, BirdError) as e:
        print(f"{PROG}: BIRD cannot be reached at {args.bird_socket}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(format_status(protocols, version))
    return 0


def _address(option: str, value: str, version: int) -> str | None:
    """The address an option gives (None: 'none'); AUTODETECT is handled by the caller."""
    if value == "none":
        return None
    try:
        return usable_address(value, version, option)
    except InvalidValue as e:
        raise _Bad(f"{option}: {e}") from None


def _detect(version: int) -> str | None:
    found = detect.detect(version)
    if found is None:
        log.info("No IPv%d address detected (no default route, or no usable address on its "
                 "interface)", version)  # fmt: skip
        return None
    log.info("Using IPv%d address %s: %s", version, found.address, found.method)
    return found.address


def _main(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    for warning in logs.configure(
        program=PROG,
        screen=args.log_level,
        file_path=None,
        file_level=None,
        syslog_level=None,
        stream=sys.stderr,
    ):
        log.warning("%s", warning)
    try:
        config = resolve(read_env(env), read_file(args.config_file), file_path=args.config_file)
    except ConfigFileError as e:
        raise _Bad(f"configuration error: {e}") from None
    except ConfigErrors as e:
        raise _Bad("\n".join(f"configuration error: {p}" for p in e.problems)) from None
    if config["DataplaneDriver"] not in ETCD_DRIVERS:
        raise _Bad(
            f"DataplaneDriver {config['DataplaneDriver']!r}: calico-bgp reads /calico/bgp/v1 "
            f"from etcd; use {' or '.join(ETCD_DRIVERS)}"
        )
    hostname = config["FelixHostname"]
    if not datamodel_v1.valid_id(hostname):
        raise _Bad(f"FelixHostname {hostname!r}: need {datamodel_v1.ID_SEGMENT_RULE}")
    if not args.poll_interval > 0 or not 0 <= args.metrics_port <= 65535:
        raise _Bad("--poll-interval must be positive and --metrics-port a port (0: off)")
    as_num = None
    if args.as_number is not None:
        try:
            as_num = parse_as_num(args.as_number, "--as-number")
        except InvalidValue as e:
            raise _Bad(str(e)) from None
    try:
        options = RenderOptions(log=args.bird_log)
        bird = BirdControl(args.bird_socket)
        config_file = ConfigFile(args.bird_config, args.bird)
    except (UnsafeValue, FileNotFoundError) as e:
        raise _Bad(str(e)) from None
    if not safe_path(args.bird_config):
        raise _Bad(f"--bird-config {args.bird_config!r}: need an absolute path of [A-Za-z0-9_./-]")

    log.info("%s starting (pid %d) for host %s", PROG, os.getpid(), hostname)
    ip4 = _detect(4) if args.ip == AUTODETECT else _address("--ip", args.ip, 4)
    ip6 = _detect(6) if args.ip6 == AUTODETECT else _address("--ip6", args.ip6, 6)
    if ip4 is None and ip6 is None:
        if AUTODETECT not in (args.ip, args.ip6):
            raise _Bad("--ip none and --ip6 none: this host would have no BGP address")
        log.error("No BGP address for this host: give --ip or --ip6")
        return EXIT_RESTART
    local = detect.local_addresses()
    for address in (ip4, ip6):
        if address is not None and address not in local:
            log.warning("%s is not an address of this host: BIRD cannot open sessions from it",
                        address)  # fmt: skip

    api, settings = etcd_api(config), etcd_settings(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("Received signal %d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    client = connect(api, settings)
    if not _register_until(client, hostname, ip4, ip6, as_num, stop):
        return EXIT_STOPPED
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    daemon = BgpDaemon(
        {prefix: connect(api, settings) for prefix in PREFIXES},
        LocalHost(hostname, ip4, ip6),
        config_file,
        bird,
        options,
        poll_interval=args.poll_interval,
    )
    return daemon.run(stop)


def _register_until(
    client: KVStore,
    hostname: str,
    ip4: str | None,
    ip6: str | None,
    as_num: int | None,
    stop: threading.Event,
) -> bool:
    """Register, retrying while etcd does not answer; False if stopped first."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            registration.register(client, hostname, ip4, ip6, as_num)
            return True
        except EtcdUnavailable as e:
            log.warning("etcd unavailable while registering: %s", e)
            client.rotate()
        except EtcdError as e:
            log.error("etcd refused the registration: %s", e)
        stop.wait(backoff.next_delay())
    return False


if __name__ == "__main__":
    sys.exit(main())
