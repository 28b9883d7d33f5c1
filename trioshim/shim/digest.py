"""SHA-256 without OpenSSL, for the names the shim derives (socket addresses, fork-server keys).

``hashlib.sha256`` is OpenSSL's: importing ``hashlib`` loads ``libcrypto`` (about 1.4 MB of
private relocated data in every long-lived shim process, see
:mod:`trioshim.shim.deferimport`) and costs a start helper about 2 ms. CPython's own
implementation (the extension module ``_sha2`` from 3.12, ``_sha256`` before, built in or in
``lib-dynload``) needs no library; ``hashlib`` is the fallback for an interpreter without it.
Imports nothing else: start helpers use it.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _builtin_sha256() -> "Callable[[bytes], Any]":
    for name in ("_sha2", "_sha256"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        return module.sha256  # type: ignore[no-any-return]
    import hashlib

    return hashlib.sha256


_sha256 = _builtin_sha256()


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 digest of ``data``."""
    return str(_sha256(data).hexdigest())
