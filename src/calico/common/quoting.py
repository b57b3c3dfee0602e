"""Quoting untrusted text for log lines and error messages.

Values from etcd, Neutron and the kernel are hostile until validated (docs/design/security.md):
a rejected value can be megabytes long or hold newlines and terminal escapes. `repr` escapes the
control characters; `quoted` also caps the length, so one bad value cannot flood a log.
"""

from __future__ import annotations

MAX_QUOTED = 120  # characters of repr() kept; enough to recognise a value, never a flood


def quoted(value: object, limit: int = MAX_QUOTED) -> str:
    """repr(value), cut to `limit` characters with the full length noted when it is longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
