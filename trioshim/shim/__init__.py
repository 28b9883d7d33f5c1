"""The shim framework: actions, root nursery, plugins, publisher, reaper, signals, log.

A shim is a :class:`Manager` (lifecycle hooks) plus a :class:`Registry` of plugins (its
services); ``run(manager, argv, registry)`` does the rest. See ``examples/`` and
``docs/interfaces.md``.

Names are imported lazily (PEP 562), so ``import trioshim.shim.forkserver`` stays as light as
the standard library: the start helper must not pay for Trio and protobuf.
"""

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from trioshim.shim.flags import FlagError, Flags, parse_flags
    from trioshim.shim.main import main, run
    from trioshim.shim.manager import Manager, StartContext, StopContext, StopStatus
    from trioshim.shim.plugin import (
        EVENT_PLUGIN,
        INTERNAL_PLUGIN,
        REAPER_PLUGIN,
        TTRPC_PLUGIN,
        InitContext,
        PluginError,
        PluginNotFound,
        Registration,
        Registry,
        SkipPlugin,
        default_registry,
        register,
    )
    from trioshim.shim.publisher import Publisher
    from trioshim.shim.reaper import (
        DEVNULL,
        PIPE,
        Child,
        Completed,
        Exit,
        Reaper,
        open_reaper,
    )
    from trioshim.shim.shutdown import ShutdownService

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["FlagError", "Flags", "parse_flags"], "flags"),
    **dict.fromkeys(["main", "run"], "main"),
    **dict.fromkeys(["Manager", "StartContext", "StopContext", "StopStatus"], "manager"),
    **dict.fromkeys(
        [
            "EVENT_PLUGIN",
            "INTERNAL_PLUGIN",
            "REAPER_PLUGIN",
            "TTRPC_PLUGIN",
            "InitContext",
            "PluginError",
            "PluginNotFound",
            "Registration",
            "Registry",
            "SkipPlugin",
            "default_registry",
            "register",
        ],
        "plugin",
    ),
    "Publisher": "publisher",
    **dict.fromkeys(
        ["DEVNULL", "PIPE", "Child", "Completed", "Exit", "Reaper", "open_reaper"], "reaper"
    ),
    "ShutdownService": "shutdown",
}

__all__ = [
    "DEVNULL",
    "EVENT_PLUGIN",
    "INTERNAL_PLUGIN",
    "PIPE",
    "REAPER_PLUGIN",
    "TTRPC_PLUGIN",
    "Child",
    "Completed",
    "Exit",
    "FlagError",
    "Flags",
    "InitContext",
    "Manager",
    "PluginError",
    "PluginNotFound",
    "Publisher",
    "Reaper",
    "Registration",
    "Registry",
    "ShutdownService",
    "SkipPlugin",
    "StartContext",
    "StopContext",
    "StopStatus",
    "default_registry",
    "main",
    "open_reaper",
    "parse_flags",
    "register",
    "run",
]


def __getattr__(name: str) -> "Any":
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trioshim.shim' has no attribute {name!r}")
    import importlib  # here: importing it (and warnings) costs the start helper 0.5 ms

    value = getattr(importlib.import_module(f"trioshim.shim.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
