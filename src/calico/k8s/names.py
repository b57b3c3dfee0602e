"""Kubernetes names and labels, validated, and the Calico IDs derived from them. Pure.

Everything the API server sends is hostile until checked here (docs/design/security.md): a name
becomes a key segment, an interface name, a rule comment; a label key or value becomes selector
text. The checks are the API server's own rules (apimachinery's `IsDNS1123Label`,
`IsDNS1123Subdomain`, `IsQualifiedName`, `IsValidLabelValue`), which are all narrower than what a
v1 key segment (`datamodel_v1.valid_id`) or a selector label and literal accept, so anything a real
API server stores passes, and nothing that passes can change the structure of a key or a
selector. An object that fails is `Unmappable`: the caller leaves it out and logs it once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from calico.common.datamodel_v1 import valid_id
from calico.common.quoting import quoted
from calico.common.selectors import LABEL_NAME_RE

# The label Calico adds to every pod's endpoint: the pod's namespace.
NAMESPACE_LABEL = "calico/k8s_ns"
# A namespace's labels reach its pods (profile label inheritance) under this prefix.
NAMESPACE_LABEL_PREFIX = "pcns."
ORCHESTRATOR = "k8s"
ENDPOINT_ID = "eth0"
PROFILE_PREFIX = "k8s_ns."
POLICY_PREFIX = "knp.default."
INTERFACE_PREFIX = "cali"

_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
DNS_LABEL_RE = re.compile(_DNS_LABEL)
DNS_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
DNS_SUBDOMAIN_MAX = 253
_LABEL_NAME_PART_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE_RE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


class Unmappable(ValueError):
    """An object (or part of one) that cannot be mapped; the message says why, quoting the input."""


def is_dns_label(value: object) -> bool:
    return isinstance(value, str) and DNS_LABEL_RE.fullmatch(value) is not None


def is_dns_subdomain(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= DNS_SUBDOMAIN_MAX
        and DNS_SUBDOMAIN_RE.fullmatch(value) is not None
    )


def is_label_key(value: object) -> bool:
    """A qualified name: `[prefix/]name`, prefix a DNS subdomain, name 1-63 characters."""
    if not isinstance(value, str):
        return False
    prefix, slash, name = value.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        return False
    return _LABEL_NAME_PART_RE.fullmatch(name) is not None


def is_label_value(value: object) -> bool:
    return isinstance(value, str) and LABEL_VALUE_RE.fullmatch(value) is not None


def check_namespace(value: object) -> str:
    if not is_dns_label(value):
        raise Unmappable(f"namespace name {quoted(value)} is not a DNS-1123 label")
    return str(value)


def check_name(value: object, what: str) -> str:
    if not is_dns_subdomain(value):
        raise Unmappable(f"{what} name {quoted(value)} is not a DNS-1123 subdomain")
    return str(value)


def check_labels(value: object, what: str = "labels") -> dict[str, str]:
    """A label map as the API server would accept it (absent = empty); Unmappable otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unmappable(f"{what}: expected a map, got {quoted(value)}")
    for key, label_value in value.items():
        if not is_label_key(key):
            raise Unmappable(f"{what}: invalid label key {quoted(key)}")
        if not is_label_value(label_value):
            raise Unmappable(f"{what}: invalid value {quoted(label_value)} of label {key}")
    return dict(value)


def check_label_key(value: object, what: str) -> str:
    if not is_label_key(value):
        raise Unmappable(f"{what}: invalid label key {quoted(value)}")
    return str(value)


def check_label_value(value: object, what: str) -> str:
    if not is_label_value(value):
        raise Unmappable(f"{what}: invalid label value {quoted(value)}")
    return str(value)


def namespace_label(key: str) -> str:
    """The endpoint label under which a namespace label reaches its pods."""
    label = NAMESPACE_LABEL_PREFIX + key
    # is_label_key's characters are a subset of the selector grammar's label characters.
    assert LABEL_NAME_RE.fullmatch(label), label
    return label


def _id(value: str) -> str:
    # Names checked above only hold [a-z0-9.-], so this cannot fail; checked all the same,
    # because the result becomes a key segment.
    if not valid_id(value):
        raise Unmappable(f"derived ID {quoted(value)} is not a valid key segment")
    return value


def workload_id(namespace: str, pod: str) -> str:
    return _id(f"{namespace}.{pod}")


def interface_name(namespace: str, pod: str) -> str:
    """The host side of the pod's veth, as Calico's CNI plugin names it: `cali` + the first 11
    hex digits of SHA-1("<namespace>.<pod>") (default.podA -> cali7f94ce7c295)."""
    digest = hashlib.sha1(f"{namespace}.{pod}".encode(), usedforsecurity=False).hexdigest()
    return INTERFACE_PREFIX + digest[:11]


def profile_id(namespace: str) -> str:
    return _id(PROFILE_PREFIX + namespace)


def policy_id(namespace: str, name: str) -> str:
    return _id(f"{POLICY_PREFIX}{namespace}.{name}")


# --- Reading hostile JSON -------------------------------------------------------------------------


def get_map(obj: Mapping[str, Any], field: str, what: str) -> dict[str, Any]:
    """obj[field] as a map (absent or null = empty); Unmappable if it is something else."""
    value = obj.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unmappable(f"{what}.{field}: expected a map, got {quoted(value)}")
    return value


def get_list(obj: Mapping[str, Any], field: str, what: str) -> list[Any]:
    value = obj.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Unmappable(f"{what}.{field}: expected a list, got {quoted(value)}")
    return value


def get_str(obj: Mapping[str, Any], field: str, what: str) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unmappable(f"{what}.{field}: expected a string, got {quoted(value)}")
    return value


def metadata(obj: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[str | None, str]:
    """(namespace or None, name) of an object, both validated."""
    meta = get_map(obj, "metadata", kind)
    name = check_name(meta.get("name"), kind)
    if not namespaced:
        return None, name
    return check_namespace(meta.get("namespace")), name
