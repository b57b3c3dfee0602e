"""The selector language: parsing, semantics, canonical form, IDs and required pairs."""

from __future__ import annotations

import pytest

from calico.common.selectors import (
    AllNode,
    AndNode,
    BadSelector,
    EqNode,
    HasNode,
    InNode,
    NeNode,
    NotInNode,
    NotNode,
    OrNode,
    Selector,
    parse_selector,
    tag_id,
)

# (text, canonical form)
ACCEPTED = [
    ("", "all()"),
    ("   \t\n ", "all()"),
    ("all()", "all()"),
    (" all ( ) ", "all()"),
    ("a == 'b'", 'a == "b"'),
    ('a == "b"', 'a == "b"'),
    ("a=='b'", 'a == "b"'),
    ("a != 'b'", 'a != "b"'),
    ("has(a)", "has(a)"),
    ("has ( a )", "has(a)"),
    ("!has(a)", "!has(a)"),
    ("!!has(a)", "has(a)"),
    ("!!!has(a)", "!has(a)"),
    ("! ! has(a)", "has(a)"),
    ("a in {'x'}", 'a in {"x"}'),
    ('a in {"y", "x"}', 'a in {"x", "y"}'),
    ("a in{'y','x','y'}", 'a in {"x", "y"}'),
    ("a not in {'x'}", 'a not in {"x"}'),
    ("a  not   in {'x', \"y\"}", 'a not in {"x", "y"}'),
    ("notin == 'x'", 'notin == "x"'),
    ("notin in {'x'}", 'notin in {"x"}'),
    ("notin not in {'x'}", 'notin not in {"x"}'),
    ("in == 'x'", 'in == "x"'),
    ("not == 'x'", 'not == "x"'),
    ("has == 'x'", 'has == "x"'),
    ("all == 'x'", 'all == "x"'),
    ("has(has)", "has(has)"),
    ("a.b/c-d_e == 'v'", 'a.b/c-d_e == "v"'),
    ("a == ''", 'a == ""'),
    ("a == 'with \"double\"'", "a == 'with \"double\"'"),
    ('a == "it\'s"', 'a == "it\'s"'),
    ("a == 'x y && z'", 'a == "x y && z"'),
    ("a == 'b' && c == 'd'", '(a == "b" && c == "d")'),
    ("a == 'b' || c == 'd'", '(a == "b" || c == "d")'),
    ("a == 'b' || c == 'd' && e == 'f'", '(a == "b" || (c == "d" && e == "f"))'),
    ("(a == 'b' || c == 'd') && e == 'f'", '((a == "b" || c == "d") && e == "f")'),
    ("((has(a)))", "has(a)"),
    ("!(has(a) && !(b == 'c' || has(d)))", '!(has(a) && !(b == "c" || has(d)))'),
    ("!!(has(a) || has(b))", "(has(a) || has(b))"),
    ("all() && has(a)", "(all() && has(a))"),
]

# (text, fragment expected in the error message)
REJECTED = [
    ("garbage", "after label 'garbage'"),
    ("a", "end of input"),
    ("a ==", "quoted literal"),
    ("a == b", "quoted literal"),
    ("'a' == 'b'", "a label"),
    ("a == 'b", "unterminated literal at position 5"),
    ('a == "b', "unterminated literal"),
    ("a == 'b\"", "unterminated literal"),
    ("a in {}", "position 6"),
    ("a in {'x',}", "quoted literal"),
    ("a in {'x' 'y'}", "',' or '}'"),
    ("a in 'x'", "'{'"),
    ("a notin {'x'}", "found 'notin'"),
    ("a not {'x'}", "'=='"),
    ("a not on {'x'}", "'in' after 'not'"),
    ("a in {'x'", "',' or '}'"),
    ("has(a", "')'"),
    ("has()", "label name"),
    ("has('a')", "label name"),
    ("all(a)", "')'"),
    ("(a == 'b'", "')'"),
    ("a == 'b')", "end of input"),
    ("()", "a label"),
    ("!", "end of input"),
    ("&&", "position 0"),
    ("a == 'b' &&", "end of input"),
    ("a == 'b' || ", "end of input"),
    ("a == 'b' c == 'd'", "'&&', '||' or end of input"),
    ("a = 'b'", "unexpected character '='"),
    ("a ~ 'b'", "unexpected character '~' at position 2"),
    ("a & b", "unexpected character '&'"),
    ("a == 'b' | c == 'd'", "unexpected character '|'"),
    ("a ! = 'b'", "unexpected character '=' at position 4"),
    ("a =! 'b'", "unexpected character"),
    ("x == 'é' && é == 'x'", "unexpected character 'é'"),
]


@pytest.mark.parametrize(("text", "canonical"), ACCEPTED)
def test_accepts(text: str, canonical: str) -> None:
    selector = parse_selector(text)
    assert selector.canonical == canonical
    # The canonical form parses back to an equal selector.
    assert parse_selector(canonical) == selector
    assert parse_selector(canonical).canonical == canonical


@pytest.mark.parametrize(("text", "fragment"), REJECTED)
def test_rejects(text: str, fragment: str) -> None:
    with pytest.raises(BadSelector) as info:
        parse_selector(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_bad_selector_is_value_error() -> None:
    with pytest.raises(ValueError, match="position"):
        parse_selector("a ==")


def test_tree_shapes() -> None:
    assert parse_selector("").root == AllNode()
    assert parse_selector("!!has(a)").root == HasNode("a")
    assert parse_selector("!has(a)").root == NotNode(HasNode("a"))
    assert parse_selector("a in {'y', 'x'}").root == InNode("a", frozenset({"x", "y"}))
    assert parse_selector("a not in {'x'}").root == NotInNode("a", frozenset({"x"}))
    assert parse_selector("a == 'b' || c != 'd' && has(e)").root == OrNode(
        (EqNode("a", "b"), AndNode((NeNode("c", "d"), HasNode("e"))))
    )


def test_ast_is_immutable() -> None:
    node = EqNode("a", "b")
    with pytest.raises(AttributeError):
        node.label = "c"  # type: ignore[misc]
    selector = parse_selector("a == 'b'")
    with pytest.raises(AttributeError):
        selector.root = AllNode()  # type: ignore[misc]


def test_parse_is_cached() -> None:
    assert parse_selector("has(cached)") is parse_selector("has(cached)")


# (selector, labels, expected)
SEMANTICS = [
    ("all()", {}, True),
    ("", {"a": "b"}, True),
    ("a == 'b'", {"a": "b"}, True),
    ("a == 'b'", {"a": "c"}, False),
    ("a == 'b'", {}, False),
    ("a == ''", {}, False),
    ("a == ''", {"a": ""}, True),
    ("a != 'b'", {"a": "b"}, False),
    ("a != 'b'", {"a": "c"}, True),
    ("a != 'b'", {}, True),
    ("a in {'b', 'c'}", {"a": "c"}, True),
    ("a in {'b', 'c'}", {"a": "d"}, False),
    ("a in {'b', 'c'}", {}, False),
    ("a not in {'b', 'c'}", {"a": "c"}, False),
    ("a not in {'b', 'c'}", {"a": "d"}, True),
    ("a not in {'b', 'c'}", {}, True),
    ("has(a)", {"a": ""}, True),
    ("has(a)", {"b": "a"}, False),
    ("has(a)", {}, False),
    ("!has(a)", {}, True),
    ("!a == 'b'", {}, True),
    ("!a != 'b'", {}, False),
    ("!a in {'b'}", {}, True),
    ("!a not in {'b'}", {}, False),
    ("!!has(a)", {"a": "x"}, True),
    ("a == 'b' && c == 'd'", {"a": "b", "c": "d"}, True),
    ("a == 'b' && c == 'd'", {"a": "b"}, False),
    ("a == 'b' || c == 'd'", {"c": "d"}, True),
    ("a == 'b' || c == 'd'", {"a": "x", "c": "x"}, False),
    ("a == 'b' || c == 'd' && e == 'f'", {"a": "b"}, True),
    ("(a == 'b' || c == 'd') && e == 'f'", {"a": "b"}, False),
    ("!(a == 'b' || c == 'd')", {"e": "f"}, True),
    ("!(has(a) && has(b))", {"a": "1"}, True),
    ("all() && has(a)", {}, False),
]


@pytest.mark.parametrize(("text", "labels", "expected"), SEMANTICS)
def test_semantics(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).evaluate(labels) is expected


def test_equality_and_hash_by_canonical_form() -> None:
    a = parse_selector("a=='b'")
    b = parse_selector('a == "b"')
    assert a is not b
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert parse_selector("a in {'x', 'y'}") == parse_selector('a in {"y","x"}')
    assert parse_selector("") == parse_selector("all()")
    assert parse_selector("!!has(a)") == parse_selector("(has(a))")
    assert parse_selector("a == 'b'") != parse_selector("a == 'c'")
    assert parse_selector("a == 'b'") != "a == 'b'"
    assert Selector(EqNode("a", "b")) == a


def test_unique_id_is_stable() -> None:
    selector = parse_selector("a == 'b'")
    # Fixed literal so that any change to the canonical form or the ID scheme is caught.
    assert selector.unique_id == "s:flMh0m0X_BowkAK_W3j3MgH8oQOsj3WxGDoXCQ"
    assert parse_selector('a=="b"').unique_id == selector.unique_id
    assert parse_selector("a in {'x', 'y', 'z'}").unique_id == (
        parse_selector("a in {'z','x','y'}").unique_id
    )
    assert parse_selector("a == 'b'").unique_id != parse_selector("a == 'c'").unique_id
    assert parse_selector("").unique_id == parse_selector("all()").unique_id


def test_unique_id_shape() -> None:
    uid = parse_selector("has(a) && b not in {'c'}").unique_id
    assert uid.startswith("s:")
    assert "=" not in uid
    assert len(uid) == 2 + 38  # 28 bytes of SHA-224 -> 38 unpadded base64 characters
    assert set(uid[2:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_tag_id() -> None:
    assert tag_id("foo").startswith("t:")
    assert tag_id("foo") == tag_id("foo")
    assert tag_id("foo") != tag_id("bar")
    assert len(tag_id("foo")) == 40
    # Tags and selectors live in different ID spaces even for the same text.
    assert tag_id("has(a)") != parse_selector("has(a)").unique_id


# (selector, required pairs)
REQUIRED = [
    ("", set()),
    ("a == 'b'", {("a", "b")}),
    ("a in {'b'}", {("a", "b")}),
    ("a in {'b', 'c'}", set()),
    ("a != 'b'", set()),
    ("a not in {'b'}", set()),
    ("has(a)", set()),
    ("!a == 'b'", set()),
    ("!!a == 'b'", {("a", "b")}),
    ("!(a == 'b' && c == 'd')", set()),
    ("a == 'b' && c == 'd'", {("a", "b"), ("c", "d")}),
    ("a == 'b' && has(c)", {("a", "b")}),
    ("a == 'b' || c == 'd'", set()),
    ("a == 'b' || a == 'b' && c == 'd'", {("a", "b")}),
    ("(a == 'b' && c == 'd') || (a == 'b' && e in {'f'})", {("a", "b")}),
    ("(a == 'b' || c == 'd') && e == 'f'", {("e", "f")}),
    ("a == 'b' || has(c)", set()),
]


@pytest.mark.parametrize(("text", "pairs"), REQUIRED)
def test_required_pairs(text: str, pairs: set[tuple[str, str]]) -> None:
    assert parse_selector(text).required_pairs() == frozenset(pairs)


# (selector, simple pairs or None)
SIMPLE = [
    ("a == 'b'", {("a", "b")}),
    ("a in {'b', 'c'}", {("a", "b"), ("a", "c")}),
    ("(a in {'b'})", {("a", "b")}),
    ("!!a == 'b'", {("a", "b")}),
    ("a != 'b'", None),
    ("a not in {'b'}", None),
    ("!a == 'b'", None),
    ("has(a)", None),
    ("", None),
    ("a == 'b' && c == 'd'", None),
    ("a == 'b' || a == 'c'", None),
]


@pytest.mark.parametrize(("text", "pairs"), SIMPLE)
def test_simple_pairs(text: str, pairs: set[tuple[str, str]] | None) -> None:
    result = parse_selector(text).simple_pairs()
    assert result == (None if pairs is None else frozenset(pairs))
