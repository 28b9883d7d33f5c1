"""The task kit: the containerd Task service written once, over engines or instances.

Two levels (``docs/task-kit.md``):

- an :class:`Engine`: a ``name`` and ``async run(ctx: RunContext) -> int``; a shim is
  ``trioshim.task.main("io.containerd.example.v2", MyEngine())``;
- a :class:`Backend` of :class:`Instance` objects (one per process: start, kill, wait,
  delete, and optional pause, resume, exec, pids, stats, update, resize, close_stdin,
  checkpoint).

The kit owns the state machines, the events and their order, Wait, the error codes, id
checks, grouping, Connect and Shutdown. Dependencies point one way: task -> shim -> ttrpc.
"""

from __future__ import annotations

from trioshim.task.engine import (
    Engine,
    EngineBackend,
    EngineStats,
    RunContext,
    Signals,
    StartFailed,
)
from trioshim.task.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TaskError,
    UnimplementedError,
)
from trioshim.task.instance import (
    Backend,
    CreateRequest,
    ExecRequest,
    Exit,
    Host,
    Instance,
    ProcessInfo,
)
from trioshim.task.main import app, main, registration
from trioshim.task.stdio import Stdio, StdioSpec, open_stdio

__all__ = [
    "AlreadyExistsError",
    "Backend",
    "CreateRequest",
    "Engine",
    "EngineBackend",
    "EngineStats",
    "ExecRequest",
    "Exit",
    "FailedPreconditionError",
    "Host",
    "Instance",
    "InvalidArgumentError",
    "NotFoundError",
    "ProcessInfo",
    "RunContext",
    "Signals",
    "StartFailed",
    "Stdio",
    "StdioSpec",
    "TaskError",
    "UnimplementedError",
    "app",
    "main",
    "open_stdio",
    "registration",
]
