"""The Calico selector language (felix.md §3.1-3.3): parser, immutable AST, evaluation,
canonical text and stable IDs. Pure Python, no I/O.

Grammar, lowest precedence first::

    expression := and-group ( "||" and-group )*
    and-group  := term ( "&&" term )*
    term       := "!"* ( comparison | "(" expression ")" )
    comparison := label "==" literal | label "!=" literal
                | label "in" set | label "not" "in" set
                | "has" "(" label ")" | "all" "(" ")"
    set        := "{" literal ( "," literal )* "}"

Literals are single- or double-quoted with no escapes; labels are ``[a-zA-Z0-9_./-]+``. The empty
(or all-whitespace) string means the same as ``all()``.

One module for one grammar (about 550 lines): the tokenizer, the parser, the node types with
their evaluation, canonical text and compiled form must change together, so they stay together.
"""

from __future__ import annotations

import base64
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Final

__all__ = [
    "AllNode",
    "AndNode",
    "BadSelector",
    "EqNode",
    "HasNode",
    "InNode",
    "NeNode",
    "Node",
    "NotInNode",
    "NotNode",
    "OrNode",
    "Pair",
    "Selector",
    "parse_selector",
    "tag_id",
]

Pair = tuple[str, str]
_NO_PAIRS: Final[frozenset[Pair]] = frozenset()


class BadSelector(ValueError):
    """The text is not a valid selector; the message says where."""


def _quote(value: str) -> str:
    # There are no escapes, so a value containing a double quote can only be written single-quoted.
    return f"'{value}'" if '"' in value else f'"{value}"'


def _set_text(values: frozenset[str]) -> str:
    return "{" + ", ".join(_quote(v) for v in sorted(values)) + "}"


def _set_source(values: frozenset[str]) -> str:
    return "{" + ", ".join(repr(v) for v in sorted(values)) + "}"


def _hash_id(prefix: str, text: str) -> str:
    digest = hashlib.sha224((prefix + text).encode()).digest()
    return prefix + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@lru_cache(maxsize=65536)  # asked once per (tag, endpoint) match; hashing is the cost
def tag_id(tag: str) -> str:
    """Stable ID of a tag's IP set: ``t:`` + unpadded URL-safe base64 SHA-224 of ``t:<tag>``."""
    return _hash_id("t:", tag)


# --------------------------------------------------------------------------------------------------
# AST


class Node(ABC):
    """A node of the selector syntax tree. Subclasses are frozen dataclasses."""

    __slots__ = ()

    @abstractmethod
    def evaluate(self, labels: Mapping[str, str]) -> bool:
        """Whether a label dict matches this (sub-)expression."""

    @abstractmethod
    def canonical(self) -> str:
        """Canonical text; parsing it again yields an equal tree."""

    @abstractmethod
    def source(self) -> str:
        """A Python expression over the label dict ``L`` with the same truth as `evaluate`
        (see `Selector.evaluate`). Literals are written with repr(), so no label or value can
        change the expression's structure."""

    def required_pairs(self) -> frozenset[Pair]:
        """(label, value) pairs that every matching label dict must contain."""
        return _NO_PAIRS

    def pair_options(self) -> tuple[frozenset[Pair], ...]:
        """Sets of (label, value) pairs such that every matching label dict contains at least
        one pair of each set. The label index files a selector under the cheapest option, so
        only items carrying one of its pairs need evaluating. Empty: no such set is known."""
        return ()


@dataclass(frozen=True, slots=True)
class AllNode(Node):
    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return True

    def canonical(self) -> str:
        return "all()"

    def source(self) -> str:
        return "True"


@dataclass(frozen=True, slots=True)
class HasNode(Node):
    label: str

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return self.label in labels

    def canonical(self) -> str:
        return f"has({self.label})"

    def source(self) -> str:
        return f"({self.label!r} in L)"


@dataclass(frozen=True, slots=True)
class EqNode(Node):
    label: str
    value: str

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.label) == self.value

    def canonical(self) -> str:
        return f"{self.label} == {_quote(self.value)}"

    def source(self) -> str:
        return f"(L.get({self.label!r}) == {self.value!r})"

    def required_pairs(self) -> frozenset[Pair]:
        return frozenset({(self.label, self.value)})

    def pair_options(self) -> tuple[frozenset[Pair], ...]:
        return (frozenset({(self.label, self.value)}),)


@dataclass(frozen=True, slots=True)
class NeNode(Node):
    label: str
    value: str

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        # A missing label also counts as "not equal".
        return labels.get(self.label) != self.value

    def canonical(self) -> str:
        return f"{self.label} != {_quote(self.value)}"

    def source(self) -> str:
        return f"(L.get({self.label!r}) != {self.value!r})"


@dataclass(frozen=True, slots=True)
class InNode(Node):
    label: str
    values: frozenset[str]

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.label)
        return value is not None and value in self.values

    def canonical(self) -> str:
        return f"{self.label} in {_set_text(self.values)}"

    def source(self) -> str:
        # `x in {constant set}` compiles to a frozenset constant; None (missing) is never in it.
        return f"(L.get({self.label!r}) in {_set_source(self.values)})"

    def required_pairs(self) -> frozenset[Pair]:
        if len(self.values) == 1:
            return frozenset((self.label, v) for v in self.values)
        return _NO_PAIRS

    def pair_options(self) -> tuple[frozenset[Pair], ...]:
        return (frozenset((self.label, v) for v in self.values),)


@dataclass(frozen=True, slots=True)
class NotInNode(Node):
    label: str
    values: frozenset[str]

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        # A missing label is "not in" any set.
        value = labels.get(self.label)
        return value is None or value not in self.values

    def canonical(self) -> str:
        return f"{self.label} not in {_set_text(self.values)}"

    def source(self) -> str:
        return f"(L.get({self.label!r}) not in {_set_source(self.values)})"


@dataclass(frozen=True, slots=True)
class NotNode(Node):
    operand: Node

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.evaluate(labels)

    def canonical(self) -> str:
        return "!" + self.operand.canonical()

    def source(self) -> str:
        return f"(not {self.operand.source()})"


@dataclass(frozen=True, slots=True)
class AndNode(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        for op in self.operands:  # a plain loop: much faster than all() over a generator
            if not op.evaluate(labels):
                return False
        return True

    def canonical(self) -> str:
        return "(" + " && ".join(op.canonical() for op in self.operands) + ")"

    def source(self) -> str:
        return "(" + " and ".join(op.source() for op in self.operands) + ")"

    def required_pairs(self) -> frozenset[Pair]:
        result: set[Pair] = set()
        for op in self.operands:
            result |= op.required_pairs()
        return frozenset(result)

    def pair_options(self) -> tuple[frozenset[Pair], ...]:
        # A match satisfies every operand, so any operand's option will do.
        return tuple(option for op in self.operands for option in op.pair_options())


@dataclass(frozen=True, slots=True)
class OrNode(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        for op in self.operands:
            if op.evaluate(labels):
                return True
        return False

    def canonical(self) -> str:
        return "(" + " || ".join(op.canonical() for op in self.operands) + ")"

    def source(self) -> str:
        return "(" + " or ".join(op.source() for op in self.operands) + ")"

    def required_pairs(self) -> frozenset[Pair]:
        result = self.operands[0].required_pairs()
        for op in self.operands[1:]:
            if not result:
                break
            result &= op.required_pairs()
        return result

    def pair_options(self) -> tuple[frozenset[Pair], ...]:
        # A match satisfies some operand: the union of one option per operand covers it.
        union: set[Pair] = set()
        for op in self.operands:
            options = op.pair_options()
            if not options:
                return ()
            union |= min(options, key=len)
        return (frozenset(union),)


# --------------------------------------------------------------------------------------------------
# Selector


@dataclass(frozen=True, eq=False)
class Selector:
    """A parsed selector. Equal (and hash-equal) to any selector with the same canonical text."""

    root: Node

    @cached_property
    def canonical(self) -> str:
        return self.root.canonical()

    @cached_property
    def unique_id(self) -> str:
        """``s:`` + unpadded URL-safe base64 SHA-224 of ``s:<canonical>``; stable across runs."""
        return _hash_id("s:", self.canonical)

    @cached_property
    def evaluate(self) -> Callable[[Mapping[str, str]], bool]:
        """``selector.evaluate(labels)``: whether a label dict matches.

        The tree is compiled once into one Python function (``lambda L: <root.source()>``):
        matching is the calc graph's innermost loop (hundreds of thousands of evaluations in a
        snapshot) and a compiled expression is several times faster than walking the tree with a
        method call per node. `root.evaluate` stays as the readable definition; the tests check
        that both agree. Cached in the instance's __dict__, so later lookups are plain reads."""
        # Every leaf is a comparison, so `and`/`or`/`not` of them already give a bool.
        code = compile(f"lambda L: {self.root.source()}", "<selector>", "eval")
        # Safe: the source is built from the parsed tree, every literal written with repr().
        function: Callable[[Mapping[str, str]], bool] = eval(code, {"__builtins__": {}})  # noqa: S307
        return function

    def required_pairs(self) -> frozenset[Pair]:
        """(label, value) pairs any matching label dict must have: from ``==`` and single-element
        ``in``, unioned across ``&&`` and intersected across ``||``; negations give nothing."""
        return self.root.required_pairs()

    def pair_options(self) -> tuple[frozenset[Pair], ...]:
        return self.root.pair_options()

    def simple_pairs(self) -> frozenset[Pair] | None:
        """For a selector that is exactly one ``k == "v"`` or ``k in {...}``: the (k, v) pairs, any
        one of which makes a label dict match. None for any other selector."""
        root = self.root
        if isinstance(root, EqNode):
            return frozenset({(root.label, root.value)})
        if isinstance(root, InNode):
            return frozenset((root.label, v) for v in root.values)
        return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selector):
            return NotImplemented
        return self.canonical == other.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)

    def __str__(self) -> str:
        return self.canonical

    def __repr__(self) -> str:
        return f"Selector({self.canonical!r})"


# --------------------------------------------------------------------------------------------------
# Parser

# Label names, here and wherever labels are validated (resources.py).
LABEL_NAME_RE: Final = re.compile(r"[a-zA-Z0-9_./-]+")
_WORD = "word"
_STRING = "string"
_PUNCT = "punct"
_END = "end"
# Optional whitespace, then one token: a quoted literal (no escapes), a word (label, keyword),
# or punctuation (two-character operators first).
_TOKEN_RE: Final = re.compile(
    r"""\s*(?:(?P<string>"[^"]*"|'[^']*')"""
    rf"""|(?P<word>{LABEL_NAME_RE.pattern})"""
    r"""|(?P<punct>\|\||&&|==|!=|[!(){},]))"""
)
_SPACES_RE: Final = re.compile(r"\s*")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # the punctuation itself, _WORD, _STRING or _END
    value: str
    pos: int


def _describe(token: _Token) -> str:
    if token.kind == _END:
        return "end of input"
    if token.kind == _STRING:
        return f"literal {_quote(token.value)}"
    return repr(token.value)


def _tokenize(text: str) -> list[_Token]:
    # One regex scan: linear and quick even for a hostile, megabyte-long value.
    tokens: list[_Token] = []
    pos = 0
    length = len(text)
    while True:
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            pos = _SPACES_RE.match(text, pos).end()  # type: ignore[union-attr]  # always matches
            if pos == length:
                break
            char = text[pos]
            if char in "\"'":
                raise BadSelector(f"unterminated literal at position {pos} in selector {text!r}")
            raise BadSelector(
                f"unexpected character {char!r} at position {pos} in selector {text!r}"
            )
        kind = match.lastgroup or ""
        start = match.start(kind)
        if kind == _STRING:
            tokens.append(_Token(_STRING, text[start + 1 : match.end() - 1], start))
        elif kind == _WORD:
            tokens.append(_Token(_WORD, match.group(kind), start))
        else:
            punct = match.group(kind)
            tokens.append(_Token(punct, punct, start))
        pos = match.end()
    tokens.append(_Token(_END, "", length))
    return tokens


# Deepest parenthesis nesting accepted. Real selectors nest a few levels; the limit keeps a
# hostile value from the datastore from exhausting the parser's recursion (or the compiler's
# nesting limit in Selector.evaluate) and is reported like any other syntax error.
MAX_NESTING: Final = 32


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def error(self, expected: str, token: _Token | None = None) -> BadSelector:
        token = token or self.peek()
        return BadSelector(
            f"expected {expected} but found {_describe(token)} at position {token.pos} "
            f"in selector {self.text!r}"
        )

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.index += 1
        return token

    def expect(self, kind: str, expected: str) -> _Token:
        if self.peek().kind != kind:
            raise self.error(expected)
        return self.take()

    def parse(self) -> Node:
        if self.peek().kind == _END:
            return AllNode()
        node = self.expression()
        if self.peek().kind != _END:
            raise self.error("'&&', '||' or end of input")
        return node

    def expression(self) -> Node:
        operands = [self.and_group()]
        while self.peek().kind == "||":
            self.take()
            operands.append(self.and_group())
        return operands[0] if len(operands) == 1 else OrNode(tuple(operands))

    def and_group(self) -> Node:
        operands = [self.term()]
        while self.peek().kind == "&&":
            self.take()
            operands.append(self.term())
        return operands[0] if len(operands) == 1 else AndNode(tuple(operands))

    def term(self) -> Node:
        negations = 0
        while self.peek().kind == "!":
            self.take()
            negations += 1
        node: Node
        if self.peek().kind == "(":
            opening = self.take()
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise BadSelector(
                    f"parentheses nested more than {MAX_NESTING} deep at position {opening.pos} "
                    f"in selector {self.text!r}"
                )
            node = self.expression()
            self.expect(")", "')'")
            self.depth -= 1
        else:
            node = self.comparison()
        if negations % 2 == 0:
            return node
        # Double negation cancels however it is written ("!!x" or "!(!x)"), so that the
        # canonical text re-parses to itself and equivalent spellings share one ID.
        return node.operand if isinstance(node, NotNode) else NotNode(node)

    def comparison(self) -> Node:
        first = self.peek()
        if first.kind != _WORD:
            raise self.error("a label, 'has(', 'all(', '!' or '('")
        self.take()
        if first.value in ("has", "all") and self.peek().kind == "(":
            self.take()
            if first.value == "all":
                self.expect(")", "')' after 'all('")
                return AllNode()
            label = self.expect(_WORD, "a label name inside 'has(...)'").value
            self.expect(")", "')' after the label in 'has(...)'")
            return HasNode(label)
        label = first.value
        op = self.peek()
        if op.kind == "==":
            self.take()
            return EqNode(label, self.literal())
        if op.kind == "!=":
            self.take()
            return NeNode(label, self.literal())
        if op.kind == _WORD and op.value == "in":
            self.take()
            return InNode(label, self.literal_set())
        if op.kind == _WORD and op.value == "not" and self.peek(1).kind == _WORD:
            if self.peek(1).value == "in":
                self.take()
                self.take()
                return NotInNode(label, self.literal_set())
            raise self.error("'in' after 'not'", self.peek(1))
        raise self.error(f"'==', '!=', 'in' or 'not in' after label {label!r}")

    def literal(self) -> str:
        return self.expect(_STRING, "a quoted literal").value

    def literal_set(self) -> frozenset[str]:
        self.expect("{", "'{'")
        values = [self.literal()]
        while self.peek().kind == ",":
            self.take()
            values.append(self.literal())
        self.expect("}", "',' or '}'")
        return frozenset(values)


@lru_cache(maxsize=8192)
def parse_selector(text: str) -> Selector:
    """Parse selector text (cached by string). Raises BadSelector on invalid input."""
    return Selector(_Parser(text).parse())
