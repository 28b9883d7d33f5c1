"""The shim framework: actions, root nursery, plugins, publisher, reaper, signals, log.

A shim is a :class:`Manager` (lifecycle hooks) plus a :class:`Registry` of plugins (its
services); ``run(manager, argv, registry)`` does the rest. See ``examples/`` and
``docs/interfaces.md``.
"""

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
from trioshim.shim.reaper import DEVNULL, PIPE, Child, Completed, Exit, Reaper, open_reaper
from trioshim.shim.shutdown import ShutdownService

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
