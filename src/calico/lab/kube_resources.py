"""What the lab's Kubernetes API server serves: its resource types, discovery documents, errors as
`Status` objects, label and field selectors, and merge patches. Pure.

Shapes follow the Kubernetes API conventions (kubernetes-datastore.md §5): a `Status` for every
error (`reason` and `code`), discovery as `APIVersions` / `APIGroupList` / `APIResourceList`, and
the selector grammars of `labelSelector` (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`,
`k`, `!k`, comma = AND) and `fieldSelector` (`=`, `==`, `!=` on a dotted path).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = False  # a `status` subresource (the main resource ignores status writes)
    builtin: bool = True  # built-in types' list items carry no kind/apiVersion; CRDs' do

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


CORE = ""
NETWORKING = "networking.k8s.io"
CALICO = "crd.projectcalico.org"

PODS = Resource(CORE, "v1", "pods", "Pod", True, ("po",), has_status=True)
NAMESPACES = Resource(CORE, "v1", "namespaces", "Namespace", False, ("ns",), has_status=True)
NODES = Resource(CORE, "v1", "nodes", "Node", False, ("no",), has_status=True)
NETWORK_POLICIES = Resource(NETWORKING, "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",))
FELIX_CONFIGS = Resource(
    CALICO, "v1", "globalfelixconfigs", "GlobalFelixConfig", False, builtin=False
)
IP_POOLS = Resource(CALICO, "v1", "ippools", "IPPool", False, builtin=False)
RESOURCES = (PODS, NAMESPACES, NODES, NETWORK_POLICIES, FELIX_CONFIGS, IP_POOLS)
VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
SERVER_VERSION = {
    "major": "1",
    "minor": "20",
    "gitVersion": "v1.20.2-calico-lab",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.19.8",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def resource_for(prefix: str, plural: str) -> Resource | None:
    for resource in RESOURCES:
        if resource.prefix == prefix and resource.plural == plural:
            return resource
    return None


# --- Errors ---------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: Resource, name: str) -> ApiError:
    details = {"name": name, "group": resource.group, "kind": resource.plural}
    label = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    return ApiError(404, "NotFound", f'{label} "{name}" not found', details)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(resource: Resource, name: str, message: str) -> ApiError:
    details = {"name": name, "group": resource.group, "kind": resource.kind}
    return ApiError(422, "Invalid", f'{resource.kind} "{name}" is invalid: {message}', details)


# --- Discovery ------------------------------------------------------------------------------------


def _api_resource(resource: Resource) -> list[dict[str, Any]]:
    entry = {
        "name": resource.plural,
        "singularName": resource.kind.lower(),
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": list(VERBS),
    }
    if resource.short_names:
        entry["shortNames"] = list(resource.short_names)
    entries = [entry]
    if resource.has_status:
        entries.append(
            {
                "name": f"{resource.plural}/status",
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    return entries


def discovery(path: str, server_address: str) -> dict[str, Any] | None:
    """The discovery document at `path`, or None if `path` is not one."""
    groups = sorted({r.group for r in RESOURCES if r.group})
    if path == "/version":
        return dict(SERVER_VERSION)
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        }
    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group(g) for g in groups],
        }
    for group in groups:
        if path == f"/apis/{group}":
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(group)}
    for prefix in sorted({r.prefix for r in RESOURCES}):
        if path == prefix:
            resources = [r for r in RESOURCES if r.prefix == prefix]
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": resources[0].api_version,
                "resources": [e for r in resources for e in _api_resource(r)],
            }
    return None


def _group(group: str) -> dict[str, Any]:
    version = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"name": group, "versions": [version], "preferredVersion": version}


# --- Selectors ------------------------------------------------------------------------------------

Matcher = Callable[[dict[str, Any]], bool]

_LABEL_TERM_RE = re.compile(
    r"\s*(?:(?P<neg>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|!=|=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[\w.,\s-]*)\))?)\s*(?:,|$)"
)


def label_matcher(text: str | None) -> Matcher:
    """A `labelSelector` as a predicate on objects; ApiError 400 for bad syntax."""
    if not text:
        return lambda obj: True
    terms: list[Callable[[dict[str, str]], bool]] = []
    pos = 0
    while pos < len(text):
        match = _LABEL_TERM_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise bad_request(f"unable to parse requirement: invalid label selector {text!r}")
        pos = match.end()
        terms.append(_label_term(match))
    return lambda obj: all(term(_labels(obj)) for term in terms)


def _label_term(match: re.Match[str]) -> Callable[[dict[str, str]], bool]:
    if match["neg"]:
        key = match["nkey"]
        return lambda labels: key not in labels
    key = match["key"]
    if match["op"]:
        value, negate = match["value"], match["op"] == "!="
        return lambda labels: (labels.get(key) == value) != negate
    if match["setop"]:
        values = {v.strip() for v in match["values"].split(",") if v.strip()}
        if match["setop"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels = obj.get("metadata", {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def field_matcher(text: str | None) -> Matcher:
    """A `fieldSelector` (`a.b=v`, `a.b==v`, `a.b!=v`, comma = AND) as a predicate."""
    if not text:
        return lambda obj: True
    terms: list[Matcher] = []
    for term in text.split(","):
        match = re.fullmatch(r"\s*([\w.]+)\s*(==|!=|=)\s*([^,]*?)\s*", term)
        if match is None:
            raise bad_request(f"invalid field selector {text!r}")
        path, op, value = match.groups()
        terms.append(_field_term(path.split("."), value, op == "!="))
    return lambda obj: all(term(obj) for term in terms)


def _field_term(path: list[str], value: str, negate: bool) -> Matcher:
    def term(obj: dict[str, Any]) -> bool:
        node: Any = obj
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        text = "" if node is None else str(node).lower() if isinstance(node, bool) else str(node)
        return (text == value) != negate

    return term


# --- Patches --------------------------------------------------------------------------------------

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386 JSON merge patch. `strategic`: also the strategic merge patch directives kubectl
    sends: `$patch: replace` / `delete` on a map, `$setElementOrder/...`, `$retainKeys` and
    `$deleteFromPrimitiveList/...` (ignored). Lists are replaced whole: no list of the resources
    served here has a merge key except pod containers, volumes and the like, which this lab
    server does not merge by key (docs/kubernetes.md)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic and patch.get("$patch") == "delete":
        return None
    if strategic and patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            merged = merge_patch(result.get(key), value, strategic)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result
