"""What a request to the lab Kubernetes API server names (resource, namespace, name,
subresource), which verb it is, and who may do it: the tokens' identities and their rights. Pure.

Paths: `/api/v1/...` and `/apis/<group>/<version>/...`, cluster-wide (`/pods`), per namespace
(`/namespaces/<ns>/pods`), one object (`.../<name>`), its `status`, and the old watch form with
`/watch/` after the version. Verbs as kube-apiserver's authorizer sees them: get, list, watch,
create, update, patch, delete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from calico.lab.kube_resources import (
    RESOURCES,
    ApiError,
    Resource,
    bad_request,
    field_matcher,
    label_matcher,
    resource_for,
)

TRUE = ("1", "t", "T", "true", "True", "TRUE")  # Go's strconv.ParseBool


@dataclass(frozen=True)
class Identity:
    """Who a token is and what it may do: (verb, resource) pairs, "*" for any."""

    user: str
    rules: frozenset[tuple[str, str]] = field(default=frozenset({("*", "*")}))

    def allows(self, verb: str, resource: str) -> bool:
        return any(v in ("*", verb) and r in ("*", resource) for v, r in self.rules)


ALL_PLURALS = tuple(resource.plural for resource in RESOURCES)


def reader(user: str, resources: tuple[str, ...] = ALL_PLURALS) -> Identity:
    """A token that may only get, list and watch `resources`."""
    return Identity(user, frozenset((v, r) for v in ("get", "list", "watch") for r in resources))


@dataclass
class Route:
    resource: Resource
    namespace: str | None  # None: all namespaces (or a cluster-scoped resource)
    name: str | None
    subresource: str
    watch_path: bool


def integer(text: str | None, name: str) -> int | None:
    if text in (None, ""):
        return None
    try:
        value = int(str(text))
    except ValueError:
        raise bad_request(f"invalid {name} {text!r}") from None
    if value < 0:
        raise bad_request(f"invalid {name} {text!r}")
    return value


def matcher(route: Route, query: dict[str, str]) -> Any:
    labels = label_matcher(query.get("labelSelector"))
    fields = field_matcher(query.get("fieldSelector"))
    name = route.name
    return lambda obj: (
        labels(obj)
        and fields(obj)
        and (name is None or obj.get("metadata", {}).get("name") == name)
    )


def route(path: str) -> Route:
    """The resource, namespace, name and subresource a path names; NotFound for anything else."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        prefix, rest = "/api/v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        prefix, rest = f"/apis/{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    watch_path = rest[:1] == ["watch"]
    if watch_path:
        rest = rest[1:]
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] != "status":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    resource = resource_for(prefix, rest[0])
    if resource is None or (namespace is not None and not resource.namespaced):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    name = rest[1] if len(rest) >= 2 else None
    if name is not None and resource.namespaced and namespace is None:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return Route(resource, namespace, name, rest[2] if len(rest) == 3 else "", watch_path)


def verb(method: str, route: Route, query: dict[str, str]) -> str:
    watch = route.watch_path or query.get("watch") in TRUE
    if method == "GET":
        if watch:
            return "watch"
        return "list" if route.name is None else "get"
    if route.watch_path:
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a watch")
    if method == "POST" and route.name is None:
        return "create"
    if route.name is not None:
        return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "")
    raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
