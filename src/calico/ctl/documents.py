"""Reading resource documents: `-f FILE` (or `-` for stdin) holding YAML or JSON, one document
or many (YAML documents separated by `---`, or a JSON/YAML list of documents).

Each document is a mapping `{apiVersion: v1, kind: ..., metadata: {...}, spec: {...}}`. What is
read must be plain JSON data: YAML's duplicate keys, dates, binary values and non-string keys are
refused with the place where they are, never passed on silently.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import yaml  # type: ignore[import-untyped]

from calico.common.quoting import quoted
from calico.ctl.errors import Invalid

API_VERSION = "v1"
MAX_INPUT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Document:
    """One document as read: where it came from (for messages) and its data."""

    source: str
    index: int  # 1-based position in the input
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source} document {self.index}"


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader without silently merged duplicate keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        if key in mapping:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {quoted(key)} (line {mark.line + 1})", mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)  # type: ignore[no-untyped-call]
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def check_plain(value: object, path: str = "") -> None:
    """Invalid unless `value` is plain JSON data (mappings with string keys, lists, strings,
    finite numbers, booleans, null); the message names the field's path."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_plain(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise Invalid(f"{path or 'top level'}: key {quoted(key)} is not a string")
            check_plain(item, f"{path}.{key}" if path else key)
        return
    raise Invalid(
        f"{path or 'top level'}: {type(value).__name__} value {quoted(value)} is not plain "
        "JSON data (quote it to make it a string)"
    )


def read_text(path: str, stdin: TextIO | None = None) -> str:
    if path == "-":
        return (stdin or sys.stdin).read(MAX_INPUT_BYTES + 1)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_INPUT_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise Invalid(f"cannot read {path}: {e}") from None


def parse(text: str, source: str) -> list[Document]:
    """Every document in `text` (YAML or JSON); Invalid if it cannot be read."""
    if len(text) > MAX_INPUT_BYTES:
        raise Invalid(f"{source}: more than {MAX_INPUT_BYTES} bytes")
    try:
        loaded = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as e:
        raise Invalid(f"{source}: not valid YAML or JSON: {_one_line(e)}") from None
    except RecursionError:
        raise Invalid(f"{source}: nested too deeply") from None
    items: list[object] = []
    for data in loaded:
        if data is None:
            continue  # an empty document (a trailing ---)
        items.extend(data if isinstance(data, list) else [data])
    documents = []
    for i, data in enumerate(items, start=1):
        where = f"{source} document {i}"
        if not isinstance(data, dict):
            raise Invalid(f"{where}: expected a mapping with kind, metadata and spec")
        try:
            check_plain(data)
        except Invalid as e:
            raise Invalid(f"{where}: {e}") from None
        documents.append(Document(source, i, data))
    if not documents:
        raise Invalid(f"{source}: no documents")
    return documents


def load(path: str, stdin: TextIO | None = None) -> list[Document]:
    source = "stdin" if path == "-" else path
    return parse(read_text(path, stdin), source)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
