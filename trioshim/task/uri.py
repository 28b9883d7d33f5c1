"""containerd's stdio URIs, read the way Go's ``net/url`` reads them.

containerd passes each stream as a path (a FIFO) or a URI (``file:///log``,
``binary:///usr/bin/logger?k=v``); the scheme of ``stdout`` picks the stdio mode. Both shims
parse them here, so a URI Go would refuse is refused with Go's words
(``unable to parse stdout uri: parse "...": ...``) and a plain path is never mistaken for a
URI.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

__all__ = ["UriError", "stdout_scheme", "uri_path"]

_SCHEME_CHARS: Final = re.compile(r"[A-Za-z0-9+.\-]")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


class UriError(ValueError):
    """``stdout`` is not a URI Go's ``url.Parse`` accepts (the message is containerd's)."""


def stdout_scheme(uri: str) -> str:
    """The lower-cased scheme of the ``stdout`` URI ('' for a plain path); :class:`UriError`
    for what Go's ``url.Parse`` refuses (a control character, a bad escape, ``:x``)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise UriError(_refused(uri, "net/url: invalid control character in URL"))
    bad = _BAD_ESCAPE.search(uri.split("?", 1)[0])
    if bad is not None:
        raise UriError(_refused(uri, f'invalid URL escape "{uri[bad.start() : bad.start() + 3]}"'))
    for i, ch in enumerate(uri):
        if ch.isascii() and ch.isalpha():
            continue
        if ch == ":":
            if i == 0:
                raise UriError(_refused(uri, "missing protocol scheme"))
            return uri[:i].lower()
        if i > 0 and _SCHEME_CHARS.fullmatch(ch):
            continue
        return ""
    return ""


def uri_path(uri: str) -> str:
    """The unescaped path of a URI (``file:///a%20b`` -> ``/a b``)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(uri).path)


def _refused(uri: str, why: str) -> str:
    return f'unable to parse stdout uri: parse "{uri}": {why}'
