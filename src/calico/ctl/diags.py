"""`calicoctl diags`: what an operator sends when asking for help, in one .tar.gz.

Felix's own diagnostics (`calico.felix.diags`: the resolved configuration with sources, the
kernel state Felix programs, its status keys and log tail) plus calicoctl's view of etcd: every
resource (YAML), the Felix configuration in etcd, this host's node status and the detailed
endpoint listing. Each item is collected on its own; one that fails becomes
`<item>.error.txt` and the others are still collected.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping

from calico.ctl import endpoint_show, felix_config, node, resource_commands
from calico.ctl.connection import Local
from calico.ctl.errors import CtlError, Refused
from calico.felix import diags as felix_diags


def _item(local: Local, produce: Callable[[], str]) -> Callable[[], str]:
    def collect() -> str:
        try:
            return produce()
        except CtlError as e:
            raise felix_diags.CollectError("\n".join(e.lines)) from None

    return collect


def collect(local: Local, environ: Mapping[str, str]) -> tuple[felix_diags.Bundle, str]:
    bundle, hostname = felix_diags.collect(local.config_file, environ)

    def resources() -> str:
        client = local.client()
        parts = [
            resource_commands.get(client, kind, None, {}, "yaml")
            for kind in resource_commands.KINDS
        ]
        return "---\n".join(part for part in parts if part)

    items: dict[str, Callable[[], str]] = {
        "calicoctl-resources.yaml": resources,
        "calicoctl-config.txt": lambda: felix_config.get(local.client(), None, None, "table"),
        "calicoctl-node-status.txt": lambda: node.status(
            local.client(), local.hostname, local.hostname, "table"
        ),
        "calicoctl-endpoints.txt": lambda: endpoint_show.show(
            local.client(), local, None, None, None, None, True, "table"
        ),
    }
    for name, produce in items.items():
        bundle.add(name, _item(local, produce))
    return bundle, hostname


def main(local: Local, environ: Mapping[str, str], path: str | None) -> str:
    bundle, hostname = collect(local, environ)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    top = f"calicoctl-diags-{hostname}-{stamp}"
    output = path or os.path.join(tempfile.gettempdir(), f"{top}.tar.gz")
    try:
        felix_diags.write_tarball(bundle, output, top)
    except OSError as e:
        raise Refused(f"cannot write {output}: {e}") from None
    for line in bundle.index:
        if line.startswith("ERROR"):
            print(f"calicoctl diags: {line}", file=sys.stderr)
    return f"{output}\n"
