"""Failpoint expressions: parsing, printing, counting, annotations, and what a term does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trioshim.shim.failpoint import (
    ANNOTATION_PREFIX,
    MAX_COUNT,
    Action,
    Failpoint,
    Failpoints,
    FailpointSyntaxError,
    Term,
    format_terms,
    parse_terms,
)
from trioshim.shim.inject import InjectedError, InjectedPanic, bundle_failpoints, trigger

KNOWN = frozenset({"Create", "Create.after", "Start"})

counts = st.integers(min_value=0, max_value=MAX_COUNT)
messages = st.text(min_size=1).filter(lambda s: ")" not in s)
terms = st.one_of(
    st.builds(Term, counts, st.just(Action.OFF)),
    st.builds(Term, counts, st.sampled_from([Action.ERROR, Action.PANIC]), messages),
    st.builds(lambda n, ms: Term(n, Action.DELAY, delay_ms=ms), counts, counts),
)
expressions = st.lists(terms, min_size=1, max_size=6).map(tuple)


@given(expressions)
def test_terms_round_trip(parsed: tuple[Term, ...]) -> None:
    text = format_terms(parsed)
    assert parse_terms(text) == parsed
    assert format_terms(parse_terms(text)) == text


def test_containerd_examples() -> None:
    assert parse_terms("1*error(msg)->1*delay(10)->1*panic(x)->1*off") == (
        Term(1, Action.ERROR, "msg"),
        Term(1, Action.DELAY, delay_ms=10),
        Term(1, Action.PANIC, "x"),
        Term(1, Action.OFF),
    )
    assert parse_terms("1*off->1*error(please retry)") == (
        Term(1, Action.OFF),
        Term(1, Action.ERROR, "please retry"),
    )
    # a message runs to the first ')': an arrow inside it is text
    assert parse_terms("2*error(a->b)") == (Term(2, Action.ERROR, "a->b"),)
    assert parse_terms("007*off") == (Term(7, Action.OFF),)


@pytest.mark.parametrize(
    ("text", "expected", "offset"),
    [
        ("", "a count", 0),
        ("error(x)", "a count", 0),
        ("1error(x)", "'*'", 1),
        ("1*eror(x)", "off, error(, panic( or delay(", 2),
        ("1*error()", "a non-empty message", 8),
        ("1*error(x", "a non-empty message", 8),
        ("1*panic()", "a non-empty message", 8),
        ("1*delay()", "milliseconds", 8),
        ("1*delay(1.5)", "')'", 9),
        ("1*delay(-1)", "milliseconds", 8),
        ("1*off(x)", "'->'", 5),
        ("1*off->", "a count", 7),
        ("1*off 1*off", "'->'", 5),
        ("1*off->->1*off", "a count", 7),
        (f"{MAX_COUNT + 1}*off", f"a count of at most {MAX_COUNT}", 0),
        (" 1*off", "a count", 0),
        # containerd refuses these two as well: panic needs a message, off a count
        ("1*panic()->1*off", "a non-empty message", 8),
        ("1*error(x)->off", "a count", 12),
    ],
)
def test_bad_expressions_say_where(text: str, expected: str, offset: int) -> None:
    with pytest.raises(FailpointSyntaxError) as info:
        parse_terms(text)
    message = str(info.value)
    assert f"invalid failpoint expression {text!r}: expected {expected}" in message
    assert f"at offset {offset}," in message


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_the_syntax_error(text: str) -> None:
    try:
        parsed = parse_terms(text)
    except FailpointSyntaxError:
        return
    assert parse_terms(format_terms(parsed)) == parsed


@pytest.mark.parametrize(
    "fields",
    [
        {"count": -1, "action": Action.OFF},
        {"count": 1, "action": Action.ERROR},
        {"count": 1, "action": Action.PANIC, "message": "a)b"},
        {"count": 1, "action": Action.OFF, "message": "x"},
        {"count": 1, "action": Action.OFF, "delay_ms": 3},
        {"count": 1, "action": Action.DELAY, "delay_ms": MAX_COUNT + 1},
    ],
)
def test_terms_check_their_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Term(**fields)


def test_evaluation_spends_counts_in_order() -> None:
    point = Failpoint.parse("Create", "1*off->2*error(x)->0*panic(never)->1*delay(5)")
    fired = [point.evaluate() for _ in range(6)]
    assert [t.action if t else None for t in fired] == [
        Action.OFF,
        Action.ERROR,
        Action.ERROR,
        Action.DELAY,
        None,
        None,
    ]
    assert str(point) == "0*off->0*error(x)->0*panic(never)->0*delay(5)"


def test_from_annotations() -> None:
    annotations = {
        "other": "x",
        ANNOTATION_PREFIX + "Create": "1*error(boom)",
        ANNOTATION_PREFIX + "Create.after": "1*off->1*panic(p)",
    }
    points = Failpoints.from_annotations(annotations, KNOWN)
    assert points is not None
    assert sorted(points) == ["Create", "Create.after"]
    assert points.evaluate("Start") is None
    assert points.evaluate("Create") == Term(1, Action.ERROR, "boom")
    assert points.evaluate("Create") is None
    assert Failpoints.from_annotations({"other": "x"}, KNOWN) is None


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({ANNOTATION_PREFIX + "State": "1*off"}, "unknown failpoint 'State'"),
        ({ANNOTATION_PREFIX + "Create": 3}, "the value must be a string"),
        ({ANNOTATION_PREFIX + "Start": "1*oops"}, f"annotation {ANNOTATION_PREFIX}Start: "),
    ],
)
def test_bad_annotations(annotations: dict[str, object], message: str) -> None:
    with pytest.raises(FailpointSyntaxError, match=message.replace("*", r"\*")):
        Failpoints.from_annotations(annotations, KNOWN)


def _bundle(tmp_path: Path, text: str) -> str:
    (tmp_path / "config.json").write_text(text)
    return str(tmp_path)


def test_bundle_failpoints(tmp_path: Path) -> None:
    key = ANNOTATION_PREFIX + "Start"
    assert bundle_failpoints(str(tmp_path / "missing"), KNOWN) is None
    assert bundle_failpoints(_bundle(tmp_path, '{"annotations": {"a": "b"}}'), KNOWN) is None
    # broken JSON is the runtime's to report
    assert bundle_failpoints(_bundle(tmp_path, '{"' + key), KNOWN) is None
    spec = {"annotations": {key: "1*error(no)"}}
    points = bundle_failpoints(_bundle(tmp_path, json.dumps(spec)), KNOWN)
    assert points is not None and str(points["Start"]) == "1*error(no)"
    with pytest.raises(FailpointSyntaxError, match="annotations must be an object"):
        bundle_failpoints(_bundle(tmp_path, json.dumps({"annotations": [key]})), KNOWN)


async def test_trigger_actions() -> None:
    await trigger("Create", None)
    await trigger("Create", Term(1, Action.OFF))
    with pytest.raises(InjectedError) as error:
        await trigger("Create", Term(1, Action.ERROR, "boom"))
    assert (error.value.point, error.value.message) == ("Create", "boom")
    with pytest.raises(InjectedPanic, match="failpoint Start: panic: oops"):
        await trigger("Start", Term(1, Action.PANIC, "oops"))


async def test_delay_sleeps_and_is_cancellable(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    await trigger("Create", Term(1, Action.DELAY, delay_ms=1500))
    assert trio.current_time() - start == 1.5
    with trio.move_on_after(2) as scope:
        await trigger("Create", Term(1, Action.DELAY, delay_ms=MAX_COUNT))
    assert scope.cancelled_caught
    assert trio.current_time() - start == 3.5
