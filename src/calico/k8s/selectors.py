"""Kubernetes label selectors as Calico selector text (Calico's `k8sSelectorToCalico`). Pure.

The selector is built as a tree of `calico.common.selectors` nodes and written out with their
canonical text, which quotes every literal; every key and value has passed the API server's label
rules (`names`), which admit no quote, space or operator character. The text is parsed back and
must give the same tree, so a value can never change a selector's structure.

* A pod selector in namespace `ns`: `calico/k8s_ns == "ns"` AND its terms.
* A namespace selector: every key gets the `pcns.` prefix (namespace labels reach pods by profile
  label inheritance), AND `has(calico/k8s_ns)` so it only ever matches pods.
* Both (one NetworkPolicy peer): the two, ANDed.
* `matchLabels` k: v -> `k == "v"`; `matchExpressions` In -> `k in {...}`, NotIn -> `k not in
  {...}`, Exists -> `has(k)`, DoesNotExist -> `!has(k)`.

A selector that cannot be translated exactly (an unknown field or operator, a bad key or value,
In/NotIn without values, Exists with values) is `Unmappable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from calico.common import selectors as sel
from calico.common.quoting import quoted
from calico.k8s.names import (
    NAMESPACE_LABEL,
    Unmappable,
    check_label_key,
    check_label_value,
    get_list,
    get_map,
    namespace_label,
)

_SELECTOR_FIELDS = frozenset({"matchLabels", "matchExpressions"})
_EXPRESSION_FIELDS = frozenset({"key", "operator", "values"})
MAX_TERMS = 256  # matchLabels + matchExpressions; far above real use, bounds a hostile object


def _terms(selector: object, what: str, rename: Callable[[str], str]) -> list[sel.Node]:
    if not isinstance(selector, dict):
        raise Unmappable(f"{what}: expected a label selector map, got {quoted(selector)}")
    unknown = set(selector) - _SELECTOR_FIELDS
    if unknown:
        raise Unmappable(f"{what}: unknown field(s) {quoted(sorted(unknown))}")
    match_labels = get_map(selector, "matchLabels", what)
    expressions = get_list(selector, "matchExpressions", what)
    if len(match_labels) + len(expressions) > MAX_TERMS:
        raise Unmappable(f"{what}: more than {MAX_TERMS} terms")
    terms: list[sel.Node] = []
    for key in sorted(match_labels, key=str):
        label = rename(check_label_key(key, f"{what}.matchLabels"))
        value = check_label_value(match_labels[key], f"{what}.matchLabels[{key}]")
        terms.append(sel.EqNode(label, value))
    for i, expression in enumerate(expressions):
        terms.append(_expression(expression, f"{what}.matchExpressions[{i}]", rename))
    return terms


def _expression(expression: Any, what: str, rename: Callable[[str], str]) -> sel.Node:
    if not isinstance(expression, dict):
        raise Unmappable(f"{what}: expected a map, got {quoted(expression)}")
    unknown = set(expression) - _EXPRESSION_FIELDS
    if unknown:
        raise Unmappable(f"{what}: unknown field(s) {quoted(sorted(unknown))}")
    label = rename(check_label_key(expression.get("key"), what))
    operator = expression.get("operator")
    values = [check_label_value(v, f"{what}.values") for v in get_list(expression, "values", what)]
    if operator in ("In", "NotIn"):
        if not values:
            raise Unmappable(f"{what}: operator {operator} needs values")
        if operator == "In":
            return sel.InNode(label, frozenset(values))
        return sel.NotInNode(label, frozenset(values))
    if operator in ("Exists", "DoesNotExist"):
        if values:
            raise Unmappable(f"{what}: operator {operator} takes no values")
        has = sel.HasNode(label)
        return has if operator == "Exists" else sel.NotNode(has)
    raise Unmappable(f"{what}: unknown operator {quoted(operator)}")


def _text(terms: list[sel.Node]) -> str:
    node = terms[0] if len(terms) == 1 else sel.AndNode(tuple(terms))
    text = sel.Selector(node).canonical
    # The round trip is the guarantee that no key or value changed the expression's structure.
    if sel.parse_selector(text) != sel.Selector(node):
        raise Unmappable(f"selector {quoted(text)} does not parse back to itself")
    return text


def _same(label: str) -> str:
    return label


def pod_terms(selector: object, namespace: str, what: str) -> list[sel.Node]:
    return [sel.EqNode(NAMESPACE_LABEL, namespace), *_terms(selector, what, _same)]


def namespace_terms(selector: object, what: str) -> list[sel.Node]:
    return [sel.HasNode(NAMESPACE_LABEL), *_terms(selector, what, namespace_label)]


def pod_selector(selector: object, namespace: str, what: str) -> str:
    """The pods of `namespace` that a pod selector selects."""
    return _text(pod_terms(selector, namespace, what))


def namespace_selector(selector: object, what: str) -> str:
    """The pods of every namespace that a namespace selector selects."""
    return _text(namespace_terms(selector, what))


def peer_selector(
    pod: object | None, namespace: object | None, own_namespace: str, what: str
) -> str:
    """A NetworkPolicy peer: pods selected by `pod` in the namespaces `namespace` selects (or in
    the policy's own namespace when `namespace` is absent); all pods of the selected namespaces
    when `pod` is absent."""
    if namespace is None:
        return pod_selector(pod if pod is not None else {}, own_namespace, f"{what}.podSelector")
    terms = namespace_terms(namespace, f"{what}.namespaceSelector")
    if pod is not None:
        terms += _terms(pod, f"{what}.podSelector", _same)
    return _text(terms)


def namespace_only(namespace: str) -> str:
    """Every pod of one namespace (what a policy whose pod selector is unusable isolates)."""
    return _text([sel.EqNode(NAMESPACE_LABEL, namespace)])
