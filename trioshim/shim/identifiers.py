"""What a container id, an exec id and a bundle path may be, checked before anything uses them.

A shim turns ids and the bundle into paths (``<bundle>/init.pid``, runc's ``<root>/<id>``, an
exec's pid file named after its id), so a request whose id holds ``../`` or whose bundle is a
relative path would make it write, and run runc, outside containerd's directories. containerd
itself never sends such values:

- every container id, namespace and exec id passes ``identifiers.Validate``: 1 to 76
  characters, runs of ASCII letters and digits joined by single ``.``, ``_`` or ``-``;
- the bundle is ``<state>/<namespace>/<id>`` (all three containerd lines, for ``ctr`` and
  CRI alike): absolute, normalised, and named after the container.

So these checks refuse nothing containerd sends. Standard library only: the start helper
imports this module (through :mod:`trioshim.shim.flags`) before Trio and protobuf.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Final

__all__ = [
    "IDENTIFIER_PATTERN",
    "MAX_IDENTIFIER_LENGTH",
    "InvalidBundle",
    "InvalidIdentifier",
    "InvalidRequest",
    "validate_bundle",
    "validate_identifier",
]

IDENTIFIER_PATTERN: Final = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
"""containerd's pattern, spelled as it prints it in its own error message."""
MAX_IDENTIFIER_LENGTH: Final = 76

# Go's `$` without the multi-line flag matches only at the very end; Python's `$` also
# before a final newline, hence `\Z`.
_IDENTIFIER: Final = re.compile(IDENTIFIER_PATTERN.removesuffix("$") + r"\Z")


class InvalidRequest(ValueError):
    """A value containerd would never send; the service boundary answers InvalidArgument."""


class InvalidIdentifier(InvalidRequest):
    """An id that is not a containerd identifier."""


class InvalidBundle(InvalidRequest):
    """A bundle path that is not ``<containerd's bundle directory>/<id>``."""


def validate_identifier(value: str, what: str = "identifier") -> None:
    """Raise :class:`InvalidIdentifier` unless ``value`` is a containerd identifier.

    The messages are containerd's, prefixed by ``what`` (e.g. ``exec id``).
    """
    if not value:
        raise InvalidIdentifier(f"{what} must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidIdentifier(
            f"{what} {value!r} greater than maximum length ({MAX_IDENTIFIER_LENGTH} characters)"
        )
    if not _IDENTIFIER.match(value):
        raise InvalidIdentifier(f"{what} {value!r} must match {IDENTIFIER_PATTERN}")


def validate_bundle(bundle: str, container_id: str, *, bundle_dir: str | None = None) -> None:
    """Raise :class:`InvalidBundle` unless ``bundle`` is ``<bundle_dir>/<container_id>``.

    ``container_id`` must be valid already. Without ``bundle_dir`` (a shim that does not know
    containerd's directory) only the form is checked: absolute, normalised, no NUL, last
    component the id. With it, the bundle's parent must also be that directory: compared as
    a path first, then by identity (a state directory reached through a symlink, which the
    daemon's resolved working directory no longer shows).
    """
    if "\0" in bundle:
        raise InvalidBundle(f"bundle {bundle!r} contains a NUL byte")
    if not posixpath.isabs(bundle):
        raise InvalidBundle(f"bundle {bundle!r} is not an absolute path")
    # normpath keeps a leading "//" (POSIX leaves its meaning open): not clean either.
    if posixpath.normpath(bundle) != bundle or bundle.startswith("//"):
        raise InvalidBundle(f"bundle {bundle!r} is not a clean path (no '.', '..' or '//')")
    parent, name = posixpath.split(bundle)
    if name != container_id:
        raise InvalidBundle(f"bundle {bundle!r} is not named after its container {container_id!r}")
    if bundle_dir is None or parent == bundle_dir:
        return
    try:
        same = os.path.samefile(parent, bundle_dir)
    except OSError:
        same = False
    if not same:
        raise InvalidBundle(f"bundle {bundle!r} is not in the shim's bundle directory {bundle_dir}")
