"""The `explain` command: read /calico/v1 once, explain the flow, print the verdict path."""

from __future__ import annotations

from calico.common import datamodel_v1 as dm
from calico.common.etcd.base import KVStore
from calico.ctl.connection import Local
from calico.ctl.errors import Invalid
from calico.ctl.explain import flow, report
from calico.ctl.explain.chains import ModelMismatch
from calico.ctl.explain.iptables import NeedsField, Unsupported
from calico.ctl.explain.model import LocalConfig, Snapshot
from calico.ctl.store import etcd_call

OPTION_FOR = {
    "source port": "--src-port",
    "destination port": "--port",
    "ICMP type": "--icmp-type",
    "ICMP code": "--icmp-code",
}


def load_snapshot(client: KVStore, local: Local | None) -> Snapshot:
    items = etcd_call(f"reading {dm.VERSION_DIR}", client.read_prefix, dm.VERSION_DIR).items
    config = None
    if local is not None:
        config = LocalConfig(local.hostname, local.env_raw, local.file_raw, local.config_file)
    return Snapshot(items, config)


def run(
    snapshot: Snapshot,
    src: str,
    dst: str,
    *,
    protocol: str = "tcp",
    port: int | None = None,
    src_port: int | None = None,
    icmp_type: int | None = None,
    icmp_code: int | None = None,
    ipv6: bool = False,
) -> flow.Explanation:
    source, destination, version = flow.parties(snapshot, src, dst, ipv6)
    packet = flow.make_packet(
        source, destination, version, protocol, port, src_port, icmp_type, icmp_code
    )
    try:
        return flow.explain(snapshot, source, destination, packet)
    except NeedsField as e:
        option = OPTION_FOR.get(e.field_name, "")
        raise Invalid(
            f"the verdict depends on the {e.field_name} (a rule matches {e.rule}): give {option}"
        ) from None
    except (Unsupported, ModelMismatch) as e:
        raise Invalid(f"cannot explain this flow: {e} (please report this)") from None


def main(local: Local, src: str, dst: str, fmt: str, **options: object) -> str:
    snapshot = load_snapshot(local.client(), local)
    explanation = run(snapshot, src, dst, **options)  # type: ignore[arg-type]
    return report.as_json(explanation) if fmt == "json" else report.as_text(explanation)
