"""What the Neutron driver writes to etcd, given already-translated values.

No Neutron imports here: the driver, the resync and the tests share this layer, and it is
tested against a real etcd without Neutron.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from calico.common.datamodel_v1 import (
    GlobalConfigKey,
    ReadyKey,
    WorkloadEndpointKey,
)
from calico.common.etcd.base import KVStore
from calico.openstack.constants import TAP_PREFIX
from calico.openstack.security_groups import profile_values
from calico.openstack.subnets import subnet_key, subnet_values
from calico.openstack.translation import dumps

log = logging.getLogger(__name__)

# Felix config the driver owns (openstack.md §3).
INTERFACE_PREFIX = GlobalConfigKey("InterfacePrefix")
ENDPOINT_REPORTING = GlobalConfigKey("EndpointReportingEnabled")
CLUSTER_GUID = GlobalConfigKey("ClusterGUID")


class CalicoStore:
    def __init__(self, client: KVStore):
        self.client = client

    def put_endpoint(self, key: WorkloadEndpointKey, data: dict[str, Any]) -> None:
        log.debug("writing endpoint %s", key.path)
        self.client.put(key.path, dumps(data))

    def delete_endpoint(self, key: WorkloadEndpointKey) -> None:
        log.debug("deleting endpoint %s", key.path)
        # A missing key is fine: the endpoint was never written or the resync removed it.
        self.client.delete(key.path)

    def cleanup_workload_dirs(self, key: WorkloadEndpointKey | str) -> None:
        """v2 leaves empty directories behind; remove .../<workload>/endpoint and
        .../<workload> if nothing else is in them (no-ops on v3). key: the endpoint's key, or
        the path of a key that does not parse (an older version's hostile device_id)."""
        path = key if isinstance(key, str) else key.path
        endpoint_dir = path.rpartition("/")[0]
        if endpoint_dir.rpartition("/")[2] != "endpoint":
            return  # not shaped like an endpoint key: leave the directories alone
        if self.client.delete_empty_dir(endpoint_dir):
            self.client.delete_empty_dir(endpoint_dir.rpartition("/")[0])

    def put_profile(
        self,
        sg_id: str,
        rules: list[dict[str, Any]],
        address_groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Write one SG's profile; Untranslatable (nothing written) for an SG whose ID cannot
        be a profile ID. Rules that cannot be translated are left out."""
        for path, value in profile_values(sg_id, rules, address_groups).items():
            self.client.put(path, value)

    def delete_profile(self, sg_id: str) -> None:
        paths = list(profile_values(sg_id, []))  # Untranslatable for an invalid ID
        # Tags first: nothing can match the group any more before its rules go.
        for path in sorted(paths, key=lambda p: not p.endswith("/tags")):
            self.client.delete(path)

    def put_subnet(self, subnet: dict[str, Any]) -> None:
        """Untranslatable (nothing written) for a subnet DHCP cannot serve."""
        for path, value in subnet_values(subnet).items():
            self.client.put(path, value)

    def delete_subnet(self, subnet_id: str) -> None:
        self.client.delete(subnet_key(subnet_id).path)

    def ensure_felix_config(self) -> None:
        """The global Felix config keys the driver is responsible for, then Ready."""
        prefix = interface_prefix_with_tap(self.client.get(INTERFACE_PREFIX.path))
        if prefix is not None:
            self.client.put(INTERFACE_PREFIX.path, prefix)
        if self.client.get(ENDPOINT_REPORTING.path) != "true":
            self.client.put(ENDPOINT_REPORTING.path, "true")
        # Written once: create-only, so two servers starting together cannot both win.
        if self.client.get(CLUSTER_GUID.path) is None:
            created = self.client.create(CLUSTER_GUID.path, uuid.uuid4().hex)
            log.info("ClusterGUID %s", "written" if created else "already written by a peer")
        if self.client.get(ReadyKey().path) != "true":
            self.client.put(ReadyKey().path, "true")


def interface_prefix_with_tap(current: str | None) -> str | None:
    """The InterfacePrefix value to write so that it contains "tap", or None if it already
    does (other orchestrators' prefixes are kept)."""
    prefixes = [p.strip() for p in (current or "").split(",") if p.strip()]
    if TAP_PREFIX in prefixes:
        return None
    return ",".join([*prefixes, TAP_PREFIX])
