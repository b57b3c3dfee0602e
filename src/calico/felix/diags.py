"""`calico-felix diags [-c FILE] [--output PATH]`: a tarball for a bug report.

It holds the resolved configuration with each value's source, the kernel state Felix
programs (iptables-save v4 and v6, ipset list, routes, links and addresses), Felix's status
keys in etcd and the tail of its log file. Each item is collected on its own: one that fails
(a missing tool, etcd down, no log file) becomes `<item>.error.txt` in the tarball and the
rest are still collected. `index.txt` lists every item and whether it worked.

Exit status: 0 the tarball was written (even with errors inside it), 1 it could not be.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import socket
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from calico.common import datamodel_v1, logs
from calico.common.etcd import connect
from calico.common.etcd.base import EtcdError, KVStore
from calico.felix.config.loader import (
    DEFAULT_CONFIG_FILE,
    Config,
    ConfigErrors,
    ConfigFileError,
    etcd_api,
    etcd_settings,
    filter_etcd,
    read_env,
    read_etcd,
    read_file,
    resolve,
)
from calico.felix.config.params import BY_NAME
from calico.felix.kernel.commands import CommandFailed, run_for_output

PROG = "calico-felix diags"
# Short: diagnostics are often wanted exactly when etcd is unwell.
ETCD_TIMEOUT = 3.0
COMMAND_TIMEOUT = 60.0
LOG_TAIL_BYTES = 1024 * 1024

# (file in the tarball, command): the state Felix programs, as the kernel reports it.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("iptables-save.txt", ("iptables-save",)),
    ("ip6tables-save.txt", ("ip6tables-save",)),
    ("ipset-list.txt", ("ipset", "list")),
    ("ip-route.txt", ("ip", "route", "show", "table", "all")),
    ("ip6-route.txt", ("ip", "-6", "route", "show", "table", "all")),
    ("ip-link.txt", ("ip", "-details", "link", "show")),
    ("ip-addr.txt", ("ip", "addr", "show")),
)


class CollectError(Exception):
    """One item could not be collected; the message goes into its error file."""


@dataclass
class Bundle:
    """The tarball's files, in order, and the index of what worked."""

    files: dict[str, bytes] = field(default_factory=dict)
    index: list[str] = field(default_factory=list)

    def add(self, name: str, collect: Callable[[], bytes | str]) -> bool:
        """Run one collector; its output becomes `name`, its failure `<name>.error.txt`."""
        try:
            data = collect()
        except CollectError as e:
            self.error(name, str(e))
            return False
        except Exception as e:  # a collector's bug must not lose the other items
            self.error(name, f"unexpected {type(e).__name__}: {e}")
            return False
        self.files[name] = data.encode() if isinstance(data, str) else data
        self.index.append(f"ok     {name}")
        return True

    def error(self, name: str, message: str) -> None:
        """Record that `name` failed (or is wrong): `<name>.error.txt` and the index."""
        stem = name.rsplit(".", 1)[0]
        self.files[f"{stem}.error.txt"] = (message.rstrip() + "\n").encode()
        self.index.append(f"ERROR  {name}: {message.splitlines()[0] if message else ''}")


# -- Configuration -----------------------------------------------------------------------------


@dataclass
class Resolved:
    """What the configuration collector learned, for the other collectors."""

    client: KVStore | None = None
    hostname: str = field(default_factory=socket.gethostname)
    log_file: str | None = BY_NAME["LogFilePath"].default


def _config_json(config: Config, problems: list[str], note: str | None) -> str:
    data: dict[str, object] = {
        "parameters": config.as_json(),
        "warnings": config.warnings,
        "problems": problems,
    }
    if note:
        data["note"] = note
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def resolve_leniently(
    env_raw: dict[str, str],
    file_raw: dict[str, str],
    host_raw: dict[str, str],
    global_raw: dict[str, str],
    file_path: str,
) -> tuple[Config | None, list[str]]:
    """The configuration as Felix resolves it, and the problems that would stop Felix.

    With bad values it resolves again without them (they then show the value they would fall
    back to, and the problems name them), so that diagnostics still find the hostname, the
    log file and etcd. None only if even that fails.
    """
    try:
        return resolve(env_raw, file_raw, host_raw, global_raw, file_path=file_path), []
    except ConfigErrors as e:
        problems = [str(p) for p in e.problems]
        bad = {p.name for p in e.problems}

    def keep(raw: dict[str, str]) -> dict[str, str]:
        return {name: value for name, value in raw.items() if name not in bad}

    try:
        config = resolve(
            keep(env_raw), keep(file_raw), keep(host_raw), keep(global_raw), file_path=file_path
        )
    except ConfigErrors:
        return None, problems
    return config, problems


def collect_config(bundle: Bundle, config_file: str, environ: Mapping[str, str]) -> Resolved:
    """config.json: env + file + etcd, as Felix would resolve them, with each value's source.

    If etcd cannot be read, config.json holds the env + file resolution (with a note) and
    config-etcd.error.txt says why. Values Felix would refuse are listed in config.json's
    "problems" and in config.error.txt.
    """
    resolved = Resolved()
    try:
        env_raw = read_env(environ)
        file_raw = read_file(config_file)
    except ConfigFileError as e:
        bundle.add("config.json", _fail(f"config file {config_file}: {e}"))
        return resolved
    local, problems = resolve_leniently(env_raw, file_raw, {}, {}, config_file)
    if local is None:
        bundle.add("config.json", _fail("\n".join(problems)))
        return resolved
    resolved.hostname = local["FelixHostname"]
    resolved.log_file = local["LogFilePath"]
    resolved.client = connect(etcd_api(local), etcd_settings(local, timeout=ETCD_TIMEOUT))

    from_etcd: list[tuple[dict[str, str], dict[str, str]]] = []

    def read_config_from_etcd() -> str:
        assert resolved.client is not None
        try:
            host_raw, global_raw = read_etcd(resolved.client, resolved.hostname)
        except EtcdError as e:
            raise CollectError(f"cannot read configuration from etcd: {e}") from None
        host_raw = filter_etcd(host_raw, f"etcd ({resolved.hostname}) host config")
        global_raw = filter_etcd(global_raw, "etcd global config")
        from_etcd.append((host_raw, global_raw))
        return json.dumps({"host": host_raw, "global": global_raw}, indent=2) + "\n"

    bundle.add("config-etcd.json", read_config_from_etcd)
    config: Config | None = local
    note = None
    if from_etcd:
        config, problems = resolve_leniently(env_raw, file_raw, *from_etcd[0], config_file)
    else:
        note = "etcd could not be read (see config-etcd.error.txt): environment and file only"
    if config is not None:
        resolved.log_file = config["LogFilePath"]
        final = config
        bundle.add("config.json", lambda: _config_json(final, problems, note))
    if problems:
        bundle.error(
            "config.json", "Felix would refuse this configuration:\n" + "\n".join(problems)
        )
    return resolved


def _fail(message: str) -> Callable[[], bytes]:
    def collect() -> bytes:
        raise CollectError(message)

    return collect


# -- Kernel state, etcd status, log ------------------------------------------------------------


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    try:
        return run_for_output(argv, timeout)
    except CommandFailed as e:
        raise CollectError(str(e)) from None


def collect_status(client: KVStore | None, hostname: str) -> str:
    """Felix's status keys (liveness, endpoint statuses) for this host, as JSON."""
    if client is None:
        raise CollectError("no usable etcd configuration (see config.error.txt)")
    prefix = datamodel_v1.felix_host_status_dir(hostname)
    try:
        snapshot = client.read_prefix(prefix)
    except EtcdError as e:
        raise CollectError(f"cannot read {prefix} from etcd: {e}") from None
    items = dict(sorted(snapshot.items.items()))
    return json.dumps({"prefix": prefix, "keys": items}, indent=2) + "\n"


def tail_file(path: str | None, max_bytes: int = LOG_TAIL_BYTES) -> bytes:
    """The last max_bytes of the file, from the first whole line."""
    if path is None:
        raise CollectError("LogFilePath is none: Felix logs to no file")
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read()
    except OSError as e:
        raise CollectError(f"cannot read log file {path}: {e}") from None
    if start > 0:
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    return data


# -- The tarball -------------------------------------------------------------------------------


def collect(config_file: str, environ: Mapping[str, str]) -> tuple[Bundle, str]:
    """Every item; returns the bundle and the hostname it was collected for."""
    bundle = Bundle()
    resolved = collect_config(bundle, config_file, environ)
    try:
        for name, argv in COMMANDS:
            bundle.add(name, functools.partial(run_command, argv))
        bundle.add("etcd-status.json", lambda: collect_status(resolved.client, resolved.hostname))
        bundle.add("felix-log-tail.txt", lambda: tail_file(resolved.log_file))
    finally:
        if resolved.client is not None:
            resolved.client.close()
    return bundle, resolved.hostname


def write_tarball(bundle: Bundle, path: str, top: str) -> None:
    """Every file under `top/`, plus index.txt; written beside `path`, then renamed."""
    now = time.time()
    files = {**bundle.files, "index.txt": ("\n".join(bundle.index) + "\n").encode()}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".diags-", suffix=".tar.gz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(data)
                info.mtime = int(now)
                info.mode = 0o600  # the config can name key files; keep the bundle private
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Collect Felix's diagnostics into a .tar.gz for a bug report."
    )
    parser.add_argument(
        "-c",
        "--config-file",
        default=DEFAULT_CONFIG_FILE,
        help=f"Felix's ini config file (default {DEFAULT_CONFIG_FILE})",
    )
    parser.add_argument(
        "-o",
        "--output",
        help="where to write the tarball (default: calico-felix-diags-HOST-TIME.tar.gz in "
        "the system's temporary directory)",
    )
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(list(argv))
    env = os.environ if environ is None else environ
    # stdout is for the tarball's path: log to stderr, at the screen level the env asks for.
    logs.configure_early(env, "FELIX_LOGSEVERITYSCREEN", stream=sys.stderr)
    bundle, hostname = collect(args.config_file, env)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    top = f"calico-felix-diags-{hostname}-{stamp}"
    output = args.output or os.path.join(tempfile.gettempdir(), f"{top}.tar.gz")
    try:
        write_tarball(bundle, output, top)
    except OSError as e:
        print(f"{PROG}: cannot write {output}: {e}", file=sys.stderr)
        return 1
    errors = [line for line in bundle.index if line.startswith("ERROR")]
    for line in errors:
        print(f"{PROG}: {line}", file=sys.stderr)
    print(output)
    return 0
