"""What calicoctl prints: aligned tables for people, JSON and YAML for scripts.

JSON output is always a list of documents (stable: the same data prints the same text); YAML
output is one YAML document per resource, separated by `---`. Both read back with `-f`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import yaml  # type: ignore[import-untyped]

FORMATS = ("table", "wide", "json", "yaml")
EMPTY_CELL = "-"


def table(headings: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; None and "" print as "-"."""
    cells = [[cell_text(c) for c in row] for row in rows]
    widths = [len(h) for h in headings]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in [list(headings), *cells]:
        padded = [text.ljust(widths[i]) for i, text in enumerate(row)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def cell_text(value: object) -> str:
    if value is None or (isinstance(value, str | list | dict) and not value):
        return EMPTY_CELL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(cell_text(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """ "name: value" lines with the values aligned, for one object."""
    items = [(name, cell_text(value)) for name, value in pairs]
    width = max((len(name) for name, _ in items), default=0)
    return "".join(f"{(name + ':').ljust(width + 1)}  {value}\n" for name, value in items)


def to_json(documents: Sequence[Any]) -> str:
    return json.dumps(list(documents), indent=2) + "\n"


def to_yaml(documents: Sequence[Any]) -> str:
    if not documents:
        return ""
    return yaml.safe_dump_all(
        list(documents), sort_keys=False, default_flow_style=False, allow_unicode=False
    )


def dump(documents: Sequence[Any], fmt: str) -> str:
    """JSON or YAML text for `documents` (fmt "json" or "yaml")."""
    return to_json(documents) if fmt == "json" else to_yaml(documents)
