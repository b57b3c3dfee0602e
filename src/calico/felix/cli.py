"""`calico-felix`: start-up (configuration from its four sources, Ready wait, host checks)
and `--show-config`.

Exit status: 0 stopped by a signal (or --show-config succeeded); 1 a runtime failure the
service manager should restart us for; 2 bad configuration or an unusable host, which a
restart will not cure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version

from calico.common import heap, logs
from calico.common.etcd import connect
from calico.common.etcd.base import EtcdError, EtcdUnavailable, KVStore
from calico.common.etcd.syncer import Backoff, wait_for_ready
from calico.felix import diags, metrics, startup_checks, usage
from calico.felix.calc.graph import CalcGraph
from calico.felix.config.changes import ConfigChangeDetector
from calico.felix.config.loader import (
    DEFAULT_CONFIG_FILE,
    Config,
    ConfigErrors,
    ConfigFileError,
    Source,
    etcd_api,
    etcd_settings,
    filter_etcd,
    read_env,
    read_etcd,
    read_file,
    resolve,
)
from calico.felix.daemon import EXIT_STOPPED, FelixDaemon
from calico.felix.driver.config import DriverConfig
from calico.felix.driver.connection import DriverProcess
from calico.felix.status import StatusReporter
from calico.k8s import felix as kdd
from calico.k8s.client import KubeClient, KubeError
from calico.k8s.settings import SettingsError

log = logging.getLogger("calico.felix")

PROG = "calico-felix"
EXIT_BAD_CONFIG = 2
EXIT_ETCD_UNREACHABLE = 1
SHOW_CONFIG_ETCD_DEADLINE = 10.0


def _version() -> str:
    try:
        return version("calico-openstack-py")
    except PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Calico per-host agent",
        epilog=f"`{PROG} diags --help`: collect diagnostics into a tarball",
    )
    parser.add_argument(
        "-c",
        "--config-file",
        default=DEFAULT_CONFIG_FILE,
        help=f"ini config file (default {DEFAULT_CONFIG_FILE}; a missing file is fine)",
    )
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="resolve the configuration from all sources, print it as JSON and exit",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    return parser


def _fail(lines: Sequence[str], code: int) -> int:
    for line in lines:
        print(f"{PROG}: {line}", file=sys.stderr)
    return code


def _config_errors(e: ConfigErrors) -> int:
    return _fail([f"configuration error: {p}" for p in e.problems], EXIT_BAD_CONFIG)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["diags"]:  # `calico-felix diags [...]`: see diags.py
        return diags.main(args[1:], environ)
    try:
        return _main(argv, environ)
    except EtcdError as e:
        return _fail([f"etcd error: {e}"], EXIT_ETCD_UNREACHABLE)


def _main(argv: Sequence[str] | None, environ: Mapping[str, str] | None) -> int:
    started_at = time.monotonic()  # the origin of the uptime in status reports
    heap.fix_mmap_threshold()
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    # With --show-config, stdout carries the JSON: log to stderr.
    logs.configure_early(
        env, "FELIX_LOGSEVERITYSCREEN", stream=sys.stderr if args.show_config else None
    )

    # Phase 1: environment and file, enough to reach etcd.
    try:
        env_raw = read_env(env)
        file_raw = read_file(args.config_file)
        local = resolve(env_raw, file_raw, file_path=args.config_file)
    except ConfigFileError as e:
        return _fail([f"configuration error: {e}"], EXIT_BAD_CONFIG)
    except ConfigErrors as e:
        return _config_errors(e)

    if args.show_config:
        return _show_config(local, env_raw, file_raw, args.config_file, env)

    _configure_logging(local)
    log.info("%s %s starting (pid %d)", PROG, _version(), os.getpid())
    kube: KubeClient | None = None
    client: KVStore | None = None
    if local["DataplaneDriver"] == "kubernetes":
        try:
            kube = _kube_client(local, env)
        except SettingsError as e:
            return _fail([f"configuration error: {e}"], EXIT_BAD_CONFIG)
    else:
        client = connect(etcd_api(local), etcd_settings(local))
    stop = threading.Event()
    daemon: list[FelixDaemon] = []

    def on_signal(signum: int, _frame: object) -> None:
        log.info("Received signal %d", signum)
        stop.set()
        if daemon:
            daemon[0].request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Phase 2: wait for Ready, then add etcd's config (or the Kubernetes API's).
    if kube is not None:
        etcd_raw = _filtered(kdd.read_config_until(kube, local["FelixHostname"], stop, None))
    else:
        assert client is not None
        if not wait_for_ready(client, stop):
            return EXIT_STOPPED
        etcd_raw = _read_etcd_until(client, local["FelixHostname"], stop, deadline=None)
    if etcd_raw is None:
        return EXIT_STOPPED
    host_raw, global_raw = etcd_raw
    try:
        config = resolve(env_raw, file_raw, host_raw, global_raw, file_path=args.config_file)
    except ConfigErrors as e:
        return _config_errors(e)
    _configure_logging(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    for name, setting in config.items():
        log.info("Config: %s = %r (from %s)", name, setting.value, setting.source)

    errors, warnings = startup_checks.check_host(config["IgnoreLooseRPF"])
    for warning in warnings:
        log.warning("%s", warning)
    if errors:
        return _fail([f"cannot start: {e}" for e in errors], EXIT_BAD_CONFIG)

    changes = ConfigChangeDetector(
        config, env_raw, file_raw, host_raw, global_raw, args.config_file
    )
    graph = CalcGraph(config["FelixHostname"], config["InterfacePrefix"])
    usage.start_if_enabled(config, _version(), graph.num_hosts)
    if config["PrometheusMetricsEnabled"]:
        metrics.serve(config["PrometheusMetricsPort"])
    reporter: StatusReporter | None = None
    if kube is None:
        # The reporter has its own etcd client: its writes never wait behind the syncer's watch.
        reporter = StatusReporter(
            connect(etcd_api(config), etcd_settings(config)),
            config["FelixHostname"],
            interval=config["ReportingIntervalSecs"],
            ttl=config["ReportingTTLSecs"],
            endpoint_reporting=config["EndpointReportingEnabled"],
            endpoint_delay=config["EndpointReportingDelaySecs"],
            started_at=started_at,
        )
        reporter.start()
    else:
        log.info("Kubernetes datastore: no liveness or endpoint status is reported (as Calico's)")
    driver = DriverProcess(
        DriverConfig.from_params(config.values()),
        on_exit=lambda reason: daemon[0].fatal(reason),  # noqa: PLW0108 (late: daemon[0] is set below)
        on_report=reporter.on_driver_report if reporter is not None else lambda _report: None,
    )
    try:
        factory = kdd.syncer_factory(kube) if kube is not None else None
        daemon.append(FelixDaemon(client, changes, graph, driver, syncer_factory=factory))
        if stop.is_set():
            return EXIT_STOPPED
        return daemon[0].run()
    finally:
        driver.stop()
        if reporter is not None:
            reporter.stop()


def _configure_logging(config: Config) -> None:
    for warning in logs.configure(
        program=PROG,
        screen=config["LogSeverityScreen"],
        file_path=config["LogFilePath"],
        file_level=config["LogSeverityFile"],
        syslog_level=config["LogSeveritySys"],
    ):
        log.warning("%s", warning)


def _kube_client(local: Config, env: Mapping[str, str]) -> KubeClient:
    """The Kubernetes API client (DataplaneDriver=kubernetes); says the etcd parameters are
    unused. SettingsError when the environment names no usable API server."""
    kube = kdd.connect(env)
    log.info("Kubernetes datastore: API server %s", kube.settings.describe())
    log.info(
        "Kubernetes datastore: the etcd parameters (%s) are not used", ", ".join(kdd.ETCD_PARAMS)
    )
    for name in kdd.ETCD_PARAMS:
        if local.source(name) != Source.DEFAULT:
            log.warning(
                "%s is set (from %s) but not used with the Kubernetes datastore",
                name,
                local.source(name),
            )
    return kube


def _filtered(
    raw: tuple[dict[str, str], dict[str, str]] | None,
) -> tuple[dict[str, str], dict[str, str]] | None:
    """The Kubernetes datastore's (host, global) config without local-only or unknown names."""
    if raw is None:
        return None
    return filter_etcd(raw[0], "Kubernetes host config"), filter_etcd(raw[1], "GlobalFelixConfig")


def _read_etcd_until(
    client: KVStore, hostname: str, stop: threading.Event, deadline: float | None
) -> tuple[dict[str, str], dict[str, str]] | None:
    """etcd's (host, global) config, retrying until it answers; None when stopped or too late."""
    backoff = Backoff(maximum=2.0)
    while not stop.is_set():
        try:
            host_raw, global_raw = read_etcd(client, hostname)
        except EtcdUnavailable as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            log.warning("etcd unavailable reading config: %s", e)
            client.rotate()
            delay = backoff.next_delay()
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            stop.wait(delay)
            continue
        where = f"etcd ({hostname})"
        return (
            filter_etcd(host_raw, f"{where} host config"),
            filter_etcd(global_raw, "etcd global config"),
        )
    return None


def _show_config(
    local: Config,
    env_raw: dict[str, str],
    file_raw: dict[str, str],
    file_path: str,
    env: Mapping[str, str],
) -> int:
    if local["DataplaneDriver"] == "kubernetes":
        try:
            kube = kdd.connect(env)
            deadline = time.monotonic() + SHOW_CONFIG_ETCD_DEADLINE
            etcd_raw = _filtered(
                kdd.read_config_until(kube, local["FelixHostname"], threading.Event(), deadline)
            )
        except SettingsError as e:
            return _fail([f"configuration error: {e}"], EXIT_BAD_CONFIG)
        except KubeError as e:
            return _fail(
                [
                    f"cannot read configuration from the Kubernetes API within "
                    f"{SHOW_CONFIG_ETCD_DEADLINE:.0f} s: {e}"
                ],
                EXIT_ETCD_UNREACHABLE,
            )
        assert etcd_raw is not None
        return _print_config(etcd_raw, env_raw, file_raw, file_path)
    client = connect(etcd_api(local), etcd_settings(local, timeout=3.0))
    deadline = time.monotonic() + SHOW_CONFIG_ETCD_DEADLINE
    try:
        etcd_raw = _read_etcd_until(client, local["FelixHostname"], threading.Event(), deadline)
    except EtcdError as e:
        endpoints = ",".join(local["EtcdEndpoints"])
        return _fail(
            [
                f"cannot read configuration from etcd at {endpoints} within "
                f"{SHOW_CONFIG_ETCD_DEADLINE:.0f} s: {e}"
            ],
            EXIT_ETCD_UNREACHABLE,
        )
    finally:
        client.close()
    assert etcd_raw is not None
    return _print_config(etcd_raw, env_raw, file_raw, file_path)


def _print_config(
    etcd_raw: tuple[dict[str, str], dict[str, str]],
    env_raw: dict[str, str],
    file_raw: dict[str, str],
    file_path: str,
) -> int:
    host_raw, global_raw = etcd_raw
    try:
        config = resolve(env_raw, file_raw, host_raw, global_raw, file_path=file_path)
    except ConfigErrors as e:
        return _config_errors(e)
    for warning in config.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    print(json.dumps(config.as_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
