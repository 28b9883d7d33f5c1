"""The IO side of failpoints (:mod:`trioshim.shim.failpoint`): where they come from and what a
fired term does to the request that hit it.

- :func:`bundle_failpoints` reads them from the annotations of a bundle's ``config.json``. It
  is meant to run on every Create, so the common case is cheap: when the file does not contain
  the annotation prefix at all, nothing is parsed.
- :func:`trigger` carries a term out inside the caller's request: ``error`` raises
  :class:`InjectedError` (the service turns it into its usual bare-text error), ``panic``
  raises :class:`InjectedPanic`, an exception no handler expects, and ``delay`` is a
  :func:`trio.sleep`, so a cancelled or timed-out request stops waiting at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from typing import Final

import trio

from trioshim.shim.bundlefile import read_bundle_file
from trioshim.shim.failpoint import (
    ANNOTATION_PREFIX,
    Action,
    Failpoints,
    FailpointSyntaxError,
    Term,
)

CONFIG_FILE: Final = "config.json"
_PREFIX_BYTES: Final = ANNOTATION_PREFIX.encode()


class InjectedError(Exception):
    """``error(message)`` fired."""

    def __init__(self, point: str, message: str) -> None:
        super().__init__(message)
        self.point = point
        self.message = message


class InjectedPanic(Exception):
    """``panic(message)`` fired: stands for a bug, so nothing is meant to catch it."""

    def __init__(self, point: str, message: str) -> None:
        super().__init__(f"failpoint {point}: panic: {message}")
        self.point = point


def bundle_failpoints(bundle: str, known: Collection[str]) -> Failpoints | None:
    """The failpoints set by the annotations of ``<bundle>/config.json`` (None: none set).

    A missing or unreadable spec is not this function's concern (None: the runtime reports
    it); a spec that sets failpoints badly raises :class:`FailpointSyntaxError`.
    """
    try:
        data = read_bundle_file(os.path.join(bundle, CONFIG_FILE))
    except OSError:
        return None
    if _PREFIX_BYTES not in data:
        return None
    try:
        spec = json.loads(data)
    except ValueError:
        return None
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    if annotations is None:
        return None
    if not isinstance(annotations, dict):
        raise FailpointSyntaxError(f"{CONFIG_FILE}: annotations must be an object")
    return Failpoints.from_annotations(annotations, known)


async def trigger(point: str, term: Term | None) -> None:
    """Carry out ``term`` (what failpoint ``point`` fired) in the current task."""
    if term is None or term.action is Action.OFF:
        return
    if term.action is Action.DELAY:
        await trio.sleep(term.delay_ms / 1000)
    elif term.action is Action.ERROR:
        raise InjectedError(point, term.message)
    else:
        raise InjectedPanic(point, term.message)
