"""The wasm Engine: one container's run, from its OCI spec to its exit status.

:func:`run_module` is the whole job with plain arguments; :class:`WasmEngine` is the Engine of
the task kit (a ``name`` and ``async run(ctx) -> int``). It reads the run's context through
:class:`EngineContext`, the attributes the kit's per-process context provides (duck-typed:
this package does not import the kit).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio
from google.protobuf import any_pb2

from trioshim.shim.cgroups import cgroup_at
from trioshim.shim.reaper import Reaper
from trioshim.ttrpc.errors import NotFound
from trioshim.wasm.cache import prepare_cache_dir
from trioshim.wasm.cgroup import DEFAULT_ROOT, CgroupLimits, ContainerCgroup, cgroup_path
from trioshim.wasm.errors import WasmLoadError
from trioshim.wasm.launch import resolve_launch
from trioshim.wasm.runner import (
    LOAD_FAILED_STATUS,
    SignalSource,
    WasmProcess,
    forward_signals,
    open_wasm_process,
)
from trioshim.wasm.sandbox import is_pod_sandbox, run_sandbox

__all__ = [
    "DEFAULT_CACHE_DIR",
    "ENGINE_NAME",
    "EngineContext",
    "StatsContext",
    "StdioDescriptors",
    "WasmEngine",
    "run_module",
]

log = logging.getLogger(__name__)

ENGINE_NAME: Final = "wasm"
DEFAULT_CACHE_DIR: Final = "/var/cache/trioshim/wasm"


class StdioDescriptors(Protocol):
    """The container's opened stdio (the kit owns and closes them; the child gets copies)."""

    @property
    def stdin(self) -> int | None: ...
    @property
    def stdout(self) -> int | None: ...
    @property
    def stderr(self) -> int | None: ...


class StatsContext(Protocol):
    """What :meth:`WasmEngine.stats` reads from the kit's run context of the init."""

    @property
    def id(self) -> str: ...
    @property
    def spec(self) -> Mapping[str, Any]: ...


class EngineContext(Protocol):
    """What :meth:`WasmEngine.run` reads from the kit's per-process run context."""

    @property
    def spec(self) -> Mapping[str, Any]: ...  # the OCI runtime spec (config.json), parsed
    @property
    def rootfs(self) -> str: ...  # host path of the container's root filesystem
    @property
    def args(self) -> Sequence[str]: ...  # process.args; [0] is the module
    @property
    def env(self) -> Mapping[str, str] | Sequence[str]: ...  # process.env
    @property
    def cwd(self) -> str: ...  # process.cwd, a path inside the rootfs
    @property
    def stdio(self) -> StdioDescriptors: ...
    @property
    def reaper(self) -> Reaper: ...  # the shim's one reaper
    @property
    def signals(self) -> SignalSource: ...  # Kill requests, signal numbers

    def started(self, pid: int | None = None) -> None: ...  # the workload runs: Start replies
    def report_oom(self) -> None: ...  # an OOM while the run goes on: TaskOOM now
    def oom(self) -> None: ...  # the run met the OOM killer: TaskOOM before its TaskExit


async def run_module(
    reaper: Reaper,
    *,
    spec: Mapping[str, Any],
    rootfs: str,
    args: Sequence[str],
    env: Mapping[str, str] | Sequence[str],
    cwd: str,
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
    signals: SignalSource,
    on_start: Callable[[WasmProcess], None] | None = None,
    on_running: Callable[[WasmProcess], None] | None = None,
    on_oom: Callable[[], object] | None = None,
    cgroup_root: str = DEFAULT_ROOT,
    cache_dir: str | None = None,
    python: str = sys.executable,
) -> int:
    """Run the module of one container to its end and return the exit status.

    Bad input (no module, not wasm, a cwd outside the rootfs, a cgroup that cannot be made)
    raises :class:`~trioshim.wasm.errors.WasmError` before anything runs. ``on_start`` is called
    with the :class:`WasmProcess` as soon as the child exists (its pid is real: State, Pids and
    Stats can use it), ``on_running`` once the module is instantiated and its ``_start`` called
    (never, if it cannot be loaded: the status is then 126). ``on_oom`` is called as each OOM
    notification of the cgroup comes while the child lives (see :meth:`WasmProcess.watch_ooms`;
    those it did not see are :attr:`WasmProcess.oom_at_exit`). Each signal number received
    from ``signals`` is delivered to the child. The container's cgroup, when the spec names
    one, is made with its limits and removed once the child is reaped. Cancelling the call
    kills and reaps the child first. ``cache_dir`` (None: compile on every start) keeps compiled
    modules, see :mod:`trioshim.wasm.cache`.
    """
    root = spec.get("root") or {}
    request = resolve_launch(
        rootfs, args, env, cwd, readonly=bool(root.get("readonly")), mounts=spec.get("mounts") or ()
    )
    if cache_dir is not None:
        request = dataclasses.replace(request, cache=prepare_cache_dir(cache_dir))
    path = cgroup_path(spec)
    limits = CgroupLimits.from_spec(spec)
    cgroup = None if path is None else ContainerCgroup.create(path, limits, root=cgroup_root)
    try:
        async with open_wasm_process(
            reaper,
            request,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cgroup=cgroup,
            python=python,
        ) as process:
            if on_start is not None:
                on_start(process)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(process.watch)
                nursery.start_soon(forward_signals, process.child, signals)
                if on_running is not None:
                    nursery.start_soon(_when_running, process, on_running)
                if on_oom is not None:
                    nursery.start_soon(process.watch_ooms, on_oom)
                status = await process.wait()
                nursery.cancel_scope.cancel()
            if process.oom_killed:
                log.warning("wasm module %s (pid %d) was OOM-killed", request.module, process.pid)
            elif process.oom:
                log.warning("wasm module %s (pid %d) had an OOM", request.module, process.pid)
            return status
    finally:
        if cgroup is not None:
            cgroup.remove()


async def _when_running(process: WasmProcess, callback: Callable[[WasmProcess], None]) -> None:
    await process.running.wait()
    callback(process)


@dataclass
class WasmEngine:
    """The Engine the kit drives for ``io.containerd.triowasm.v2``.

    Start replies once the module runs (``ctx.started(pid)`` when ``_start`` is called), so a
    module that cannot be loaded fails Start with the reason (:class:`WasmLoadError`) instead
    of starting and exiting 126; a bad spec fails it too (:class:`WasmError`). A pod's sandbox
    container (CRI's pause) runs as a holder process instead, see :mod:`trioshim.wasm.sandbox`.
    Stats reads the container's cgroup. Each OOM notification of the cgroup is published as it
    comes (``ctx.report_oom()``, as runc's shim does), while the module runs; one that came as it
    died and was not published yet, or a kill with no notification to tell it, goes with the
    exit (``ctx.oom()``): TaskOOM just before TaskExit, either way once.
    """

    cgroup_root: str = DEFAULT_ROOT
    cache_dir: str | None = DEFAULT_CACHE_DIR
    python: str = sys.executable
    name: str = ENGINE_NAME

    async def stats(self, ctx: StatsContext) -> any_pb2.Any:
        """The metrics of the container's cgroup (``linux.cgroupsPath``), as runc's shim
        reports them (``io.containerd.cgroups.v1.Metrics`` / ``v2.Metrics``). NotFound when
        there is none: no cgroupsPath, not started yet, or removed after the exit."""
        path = cgroup_path(ctx.spec)
        cgroup = None if path is None else cgroup_at(path, self.cgroup_root)
        if cgroup is None:
            raise NotFound(f"cgroup of {ctx.id} does not exist")
        return cgroup.metrics()

    async def run(self, ctx: EngineContext) -> int:
        if is_pod_sandbox(ctx.spec):  # CRI's pause container: a holder, not a module
            return await run_sandbox(
                ctx.reaper,
                spec=ctx.spec,
                signals=ctx.signals,
                on_start=ctx.started,
                cgroup_root=self.cgroup_root,
            )
        spawned: list[WasmProcess] = []
        status = await run_module(
            ctx.reaper,
            spec=ctx.spec,
            rootfs=ctx.rootfs,
            args=ctx.args,
            env=ctx.env,
            cwd=ctx.cwd,
            stdin=ctx.stdio.stdin,
            stdout=ctx.stdio.stdout,
            stderr=ctx.stdio.stderr,
            signals=ctx.signals,
            on_start=spawned.append,
            on_running=lambda process: ctx.started(process.pid),
            on_oom=ctx.report_oom,
            cgroup_root=self.cgroup_root,
            cache_dir=self.cache_dir,
            python=self.python,
        )
        process = spawned[0]
        if process.oom_at_exit:  # not published live: the exit carries it (TaskOOM, TaskExit)
            ctx.oom()
        if not process.running.is_set():
            if status == LOAD_FAILED_STATUS and process.failure is not None:
                raise WasmLoadError(process.failure)
            ctx.started(process.pid)  # ended before it ran (killed early): report its pid
        return status
