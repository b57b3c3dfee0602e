"""The selector language: parsing, semantics, canonical form, IDs and required pairs."""

from __future__ import annotations

import random

import pytest

from calico.common.selectors import (
    MAX_NESTING,
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


# --- Property test against a simple reference evaluator ------------------------------------------
#
# Random expression trees are built as plain tuples, written out as selector text (with random
# quoting, spacing and redundant parentheses) and evaluated three ways: by the compiled function
# (`Selector.evaluate`), by walking the parser's AST (`root.evaluate`) and by `_reference`, a direct
# reading of felix.md §3.2. Values hold quotes, backslashes and Python syntax, which the compiled
# form must treat as data. The canonical text must also re-parse to itself.

_KEYS = ("a", "b", "c/d")
_VALUES = ("x", "y", "it's", 'say "hi"', "back\\slash", "{'} ) or True")


def _lit(rng: random.Random, value: str) -> str:
    if "'" in value:
        return '"' + value + '"'
    if '"' in value:
        return "'" + value + "'"
    quote = rng.choice(("'", '"'))
    return quote + value + quote


def _random_tree(rng: random.Random, depth: int) -> tuple:  # type: ignore[type-arg]
    if depth == 0 or rng.random() < 0.35:
        kind = rng.choice(("==", "!=", "in", "not in", "has", "all"))
        key = rng.choice(_KEYS)
        if kind in ("in", "not in"):
            return (kind, key, frozenset(rng.sample(_VALUES, rng.randint(1, 3))))
        return (kind, key, rng.choice(_VALUES))
    kind = rng.choice(("&&", "||", "!"))
    if kind == "!":
        return ("!", _random_tree(rng, depth - 1))
    return (kind, _random_tree(rng, depth - 1), _random_tree(rng, depth - 1))


def _text(rng: random.Random, tree: tuple) -> str:  # type: ignore[type-arg]
    sp = rng.choice(("", " ", "  "))
    kind = tree[0]
    if kind in ("==", "!="):
        return f"{tree[1]}{sp}{kind}{sp}{_lit(rng, tree[2])}"
    if kind in ("in", "not in"):
        items = f",{sp}".join(_lit(rng, v) for v in sorted(tree[2]))
        return f"{tree[1]} {kind} {{{sp}{items}{sp}}}"
    if kind == "has":
        return f"has({sp}{tree[1]}{sp})"
    if kind == "all":
        return "all()"
    if kind == "!":
        return f"!({_text(rng, tree[1])})"
    return f"({_text(rng, tree[1])}){sp}{kind}{sp}({_text(rng, tree[2])})"


def _reference(tree: tuple, labels: dict[str, str]) -> bool:  # type: ignore[type-arg]
    kind = tree[0]
    if kind == "==":
        return labels.get(tree[1]) == tree[2]
    if kind == "!=":
        return labels.get(tree[1]) != tree[2]  # also true when the label is missing
    if kind == "in":
        return tree[1] in labels and labels[tree[1]] in tree[2]
    if kind == "not in":
        return tree[1] not in labels or labels[tree[1]] not in tree[2]
    if kind == "has":
        return tree[1] in labels
    if kind == "all":
        return True
    if kind == "!":
        return not _reference(tree[1], labels)
    if kind == "&&":
        return _reference(tree[1], labels) and _reference(tree[2], labels)
    return _reference(tree[1], labels) or _reference(tree[2], labels)


@pytest.mark.parametrize("seed", range(20))
def test_random_selectors_agree_with_reference_evaluator(seed: int) -> None:
    rng = random.Random(seed)
    label_sets = [{k: rng.choice(_VALUES) for k in _KEYS if rng.random() < 0.6} for _ in range(30)]
    for _ in range(50):
        tree = _random_tree(rng, 4)
        text = _text(rng, tree)
        selector = parse_selector(text)
        again = parse_selector(selector.canonical)
        assert again.canonical == selector.canonical
        assert again.unique_id == selector.unique_id
        for labels in label_sets:
            expected = _reference(tree, labels)
            assert selector.evaluate(labels) is expected, (text, labels)
            assert selector.root.evaluate(labels) is expected, (text, labels)
            assert again.evaluate(labels) is expected, (selector.canonical, labels)


def test_double_negation_cancels_however_written() -> None:
    # Found by the property test: "!(!x)" used to keep both negations while "!!x" dropped them,
    # so the canonical text of the first did not re-parse to itself.
    for text in ("!!has(a)", "!(!has(a))", "!(!(has(a)))", "! ( ! has(a) )"):
        assert parse_selector(text).canonical == "has(a)"
    assert parse_selector("!(!(!has(a)))").canonical == "!has(a)"


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("a == 'x'", [{("a", "x")}]),
        ("a in {'x', 'y'}", [{("a", "x"), ("a", "y")}]),
        ("a == 'x' && b in {'y'}", [{("a", "x")}, {("b", "y")}]),
        ("a == 'x' || b == 'y'", [{("a", "x"), ("b", "y")}]),
        ("(a == 'x' && c == 'z') || b == 'y'", [{("a", "x"), ("b", "y")}]),
        ("a == 'x' || has(b)", []),
        ("!a == 'x'", []),
        ("a != 'x' && has(b) && all()", []),
    ],
)
def test_pair_options(text: str, options: list[set[tuple[str, str]]]) -> None:
    assert [set(o) for o in parse_selector(text).pair_options()] == options


def test_pair_options_are_sound() -> None:
    # Whatever a selector matches carries at least one pair of every option.
    rng = random.Random(7)
    for _ in range(300):
        selector = parse_selector(_text(rng, _random_tree(rng, 3)))
        for labels in ({k: rng.choice(_VALUES) for k in _KEYS if rng.random() < 0.6},):
            if selector.evaluate(labels):
                for option in selector.pair_options():
                    assert option & set(labels.items()), (selector, labels)


def _nested(depth: int) -> str:
    return "(" * depth + "a == 'x'" + ")" * depth


def test_nesting_up_to_the_limit_is_accepted() -> None:
    selector = parse_selector("!" + _nested(MAX_NESTING) + " || " + _nested(MAX_NESTING))
    assert selector.evaluate({"a": "x"}) is True
    assert selector.evaluate({"a": "y"}) is True
    negated = parse_selector("!(" * MAX_NESTING + "has(a)" + ")" * MAX_NESTING)
    assert negated.evaluate({}) is (MAX_NESTING % 2 == 1)
    assert negated.root.evaluate({}) is (MAX_NESTING % 2 == 1)


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 100_000])
def test_deeper_nesting_is_a_bad_selector_not_a_crash(depth: int) -> None:
    # A hostile value in the datastore must not exhaust the parser's recursion.
    with pytest.raises(BadSelector, match=f"nested more than {MAX_NESTING} deep"):
        parse_selector(_nested(depth))
