"""Standard-library modules a shim process imports but never uses, deferred to first use.

``import trio`` pulls in ``ssl`` (``trio._ssl``) and ``hmac`` (``trio._dtls``), and with them
OpenSSL's ``libcrypto`` and ``libssl``; ``idna`` (``trio._socket``), ``ipaddress``
(``urllib.parse``, via ``pathlib``), ``bz2``, ``lzma`` and ``fnmatch`` (``shutil``, via
``ctypes.util``) and ``locale`` (``subprocess``) come along too, as do ``pickle`` and
``calendar`` with protobuf and ``tokenize`` with ``logging`` (``linecache``). A shim never
opens a TLS stream, a DTLS endpoint, a host name or an archive, pickles nothing, and reads a
source line only to format a traceback; yet in a long-lived process these modules cost about
6 MB of PSS and 2.5 MB of private dirty memory (libcrypto's relocated data alone is about
1.4 MB), a good part of the shared process's fixed cost (docs/benchmarks.md).

:func:`defer_unused_modules`, called before anything imports trio, puts a placeholder module
in :data:`sys.modules` for each of them. ``import ssl`` then binds the placeholder and runs
nothing; the first attribute looked up on it (``ssl.SSLContext``, ``from ssl import ...``)
imports the real module, which replaces the placeholder in :data:`sys.modules` and whose
namespace the placeholder takes on, so a code path that does use one still works, only
later. (The standard library's ``importlib.util.LazyLoader`` does not do here: on Python
3.11, ``import x`` of a lazily loaded module reads ``x.__spec__``, and that read runs it.)

Limits, none of which a shim meets: ``getattr(placeholder, name, default)`` and
``inspect.getmodule`` (which reads every module's ``__file__``) load what they touch; and
``import idna.core`` while ``idna`` is still deferred runs ``idna.core`` twice (looking up the
package's ``__path__`` loads the package, whose ``__init__`` imports ``core``, and the import
machinery then runs it again), so ``import idna`` first or ``from idna import core``.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Iterable
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Final

__all__ = ["UNUSED_MODULES", "DeferredModule", "defer_unused_modules"]

UNUSED_MODULES: Final = (
    "ssl",
    "hmac",
    "hashlib",
    "idna",
    "ipaddress",
    "bz2",
    "lzma",
    "fnmatch",
    "locale",
    "pickle",
    "calendar",
    "tokenize",
)

# trio.to_thread workers may be the first to touch one; re-entrant, for a module whose own
# import uses another deferred one (a load inside a load, in the same thread).
_lock = threading.RLock()


class DeferredModule(ModuleType):
    """Stands in :data:`sys.modules` for a module not imported yet; see the module's text."""

    def __getattr__(self, attr: str) -> object:
        # Only names not in our namespace come here: before the load, every name but the
        # module attributes set in defer_unused_modules; after it, none the real module has.
        return getattr(load(self), attr)


def load(placeholder: DeferredModule) -> ModuleType:
    """Import the real module behind ``placeholder`` (once) and return it."""
    name = placeholder.__name__
    with _lock:
        if sys.modules.get(name) is placeholder:
            del sys.modules[name]
            try:
                real = importlib.import_module(name)
            except BaseException:
                sys.modules[name] = placeholder
                raise
            # Whoever bound the placeholder (``import ssl`` ran before the load) sees the real
            # module's names from now on.
            placeholder.__dict__.update(real.__dict__)
        else:
            # Loaded already, or taken out of sys.modules since (a test's clean-up, a reload):
            # then the module is imported afresh, as ``import`` would.
            real = sys.modules.get(name) or importlib.import_module(name)
    return real


def defer_unused_modules(names: Iterable[str] = UNUSED_MODULES) -> list[str]:
    """Defer each module of ``names`` nobody has imported yet; return those deferred."""
    deferred = []
    for name in names:
        if name in sys.modules or "." in name:
            continue
        placeholder = DeferredModule(name)
        # A spec whose ``_initializing`` is false is what lets ``import name`` bind the
        # placeholder without looking further.
        placeholder.__spec__ = ModuleSpec(name, None)
        sys.modules[name] = placeholder
        deferred.append(name)
    return deferred
