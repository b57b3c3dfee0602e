"""A real Neutron API server for tests (neutron-testing.md, Recipe A): sqlite, noauth, the
WSGI app served by wsgiref on 127.0.0.1, plus neutron-periodic-workers for the driver's
workers. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from calico.lab.etcd_server import free_port

# Run in a child: serves neutron.wsgi.api:application (Neutron 29 has no neutron-server).
_SERVE = """
import socketserver, sys
from wsgiref import simple_server
sys.argv = [sys.argv[0]]  # Neutron parses sys.argv itself
from neutron.wsgi import api
import sqlalchemy.orm
sqlalchemy.orm.configure_mappers()  # obstacle 3: Port.port_forwardings on the first request

class Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True

class Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass

simple_server.make_server("127.0.0.1", int(sys.argv_port), api.application,
                          server_class=Server, handler_class=Quiet).serve_forever()
"""

# The API server and the periodic-workers process share one sqlite file. WAL mode (kept in
# the file) lets readers proceed while one writes, and a 30 s busy timeout makes a writer wait
# for the other's lock instead of failing at once with "database is locked" on a busy machine.
_SCHEMA = """
import sys, sqlalchemy
from neutron.db.migration.models import head
engine = sqlalchemy.create_engine(sys.argv[1])
head.get_metadata().create_all(engine)
with engine.connect() as conn:
    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
"""
SQLITE_TIMEOUT_SECS = 30
SQLITE_LOCK_RETRIES = 4
QUOTA_DRIVER_NULL = "neutron.db.quota.driver_null.DbQuotaDriverNull"

# The default security-group rule templates that Neutron's migration c33da356b165 inserts as
# data (so a schema made by create_all lacks them): without them a new security group would
# have no rules at all, where a real Neutron gives every group egress-anywhere rules and the
# project's "default" group also ingress from its own members.
DEFAULT_SG_RULE_TEMPLATES: tuple[dict[str, Any], ...] = (
    {"direction": "egress", "ethertype": "IPv4", "used_in_non_default_sg": True},
    {"direction": "egress", "ethertype": "IPv6", "used_in_non_default_sg": True},
    {
        "direction": "ingress",
        "ethertype": "IPv4",
        "remote_group_id": "PARENT",
        "used_in_non_default_sg": False,
    },
    {
        "direction": "ingress",
        "ethertype": "IPv6",
        "remote_group_id": "PARENT",
        "used_in_non_default_sg": False,
    },
)


class NeutronServer:
    def __init__(
        self,
        work_dir: Path,
        etcd_port: int,
        *,
        core_plugin: str = "calico",
        extra_config: str = "",
    ):
        """`extra_config`: more neutron.conf sections (e.g. [ml2] for core_plugin = ml2)."""
        self.work_dir = work_dir
        self.etcd_port = etcd_port
        self.core_plugin = core_plugin
        self.extra_config = extra_config
        self.port = free_port()
        self.bin_dir = Path(sys.executable).parent
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2.0"

    def _write_config(self) -> None:
        w = self.work_dir
        for d in ("etc", "state", "log", "lock"):
            (w / d).mkdir(parents=True, exist_ok=True)
        paste = Path(sys.prefix) / "etc" / "neutron" / "api-paste.ini"
        shutil.copy(paste, w / "etc" / "api-paste.ini")
        (w / "etc" / "neutron.conf").write_text(
            f"""[DEFAULT]
core_plugin = {self.core_plugin}
service_plugins =
auth_strategy = noauth
transport_url = fake:/
state_path = {w}/state
api_paste_config = {w}/etc/api-paste.ini
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
debug = true
host = ctl-host

[database]
connection = sqlite:///{w}/state/neutron.sqlite?timeout={SQLITE_TIMEOUT_SECS}

[oslo_concurrency]
lock_path = {w}/lock

[quotas]
# No quota reservations: with the default driver every create ends with a second write
# transaction (the reservation's removal) after the resource is committed; on the lab's
# sqlite that write can fail with "database is locked", giving a 500 for a resource that
# exists, which call() could then not retry. Quotas are not what this lab tests.
quota_driver = {QUOTA_DRIVER_NULL}

[calico]
etcd_host = 127.0.0.1
etcd_port = {self.etcd_port}
{self.extra_config}"""
        )

    def _run(self, argv: list[str]) -> None:
        subprocess.run(argv, check=True, cwd=self.work_dir, capture_output=True, timeout=120)

    def _spawn(self, argv: list[str], log_name: str, env: dict[str, str]) -> None:
        log = (self.work_dir / "log" / log_name).open("wb")
        self.procs.append(
            subprocess.Popen(
                argv,
                cwd=self.work_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def start(self, timeout: float = 90.0) -> NeutronServer:
        self._write_config()
        conf = str(self.work_dir / "etc" / "neutron.conf")
        db = f"sqlite:///{self.work_dir}/state/neutron.sqlite"
        self._run([sys.executable, "-c", _SCHEMA, db])
        self._run(
            [str(self.bin_dir / "neutron-db-manage"), "--config-file", conf, "stamp", "heads"]
        )
        env = dict(
            os.environ,
            OS_NEUTRON_CONFIG_DIR=str(self.work_dir / "etc"),
            OS_NEUTRON_CONFIG_FILES="neutron.conf",
        )
        serve = _SERVE.replace("sys.argv_port", repr(self.port))
        self._spawn([sys.executable, "-c", serve], "server.log", env)
        self._spawn(
            [
                str(self.bin_dir / "neutron-periodic-workers"),
                "--config-file",
                conf,
                "--log-file",
                str(self.work_dir / "log" / "periodic.log"),
            ],
            "periodic.out",
            env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"neutron process exited: {proc.args!r}\n{self.logs()}")
            try:
                answered = requests.get(f"{self.url}/networks", timeout=5).status_code == 200
            except requests.RequestException:
                answered = False
            if answered:
                self._add_default_sg_rule_templates()
                return self
            time.sleep(0.5)
        raise RuntimeError(f"neutron API did not answer in {timeout} s\n{self.logs()}")

    def _add_default_sg_rule_templates(self) -> None:
        """What the skipped migration would have inserted (DEFAULT_SG_RULE_TEMPLATES)."""
        for template in DEFAULT_SG_RULE_TEMPLATES:
            body = {"default_security_group_rule": {**template, "used_in_default_sg": True}}
            self.call("POST", "default-security-group-rules", body)

    def logs(self, lines: int = 40) -> str:
        out = []
        for name in ("server.log", "periodic.out", "periodic.log"):
            path = self.work_dir / "log" / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM each process group we started (by PID), then SIGKILL stragglers."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        self.procs.clear()

    def __enter__(self) -> NeutronServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- REST --------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call. sqlite (this lab's database, shared by the API server and the
        periodic-workers process) refuses a transaction that would have to wait for the other
        process's write lock with an immediate "database is locked" (no busy wait is possible
        for a read transaction upgrading to a write); Neutron then answers 500 after rolling
        back. Only that case is retried, a few times: it is the lab's database, not the
        driver, and MySQL in production has row locks instead."""
        for attempt in range(SQLITE_LOCK_RETRIES + 1):
            log_size = self._server_log().stat().st_size
            response = requests.request(method, f"{self.url}/{path}", json=body, timeout=60)
            if response.status_code < 300:
                return response.json() if response.content else None
            locked = response.status_code == 500 and self._locked_since(log_size)
            if not locked or attempt == SQLITE_LOCK_RETRIES:
                break
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text}")

    def external_network(self, cidr: str, internal_subnet_id: str) -> dict[str, Any]:
        """A flat external network with a subnet of `cidr`, and a router from it to the
        internal subnet: what a floating IP needs. Returns the external network."""
        ext = self.call(
            "POST",
            "networks",
            {
                "network": {
                    "name": "public",
                    "router:external": True,
                    "provider:network_type": "flat",
                    "provider:physical_network": "public",
                }
            },
        )["network"]
        subnet = {"network_id": ext["id"], "ip_version": 4, "cidr": cidr, "enable_dhcp": False}
        self.call("POST", "subnets", {"subnet": subnet})
        gateway = {"name": "r", "external_gateway_info": {"network_id": ext["id"]}}
        router = self.call("POST", "routers", {"router": gateway})["router"]
        interface = {"subnet_id": internal_subnet_id}
        self.call("PUT", f"routers/{router['id']}/add_router_interface", interface)
        return ext

    def _server_log(self) -> Path:
        return self.work_dir / "log" / "server.log"

    def _locked_since(self, offset: int) -> bool:
        with self._server_log().open("rb") as f:
            f.seek(offset)
            return b"database is locked" in f.read()
