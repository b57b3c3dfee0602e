"""`quoted` and `InvalidValue`: a hostile value makes one short, one-line log message (issue 12).

A rejected value is echoed into the log to say what was wrong. Before the cap a 1 MB value made a
1 MB log line, and a newline in it a forged second line. Through the calc graph and the Neutron
translation: tests/unit/test_calc_graph.py and tests/unit/test_openstack_translation.py.
"""

from __future__ import annotations

import pytest

from calico.common.quoting import MAX_QUOTED, quoted
from calico.common.resources import InvalidValue
from calico.common.resources.values import MAX_PROBLEM_LEN, MAX_PROBLEMS_SHOWN

MB = 1_000_000
# Characters that must never reach a log line raw: they end it, forge another, or hide text.
CONTROL = ("\n", "\r", "\x00", "\x1b", "\u2028", "\x85")


@pytest.mark.parametrize("value", ["tap1", "", "é中🙂", 42, None, ["a", 1], ("x" * 110)])
def test_short_values_are_their_repr(value: object) -> None:
    assert quoted(value) == repr(value)


@pytest.mark.parametrize(
    "value",
    [
        "x" * MB,
        "a\nb" * (MB // 3),
        "\n-A felix-FORWARD -j ACCEPT\nCOMMIT\n" * 30_000,
        "\x00" * MB,
        "\r\x1b[2J\u2028\x85" * 200_000,
        "é中🙂" * 300_000,
        ["a\nb"] * 100_000,
        {"k\n": "v" * MB},
        b"\n" * MB,
    ],
    ids=["long", "newlines", "injection", "nul", "escapes", "unicode", "list", "dict", "bytes"],
)
def test_long_values_are_capped_on_one_line(value: object) -> None:
    text = quoted(value)
    full = len(repr(value))
    assert text.startswith(repr(value)[:MAX_QUOTED])
    assert text.endswith(f"... ({full} characters)")  # says how long the value was
    assert len(text) <= MAX_QUOTED + 40
    assert not any(c in text for c in CONTROL), text


def test_the_limit_is_a_parameter() -> None:
    assert quoted("abcdef", limit=4) == "'abc... (8 characters)"
    assert quoted("ab", limit=4) == "'ab'"


def test_invalid_value_caps_each_problem_and_their_number() -> None:
    problems = [f"rule {i}: protocol {'p' * MB}" for i in range(1000)]
    e = InvalidValue("profile rules " + "/x" * MB, problems)
    message = str(e)
    # The object's name, the first problems each cut to MAX_PROBLEM_LEN, then how many more.
    assert message.startswith("invalid profile rules /x/x")
    assert message.count("rule ") == MAX_PROBLEMS_SHOWN
    assert message.endswith(f"... ({1000 - MAX_PROBLEMS_SHOWN} more)")
    assert len(message) < (MAX_PROBLEMS_SHOWN + 1) * (MAX_PROBLEM_LEN + 40)
    assert e.problems == tuple(problems)  # the whole problems stay available to code
