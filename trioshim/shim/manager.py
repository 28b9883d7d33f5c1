"""How a shim describes itself to the framework.

Subclass :class:`Manager` and override what differs from the defaults:

- :meth:`Manager.grouping_key`: which containers share one daemon (default: one per ``-id``);
- :meth:`Manager.after_spawn`: the daemon exists (e.g. move it into ``shim_cgroup``);
- :meth:`Manager.stop`: the ``delete`` action's clean-up after a daemon that is gone;
- :meth:`Manager.info`: the ``-info`` reply.

The daemon's behaviour is not here: it is the set of plugins in the registry passed to
:func:`trioshim.shim.run`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2

from trioshim.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from trioshim.api.containerd.types import introspection_pb2
from trioshim.shim.abandon import ABANDON_TIMEOUT
from trioshim.shim.address import DEFAULT_SOCKET_DIR, SOCKET_DIR_ENV
from trioshim.shim.flags import Flags
from trioshim.shim.reaper import Reaper

__all__ = ["Manager", "StartContext", "StopContext", "StopStatus", "answer_at_once"]


@dataclass(frozen=True)
class StartContext:
    """What the ``start`` action knows before it binds the socket."""

    flags: Flags
    bundle: str
    """Absolute bundle path (the helper's cwd)."""
    ttrpc_address: str
    """containerd's ttrpc address (``$TTRPC_ADDRESS``, ``unix://`` stripped)."""
    options: any_pb2.Any | None
    """Runtime options from stdin (pre-2.3 ``Any``, or the options extension of 2.3's
    ``BootstrapParams``); ``None`` when there are none."""
    bootstrap: bootstrap_pb2.BootstrapParams | None = None
    """containerd 2.3+ bootstrap parameters, when stdin carried them."""
    stdin: bytes = b""


@dataclass(frozen=True)
class StopContext:
    """What the ``delete`` action gives :meth:`Manager.stop`."""

    flags: Flags
    bundle: str
    """Absolute bundle path (``-bundle``, else cwd)."""
    reaper: Reaper
    """A serving reaper: spawn ``runc delete`` and the like through it."""
    log: logging.Logger
    """Writes to the helper's stderr (containerd logs it as warnings)."""


@dataclass(frozen=True)
class StopStatus:
    """The ``DeleteResponse`` of the ``delete`` action."""

    pid: int = 0
    exit_status: int = 128 + 9  # runc reports SIGKILL
    exited_at_ns: int = field(default_factory=time.time_ns)


class Manager:
    """The shim's lifecycle hooks; the defaults make a working shim."""

    #: ``runtime`` field of log records and ``RuntimeInfo.name``.
    name: str = "io.containerd.trioshim.v2"
    version: str = "0.1.0"
    revision: str = ""
    #: Annotations containerd uses to group containers into one daemon, first present wins.
    group_annotations: tuple[str, ...] = ("io.kubernetes.cri.sandbox-id",)
    #: Bound for in-flight requests at shutdown before they are cancelled (seconds).
    shutdown_grace: float = 2.0
    #: A daemon that gets no request within this many seconds of starting, or whose bundle is
    #: removed before its first request, was abandoned by containerd and shuts down
    #: (:mod:`trioshim.shim.abandon`); ``None`` keeps it serving whatever happens.
    abandon_timeout: float | None = ABANDON_TIMEOUT
    #: Highest ``containerd.task.vN.Task`` the daemon's plugins serve. 3 lets ``start`` reply
    #: so that containerd 2.x calls ``containerd.task.v3.Task`` (:mod:`trioshim.shim.peer`);
    #: 2 (the default) keeps the plain address every line reads as version 2.
    max_task_api: int = 2
    #: Serve every daemon of this runtime and containerd from one process
    #: (:mod:`trioshim.shim.shared`) instead of forking one process per daemon.
    shared: bool = False

    def __init__(self, name: str | None = None, *, socket_dir: str | None = None) -> None:
        if name is not None:
            self.name = name
        self._socket_dir = socket_dir

    @property
    def socket_dir(self) -> str:
        """Where sockets go: the constructor's, else ``$TRIOSHIM_SOCKET_DIR``, else
        ``/run/containerd/s``."""
        return self.socket_dir_in(os.environ)

    def socket_dir_in(self, env: Mapping[str, str]) -> str:
        """:attr:`socket_dir` for a start whose environment is ``env`` (shared mode's process
        runs starts whose environment is not its own)."""
        return self._socket_dir or env.get(SOCKET_DIR_ENV) or DEFAULT_SOCKET_DIR

    def grouping_key(self, ctx: StartContext) -> str:
        """The key hashed into the socket address. Default: the first of
        :attr:`group_annotations` present in the bundle's ``config.json``, else ``-id``."""
        if self.group_annotations:
            annotations = _read_annotations(os.path.join(ctx.bundle, "config.json"))
            for key in self.group_annotations:
                value = annotations.get(key)
                if value:
                    return value
        return ctx.flags.id

    def after_spawn(self, ctx: StartContext, pid: int) -> None:
        """Called in the start helper once the daemon ``pid`` exists (before the OOM score
        is set and the address printed). Raising fails ``start`` (the daemon is killed)."""

    async def stop(self, ctx: StopContext) -> StopStatus:
        """The ``delete`` action: clean up after a daemon that is gone. Must tolerate every
        file being absent and finish well inside 5 s. Default: nothing to clean."""
        return StopStatus()

    def stop_at_once(self, flags: Flags, bundle: str, log: logging.Logger) -> StopStatus | None:
        """The ``delete`` action when it has nothing to run or wait for, else None (the
        default), and :meth:`stop` runs. containerd runs the action after every daemon's
        exit and waits for it; a daemon that ended normally cleaned up before it went, and
        answering here spares the action its event loop and reaper (about 3 ms of a helper
        forked from the fork server, see docs/benchmarks.md). Called first, in the action's
        process; must not block, nor clean up anything itself that :meth:`stop` would.
        A subclass that overrides :meth:`stop` alone has its ``stop`` run every time
        (:func:`answer_at_once`)."""
        return None

    def info(self, options: bytes) -> introspection_pb2.RuntimeInfo:
        """The ``-info`` reply (``options`` is stdin: a marshalled ``Any`` or empty)."""
        return introspection_pb2.RuntimeInfo(
            name=self.name,
            version=introspection_pb2.RuntimeVersion(version=self.version, revision=self.revision),
        )


def _read_annotations(path: str) -> dict[str, str]:
    import json

    from trioshim.shim.bundlefile import read_bundle_file

    try:
        spec = json.loads(read_bundle_file(path))
    except FileNotFoundError:
        return {}
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    if not isinstance(annotations, dict):
        return {}
    return {k: v for k, v in annotations.items() if isinstance(v, str)}


def answer_at_once(
    manager: Manager, flags: Flags, bundle: str, log: logging.Logger
) -> StopStatus | None:
    """``manager``'s :meth:`~Manager.stop_at_once`, unless a subclass of the class that wrote
    it overrides :meth:`~Manager.stop`: an answer at once stands for the ``stop`` written
    beside it, and a subclass's own clean-up must run."""
    at_once, stop = (_defined_by(type(manager), name) for name in ("stop_at_once", "stop"))
    if stop is not at_once and issubclass(stop, at_once):
        return None
    return manager.stop_at_once(flags, bundle, log)


def _defined_by(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO whose body defines ``name``."""
    return next(klass for klass in cls.__mro__ if name in vars(klass))
