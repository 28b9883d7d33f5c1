"""runc's kit instances without runc: a container that never ran ``runc create``, exits
handed to the reaper as if it had reaped them, an OOM watcher that records its polls."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from trioshim.runc.backend import RuncExec, RuncInit
from trioshim.runc.exec_process import ExecProcess
from trioshim.runc.init_process import InitProcess
from trioshim.runc.runc_cli import Runc
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.shim.reaper import Exit, Reaper
from trioshim.task.instance import Host

PID = 4321


@dataclass(eq=False)
class FakeContainer:
    """The container as the instances see it."""

    init: InitProcess
    id: str = "c1"
    kill_all: bool = False
    order: list[str] = field(default_factory=list)

    def should_kill_all(self) -> bool:
        return self.kill_all


@dataclass(eq=False)
class FakeOOM:
    order: list[str]

    def poll(self, container_id: str) -> None:
        self.order.append(f"oom {container_id}")

    def discard(self, container_id: str) -> None:
        pass


def reaped(reaper: Reaper, pid: int, status: int, at_ns: int = 1) -> None:
    """``pid`` exited with ``status``, as the reaper would report a container process."""
    reaper._dispatch(Exit(pid, status, at_ns))


def running(
    kind: str, reaper: Reaper, nursery: trio.Nursery, stdio: StdioConfig | None = None
) -> tuple[RuncInit | RuncExec, FakeContainer]:
    """A running init (``kind="init"``) or exec of it, with pid :data:`PID`."""
    stdio = stdio or StdioConfig()
    runc = Runc.for_container(reaper, bundle="/b/c1", namespace="ns")
    init = InitProcess("c1", "/b/c1", runc, stdio)
    container = FakeContainer(init)
    host = Host("ns", reaper, nursery)
    if kind == "init":
        init.pid = PID
        oom = FakeOOM(container.order)
        return RuncInit(container, host, oom), container  # type: ignore[arg-type]
    process = ExecProcess("e1", init, {"args": ["sh"]}, stdio)
    process.pid = PID
    return RuncExec(container, process, host), container  # type: ignore[arg-type]
