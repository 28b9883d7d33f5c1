"""The wasm Engine: one container's run, from its OCI spec to its exit status.

:func:`run_module` is the whole job with plain arguments; :class:`WasmEngine` wraps it as an
Engine of the task kit (a ``name`` and ``async run(ctx) -> int``). The context it reads is
described by :class:`EngineContext`; the kit's own context type only needs those attributes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from trioshim.shim.reaper import Reaper
from trioshim.wasm.cache import prepare_cache_dir
from trioshim.wasm.cgroup import DEFAULT_ROOT, CgroupLimits, ContainerCgroup, cgroup_path
from trioshim.wasm.launch import resolve_launch
from trioshim.wasm.runner import WasmProcess, forward_signals, open_wasm_process

__all__ = ["DEFAULT_CACHE_DIR", "ENGINE_NAME", "EngineContext", "WasmEngine", "run_module"]

log = logging.getLogger(__name__)

ENGINE_NAME: Final = "wasm"
DEFAULT_CACHE_DIR: Final = "/var/cache/trioshim/wasm"


class EngineContext(Protocol):
    """What :meth:`WasmEngine.run` reads from the kit's per-container context."""

    @property
    def spec(self) -> Mapping[str, Any]: ...  # the OCI runtime spec (config.json), parsed
    @property
    def rootfs(self) -> str: ...  # host path of the container's root filesystem
    @property
    def args(self) -> Sequence[str]: ...  # process.args; [0] is the module
    @property
    def env(self) -> Sequence[str]: ...  # process.env, NAME=value
    @property
    def cwd(self) -> str: ...  # process.cwd, a path inside the rootfs
    @property
    def stdin(self) -> int | None: ...  # the container's opened stdio descriptors
    @property
    def stdout(self) -> int | None: ...
    @property
    def stderr(self) -> int | None: ...
    @property
    def signals(self) -> trio.abc.ReceiveChannel[int]: ...  # Kill requests, signal numbers


async def run_module(
    reaper: Reaper,
    *,
    spec: Mapping[str, Any],
    rootfs: str,
    args: Sequence[str],
    env: Sequence[str],
    cwd: str,
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
    signals: trio.abc.ReceiveChannel[int],
    on_start: Callable[[WasmProcess], None] | None = None,
    cgroup_root: str = DEFAULT_ROOT,
    cache_dir: str | None = None,
    python: str = sys.executable,
) -> int:
    """Run the module of one container to its end and return the exit status.

    Bad input (no module, not wasm, a cwd outside the rootfs, a cgroup that cannot be made)
    raises :class:`~trioshim.wasm.errors.WasmError` before anything runs. ``on_start`` is called
    with the :class:`WasmProcess` as soon as the child exists (its pid is real: State, Pids and
    Stats can use it). Each signal number received on ``signals`` is delivered to the child.
    The container's cgroup, when the spec names one, is made with its limits and removed once
    the child is reaped. Cancelling the call kills and reaps the child first. ``cache_dir``
    (None: compile on every start) keeps compiled modules, see :mod:`trioshim.wasm.cache`.
    """
    root = spec.get("root") or {}
    request = resolve_launch(
        rootfs, args, env, cwd, readonly=bool(root.get("readonly")), mounts=spec.get("mounts") or ()
    )
    if cache_dir is not None:
        request = dataclasses.replace(request, cache=prepare_cache_dir(cache_dir))
    path = cgroup_path(spec)
    cgroup = (
        ContainerCgroup.create(path, CgroupLimits.from_spec(spec), root=cgroup_root)
        if (path is not None)
        else None
    )
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
                nursery.start_soon(forward_signals, process, signals)
                status = await process.wait()
                nursery.cancel_scope.cancel()
            if process.oom_killed:
                log.warning("wasm module %s (pid %d) was OOM-killed", request.module, process.pid)
            return status
    finally:
        if cgroup is not None:
            cgroup.remove()


@dataclass
class WasmEngine:
    """The Engine the kit drives for ``io.containerd.triowasm.v2``."""

    reaper: Reaper
    cgroup_root: str = DEFAULT_ROOT
    cache_dir: str | None = DEFAULT_CACHE_DIR
    python: str = sys.executable
    name: str = ENGINE_NAME

    async def run(self, ctx: EngineContext) -> int:
        return await run_module(
            self.reaper,
            spec=ctx.spec,
            rootfs=ctx.rootfs,
            args=ctx.args,
            env=ctx.env,
            cwd=ctx.cwd,
            stdin=ctx.stdin,
            stdout=ctx.stdout,
            stderr=ctx.stderr,
            signals=ctx.signals,
            cgroup_root=self.cgroup_root,
            cache_dir=self.cache_dir,
            python=self.python,
        )
