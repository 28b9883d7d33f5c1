"""The id and bundle rules (trioshim.shim.identifiers): containerd's, and safe as paths."""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioshim.shim.identifiers import (
    MAX_IDENTIFIER_LENGTH,
    InvalidBundle,
    InvalidIdentifier,
    validate_bundle,
    validate_identifier,
)

# containerd's rule, written out independently: runs of [A-Za-z0-9] joined by one of [._-].
_GO_RE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
VALID = st.from_regex(r"\A[A-Za-z0-9]{1,8}(?:[._-][A-Za-z0-9]{1,8}){0,6}\Z")
PATHISH = st.text(alphabet="ab./_-\0\n ", max_size=20)
STATE = "/run/containerd/io.containerd.runtime.v2.task/default"


def _valid(value: str) -> bool:
    try:
        validate_identifier(value)
    except InvalidIdentifier:
        return False
    return True


@pytest.mark.parametrize(
    "good",
    ["a", "A9", "k8s.io", "pod_1-c.2", "0", "a" * MAX_IDENTIFIER_LENGTH, "sha256-abc", "x.0"],
)
def test_containerd_identifiers_pass(good: str) -> None:
    validate_identifier(good)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "exec id must not be empty"),
        ("a" * 77, "greater than maximum length (76 characters)"),
        ("../../../../x", "must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"),
        ("..", "must match"),
        (".", "must match"),
        ("a/b", "must match"),
        ("a..b", "must match"),
        ("-a", "must match"),
        ("a-", "must match"),
        ("a b", "must match"),
        ("a\n", "must match"),  # Go's `$` ends the text: no final newline
        ("a\0", "must match"),
        ("é", "must match"),
    ],
)
def test_other_ids_are_refused_with_containerds_words(bad: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        validate_identifier(bad, "exec id")
    assert message in str(info.value)
    assert str(info.value).startswith("exec id")


@given(VALID)
def test_generated_identifiers_pass(value: str) -> None:
    if len(value) <= MAX_IDENTIFIER_LENGTH:
        validate_identifier(value)


@given(st.text(max_size=90) | PATHISH)
def test_the_rule_is_containerds_and_safe_as_a_path_component(value: str) -> None:
    accepted = _valid(value)
    assert accepted == (len(value) <= MAX_IDENTIFIER_LENGTH and bool(_GO_RE.fullmatch(value)))
    if accepted:
        assert "/" not in value and "\0" not in value and value not in (".", "..")
        assert posixpath.dirname(posixpath.normpath(posixpath.join("/b", value))) == "/b"


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ("c1", "not an absolute path"),
        ("../../x", "not an absolute path"),
        ("", "not an absolute path"),
        (f"{STATE}/../../x", "not a clean path"),
        (f"{STATE}/./c1", "not a clean path"),
        (f"{STATE}//c1", "not a clean path"),
        (f"{STATE}/c1/", "not a clean path"),
        (f"/{STATE}/c1", "not a clean path"),
        (f"{STATE}/c1\0", "NUL"),
        (f"{STATE}/c2", "not named after its container 'c1'"),
        ("/c1", None),  # the form alone is fine; the directory check below refuses it
    ],
)
def test_bundle_form(bundle: str, message: str | None) -> None:
    if message is None:
        validate_bundle(bundle, "c1")
        return
    with pytest.raises(InvalidBundle, match=re.escape(message)):
        validate_bundle(bundle, "c1")


@given(PATHISH)
def test_an_accepted_bundle_keeps_files_inside_the_bundle_directory(tail: str) -> None:
    bundle = f"{STATE}/{tail}"
    try:
        validate_bundle(bundle, tail)
    except InvalidBundle:
        return
    for name in ("init.pid", "log.json", "options.json"):
        path = posixpath.normpath(posixpath.join(bundle, name))
        assert posixpath.dirname(posixpath.dirname(path)) == STATE


def test_bundle_must_sit_in_the_bundle_directory(tmp_path: Path) -> None:
    state = tmp_path / "state" / "ns"
    state.mkdir(parents=True)
    validate_bundle(f"{state}/c1", "c1", bundle_dir=str(state))
    with pytest.raises(InvalidBundle, match="not in the shim's bundle directory"):
        validate_bundle(f"{tmp_path}/c1", "c1", bundle_dir=str(state))
    with pytest.raises(InvalidBundle, match="not in the shim's bundle directory"):
        validate_bundle(f"{tmp_path}/missing/c1", "c1", bundle_dir=str(state))


def test_bundle_directory_reached_through_a_symlink_is_the_same(tmp_path: Path) -> None:
    """containerd may name its state through a symlink (/var/run -> /run) while the daemon's
    resolved working directory does not: the same directory either way."""
    real = tmp_path / "run" / "ns"
    real.mkdir(parents=True)
    os.symlink(tmp_path / "run", tmp_path / "varrun")
    validate_bundle(f"{tmp_path}/varrun/ns/c1", "c1", bundle_dir=str(real))
