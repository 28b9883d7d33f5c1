"""The instance level: what a backend implements, one object per process.

A :class:`Backend` makes the init process of a container (:meth:`Backend.create`); an
:class:`Instance` is one process (the init, or an exec made by :meth:`Instance.exec`). The
required operations are ``start``, ``kill``, ``wait`` and ``delete``; the others are optional:
an instance without one answers Unimplemented naming the RPC (see :data:`OPTIONAL`).

The kit calls them in an order it guarantees (``trioshim.task.service``): ``start`` at most
once, and only on a created process; ``wait`` exactly once, after ``start`` succeeded (or
after a ``kill`` of a process never started); ``delete`` last, never while ``wait`` is pending
unless the process was never started. Events, Wait, the states and the error codes are the
kit's job, not the instance's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import trio
from google.protobuf import any_pb2

from trioshim.shim.reaper import Reaper
from trioshim.task.stdio import Stdio, StdioSpec, open_stdio

__all__ = [
    "OPTIONAL",
    "Backend",
    "CreateRequest",
    "ExecRequest",
    "Exit",
    "HasCreatedPid",
    "Host",
    "Instance",
    "ProcessInfo",
    "ReadsOwnSpec",
    "SupportsCheckpoint",
    "SupportsCloseStdin",
    "SupportsExec",
    "SupportsPause",
    "SupportsPids",
    "SupportsResize",
    "SupportsResume",
    "SupportsStats",
    "SupportsUpdate",
]


@dataclass(frozen=True)
class Host:
    """What the shim lends its backends."""

    namespace: str
    reaper: Reaper
    """Start every child through it (one reaper per shim process)."""
    nursery: trio.Nursery
    """Owned by the task service: tasks an instance starts live here and end at shutdown."""
    report_oom: Callable[[str], None] = field(default=lambda container_id: None)
    """Publish TaskOOM for a container now: an OOM kill that did not end its init (containerd's
    runc shim reports those as they happen). One that ends it goes with the exit instead
    (:attr:`Exit.oom`), which orders the two."""


@dataclass(frozen=True)
class Exit:
    """How a process ended: ``status`` is its exit code, or 128 + the signal that killed it.

    ``oom``: the process was killed by the OOM killer; the kit publishes TaskOOM before this
    exit's TaskExit (the hand-off that orders the two)."""

    status: int
    exited_at_ns: int | None = field(default_factory=time.time_ns)
    """Wall-clock ns; ``None`` for a process that never ran (Go's zero time on the wire)."""
    oom: bool = False


@dataclass(frozen=True)
class ProcessInfo:
    """One line of Pids."""

    pid: int
    info: any_pb2.Any | None = None


@dataclass(frozen=True)
class CreateRequest:
    """A Create, checked (ids, bundle) and decoded."""

    id: str
    bundle: str
    stdio: StdioSpec
    host: Host
    spec: Mapping[str, Any]
    """The OCI runtime spec (``<bundle>/config.json``)."""
    rootfs_mounts: tuple[Any, ...] = ()
    """containerd's ``rootfs`` mounts (``containerd.types.Mount``), unmounted."""
    options: any_pb2.Any | None = None
    checkpoint: str = ""
    """A checkpoint image to restore the container from (at Start) instead of starting it."""
    parent_checkpoint: str = ""

    async def open_stdio(self) -> Stdio:
        """Open :attr:`stdio` as containerd asked (the caller owns the result)."""
        return await open_stdio(
            self.stdio,
            reaper=self.host.reaper,
            container_id=self.id,
            namespace=self.host.namespace,
            nursery=self.host.nursery,
        )


@dataclass(frozen=True)
class ExecRequest:
    """An Exec, checked and decoded: ``process`` is the OCI process spec it carries."""

    container_id: str
    exec_id: str
    stdio: StdioSpec
    host: Host
    process: Mapping[str, Any]

    async def open_stdio(self) -> Stdio:
        """Open :attr:`stdio` as containerd asked (the caller owns the result)."""
        return await open_stdio(
            self.stdio,
            reaper=self.host.reaper,
            container_id=self.exec_id,
            namespace=self.host.namespace,
            nursery=self.host.nursery,
        )


class Instance(Protocol):
    """One process. Optional operations (:data:`OPTIONAL`) are looked up by name."""

    async def start(self) -> int:
        """Run it; its pid (the shim's own pid for a workload without a process)."""

    async def kill(self, signal: int, all: bool) -> None:
        """Deliver ``signal`` (``all``: to every process of the container)."""

    async def wait(self) -> Exit:
        """Until it has exited; called once by the kit."""

    async def delete(self) -> None:
        """Release everything it holds; it has exited, or was never started."""


@runtime_checkable
class HasCreatedPid(Protocol):
    """An instance whose process exists from Create on (``runc create`` made it): Create's
    reply, its event and State carry this pid before Start."""

    @property
    def created_pid(self) -> int: ...


@runtime_checkable
class Backend(Protocol):
    """Makes containers: the init process of each."""

    async def create(self, request: CreateRequest) -> Instance: ...


@runtime_checkable
class ReadsOwnSpec(Protocol):
    """A backend whose runtime reads ``config.json`` itself (runc): the kit does not refuse a
    spec it cannot read (:attr:`CreateRequest.spec` is then empty); the runtime reports it."""

    reads_own_spec: bool


# The optional operations, one protocol each: the kit serves an RPC when the instance has the
# method, and mypy checks its signature where an author declares the protocol.


@runtime_checkable
class SupportsExec(Protocol):
    async def exec(self, request: ExecRequest) -> Instance: ...


@runtime_checkable
class SupportsPause(Protocol):
    async def pause(self) -> None: ...


@runtime_checkable
class SupportsResume(Protocol):
    async def resume(self) -> None: ...


@runtime_checkable
class SupportsPids(Protocol):
    async def pids(self) -> Sequence[ProcessInfo]: ...


@runtime_checkable
class SupportsStats(Protocol):
    async def stats(self) -> any_pb2.Any | None: ...


@runtime_checkable
class SupportsUpdate(Protocol):
    async def update(self, resources: any_pb2.Any, annotations: Mapping[str, str]) -> None: ...


@runtime_checkable
class SupportsResize(Protocol):
    async def resize(self, width: int, height: int) -> None: ...


@runtime_checkable
class SupportsCloseStdin(Protocol):
    async def close_stdin(self) -> None: ...


@runtime_checkable
class SupportsCheckpoint(Protocol):
    async def checkpoint(self, path: str, options: any_pb2.Any | None) -> None: ...


OPTIONAL: Final[Mapping[str, type]] = {
    "Exec": SupportsExec,  # on the init
    "Pause": SupportsPause,  # on the init
    "Resume": SupportsResume,  # on the init
    "Pids": SupportsPids,  # on the init
    "Stats": SupportsStats,  # on the init
    "Update": SupportsUpdate,  # on the init
    "ResizePty": SupportsResize,
    "CloseIO": SupportsCloseStdin,
    "Checkpoint": SupportsCheckpoint,  # on the init
}
"""RPC -> the protocol of the optional instance method that serves it."""
