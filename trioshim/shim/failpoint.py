"""Failpoints: named points of a shim where a test makes the shim fail, stall or crash.

The expression language is containerd's (its ``pkg/failpoint``, after FreeBSD's fail(9)), so
that an annotation written for containerd's failpoint test shim means the same here::

    <count>*<action>[(<argument>)][-><more terms>]

    off          do nothing
    error(text)  fail the request with ``text``
    panic(text)  raise an unexpected exception (the shim's last line of defence must hold)
    delay(ms)    sleep ``ms`` milliseconds, then carry on

Each evaluation takes the first term whose count is not used up and spends one of it; once
every count is spent the point does nothing. ``1*off->1*error(retry)`` lets the first call
through and fails the second.

This module is sans-IO: parsing, printing and the counting state machine. What a term does
to a running request (raising, sleeping) is :mod:`trioshim.shim.inject`.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

ANNOTATION_PREFIX: Final = "io.containerd.runtime.v2.shim.failpoint."
"""An OCI annotation ``<prefix><point>`` holds the expression of failpoint ``<point>``."""

MAX_COUNT: Final = 2**63 - 1  # Go parses counts and delays as int64
ARROW: Final = "->"


class Action(enum.Enum):
    OFF = "off"
    ERROR = "error"
    PANIC = "panic"
    DELAY = "delay"


_OPENERS: Final = (
    ("off", Action.OFF),
    ("error(", Action.ERROR),
    ("panic(", Action.PANIC),
    ("delay(", Action.DELAY),
)


class FailpointSyntaxError(ValueError):
    """An expression (or an annotation naming an unknown point) that cannot be used."""


@dataclass(frozen=True)
class Term:
    """``count`` times ``action``; ``message`` for error/panic, ``delay_ms`` for delay."""

    count: int
    action: Action
    message: str = ""
    delay_ms: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.count <= MAX_COUNT:
            raise ValueError(f"count {self.count} is outside 0..{MAX_COUNT}")
        if self.action in (Action.ERROR, Action.PANIC):
            if not self.message or ")" in self.message:
                raise ValueError(f"{self.action.value} needs a message without ')'")
        elif self.message:
            raise ValueError(f"{self.action.value} takes no message")
        if self.action is Action.DELAY:
            if not 0 <= self.delay_ms <= MAX_COUNT:
                raise ValueError(f"delay {self.delay_ms} ms is outside 0..{MAX_COUNT}")
        elif self.delay_ms:
            raise ValueError(f"{self.action.value} takes no delay")

    def __str__(self) -> str:
        return _format_term(self.count, self)


def _format_term(count: int, term: Term) -> str:
    head = f"{count}*{term.action.value}"
    if term.action is Action.OFF:
        return head
    if term.action is Action.DELAY:
        return f"{head}({term.delay_ms})"
    return f"{head}({term.message})"


def format_terms(terms: Collection[Term]) -> str:
    """The expression of ``terms`` (what :func:`parse_terms` reads back)."""
    return ARROW.join(str(term) for term in terms)


# --- parsing ------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, expected: str) -> FailpointSyntaxError:
        rest = self.text[self.pos :]
        found = f"{rest[:20]!r}" if rest else "the end"
        return FailpointSyntaxError(
            f"invalid failpoint expression {self.text!r}: expected {expected} at offset "
            f"{self.pos}, found {found} (syntax: <count>*off|error(msg)|panic(msg)|delay(ms), "
            f"terms joined by {ARROW})"
        )

    def number(self, what: str, terminator: str) -> int:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "0123456789":
            self.pos += 1
        if self.pos == start:
            raise self.fail(what)
        value = int(self.text[start : self.pos])
        if value > MAX_COUNT:
            self.pos = start
            raise self.fail(f"{what} of at most {MAX_COUNT}")
        self.expect(terminator)
        return value

    def expect(self, literal: str) -> None:
        if not self.text.startswith(literal, self.pos):
            raise self.fail(repr(literal))
        self.pos += len(literal)

    def message(self, action: Action) -> str:
        end = self.text.find(")", self.pos)
        if end <= self.pos:
            raise self.fail(f"a non-empty message and ')' for {action.value}")
        text = self.text[self.pos : end]
        self.pos = end + 1
        return text

    def opener(self) -> Action:
        for opener, action in _OPENERS:
            if self.text.startswith(opener, self.pos):
                self.pos += len(opener)
                return action
        raise self.fail("off, error(, panic( or delay(")

    def term(self) -> Term:
        count = self.number("a count", "*")
        action = self.opener()
        if action is Action.OFF:
            return Term(count, action)
        if action is Action.DELAY:
            return Term(count, action, delay_ms=self.number("milliseconds", ")"))
        return Term(count, action, message=self.message(action))


def parse_terms(text: str) -> tuple[Term, ...]:
    """The terms of an expression; :class:`FailpointSyntaxError` saying where it went wrong."""
    reader = _Reader(text)
    terms = [reader.term()]
    while reader.pos < len(text):
        reader.expect(ARROW)
        terms.append(reader.term())
    return tuple(terms)


# --- evaluation ---------------------------------------------------------------------------------


class Failpoint:
    """One named point: its terms and what is left of their counts."""

    def __init__(self, name: str, terms: Collection[Term]) -> None:
        self.name = name
        self.terms = tuple(terms)
        self._left = [term.count for term in self.terms]

    @classmethod
    def parse(cls, name: str, text: str) -> Failpoint:
        return cls(name, parse_terms(text))

    def evaluate(self) -> Term | None:
        """Spend one count of the first term that has any left and return that term (None
        when all are spent: the point is inert from then on)."""
        for index, left in enumerate(self._left):
            if left:
                self._left[index] = left - 1
                return self.terms[index]
        return None

    def __str__(self) -> str:
        """The expression of what is left (containerd's ``Marshal``: remaining counts)."""
        return ARROW.join(_format_term(n, t) for n, t in zip(self._left, self.terms, strict=True))

    def __repr__(self) -> str:
        return f"<Failpoint {self.name} {self}>"


class Failpoints(Mapping[str, Failpoint]):
    """The failpoints of one scope (a container), by point name."""

    def __init__(self, points: Mapping[str, Failpoint]) -> None:
        self._points = dict(points)

    @classmethod
    def from_annotations(
        cls, annotations: Mapping[str, object], known: Collection[str]
    ) -> Failpoints | None:
        """The failpoints the annotations set (None when they set none). Raises
        :class:`FailpointSyntaxError` for a point not in ``known``, a value that is not a
        string, or an expression that does not parse."""
        points: dict[str, Failpoint] = {}
        for key, value in annotations.items():
            if not key.startswith(ANNOTATION_PREFIX):
                continue
            name = key[len(ANNOTATION_PREFIX) :]
            if name not in known:
                raise FailpointSyntaxError(
                    f"unknown failpoint {name!r} in annotation {key}: "
                    f"this shim has {', '.join(sorted(known))}"
                )
            if not isinstance(value, str):
                raise FailpointSyntaxError(f"annotation {key}: the value must be a string")
            try:
                points[name] = Failpoint.parse(name, value)
            except FailpointSyntaxError as exc:
                raise FailpointSyntaxError(f"annotation {key}: {exc}") from None
        return cls(points) if points else None

    def evaluate(self, name: str) -> Term | None:
        """The term point ``name`` fires now (None: no such point, or nothing to do)."""
        point = self._points.get(name)
        return point.evaluate() if point is not None else None

    def __getitem__(self, name: str) -> Failpoint:
        return self._points[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._points)

    def __len__(self) -> int:
        return len(self._points)

    def __repr__(self) -> str:
        return f"<Failpoints {', '.join(f'{n}={p}' for n, p in self._points.items())}>"
