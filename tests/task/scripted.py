"""A scripted instance backend: each process exits when the test says so."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import trio

import trioshim.task as task

_pids = itertools.count(1000)


@dataclass(eq=False)
class Scripted:
    """One process; :meth:`finish` makes it exit."""

    name: str
    calls: list[str]
    pid: int = field(default_factory=lambda: next(_pids))
    _exit: task.Exit | None = None
    _done: trio.Event = field(default_factory=trio.Event)

    def finish(self, exit: task.Exit) -> None:
        if self._exit is None:
            self._exit = exit
            self._done.set()

    async def start(self) -> int:
        self.calls.append(f"start {self.name}")
        return self.pid

    async def kill(self, signal: int, all: bool) -> None:
        self.calls.append(f"kill {self.name} {signal}")
        self.finish(task.Exit(128 + signal))

    async def wait(self) -> task.Exit:
        await self._done.wait()
        assert self._exit is not None
        return self._exit

    async def delete(self) -> None:
        self.calls.append(f"delete {self.name}")


@dataclass(eq=False)
class ScriptedInit(Scripted):
    execs: dict[str, Scripted] = field(default_factory=dict)

    async def exec(self, request: task.ExecRequest) -> task.Instance:
        process = Scripted(request.exec_id, self.calls)
        self.execs[request.exec_id] = process
        return process

    pause_gate: trio.Event | None = None
    """Set by a test: pause waits for it (a Pause in progress)."""

    async def pause(self) -> None:
        self.calls.append(f"pause {self.name}")
        if self.pause_gate is not None:
            await self.pause_gate.wait()

    async def resume(self) -> None:
        self.calls.append(f"resume {self.name}")


@dataclass(eq=False)
class ScriptedBackend:
    calls: list[str] = field(default_factory=list)
    inits: dict[str, ScriptedInit] = field(default_factory=dict)

    async def create(self, request: task.CreateRequest) -> task.Instance:
        self.calls.append(f"create {request.id}")
        init = ScriptedInit(request.id, self.calls)
        self.inits[request.id] = init
        return init
