"""A Kubernetes node in the lab: a compute host namespace (calico.lab.topology) whose Felix uses
the Kubernetes datastore of a lab API server (calico.lab.kube_apiserver), and pods as VMs.

Felix finds the API the way it would in a pod: `KUBERNETES_SERVICE_HOST` / `_PORT` (127.0.0.1 and
the server's port, which the host's loopback relay forwards to the root namespace's loopback) and a
service account directory with a token and `ca.crt` (`K8S_SERVICE_ACCOUNT_DIR`, this project's
override of /var/run/secrets/kubernetes.io/serviceaccount). The token may only get, list and watch,
which is all Felix needs. A pod's VM is joined to the host by a veth whose host end has the name
Calico's CNI plugin gives it (`cali` + SHA-1 of "<namespace>.<pod>"), and the pod object carries
the VM's address as its `podIP`, as the CNI plugin and the kubelet would report it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from calico.k8s.names import interface_name
from calico.lab.felix import FelixProcess
from calico.lab.kube_apiserver import Identity, KubeApiServer, reader
from calico.lab.kube_objects import Cluster
from calico.lab.topology import ComputeHost, Workload

FELIX_USER = "system:serviceaccount:kube-system:calico-node"


class KubeNode:
    def __init__(
        self,
        server: KubeApiServer,
        work_dir: Path,
        node_name: str = "node-1",
        prefix: str = "k8s",
        host: ComputeHost | None = None,
    ) -> None:
        """`host`: a compute host already made with `server` as its relay target (else one is)."""
        if server.tls is None:
            raise ValueError("the lab API server must serve TLS (a pod always uses https)")
        self.server = server
        self.cluster = Cluster(server.store)
        self.node_name = node_name
        self.work_dir = work_dir
        self.token = secrets.token_urlsafe(24)
        tokens = dict(server.tokens or {})
        tokens[self.token] = reader(FELIX_USER)
        server.tokens = tokens
        self.account = work_dir / "serviceaccount"
        self.account.mkdir(parents=True, exist_ok=True)
        (self.account / "token").write_text(self.token)
        (self.account / "ca.crt").write_bytes(server.tls.ca_file.read_bytes())
        # The host's loopback relay reaches the server: ComputeHost needs only its port.
        self.host = host or ComputeHost(
            server, hostname=node_name, name_prefix=prefix, work_dir=work_dir
        )
        self.pods: dict[str, Workload] = {}

    def add_pod(
        self,
        ns: str,
        name: str,
        ip: str,
        labels: Mapping[str, str] | None = None,
        write: bool = True,
    ) -> Workload:
        """A VM standing in for pod `ns/name` on this node (its veth named as Calico's CNI names
        it) and, with `write`, the pod in the API (scheduled here, Running, with `ip`)."""
        vm = Workload(self.host, ip, None, label=f"pod-{name}"[:20], plugged=False)
        vm.tap = interface_name(ns, name)
        vm.plug()
        self.host.workloads.append(vm)
        self.pods[f"{ns}/{name}"] = vm
        if write:
            self.cluster.pod(ns, name, self.node_name, [ip], labels)
        return vm

    def felix_env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FELIX_", "K8S_", "CALICO_", "KUBE"))
        }
        env.update(
            {
                "FELIX_DATAPLANEDRIVER": "kubernetes",
                "FELIX_FELIXHOSTNAME": self.node_name,
                "FELIX_INTERFACEPREFIX": "cali",
                "FELIX_IPTABLESREFRESHINTERVAL": "5",
                "FELIX_LOGFILEPATH": "none",
                "FELIX_LOGSEVERITYSYS": "none",
                "FELIX_LOGSEVERITYSCREEN": "INFO",
                "FELIX_USAGEREPORTINGENABLED": "false",
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(self.server.port),
                "K8S_SERVICE_ACCOUNT_DIR": str(self.account),
            }
        )
        env.update(extra)
        return env

    def start_felix(self, args: tuple[str, ...] | None = None, **extra: str) -> FelixProcess:
        output = self.work_dir / f"felix-{len(self.host.felixes)}.log"
        argv = args if args is not None else ("-c", str(self.work_dir / "absent.cfg"))
        felix = FelixProcess(self.host.ns, self.felix_env(**extra), output, argv)
        self.host.felixes.append(felix)
        return felix

    def grant(self, token: str, identity: Identity) -> None:
        tokens = dict(self.server.tokens or {})
        tokens[token] = identity
        self.server.tokens = tokens

    def close(self) -> None:
        self.host.close()
