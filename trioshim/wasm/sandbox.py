"""A Kubernetes pod's sandbox ("pause") container on the wasm shim.

CRI starts every pod with a sandbox container from the node's pause image, on the pod's runtime
handler, before any container of the pod. Its job is to exist: it holds the pod's namespaces
and cgroup until StopPodSandbox kills it. Its process is a Linux binary, not a WASI module.

runwasi runs any container whose entrypoint is not wasm as an ordinary Linux container (through
libcontainer). We do not run the image's binary at all: a process of the image running on the
host with the shim's credentials and no isolation would be a hole, and the sandbox needs no
code of its own. Instead the shim starts a **holder**, the host's ``sleep infinity``, which:

- is in the namespaces the spec asks for, among those a wasm pod can use: ``network``, ``ipc``
  and ``uts`` are joined (``nsenter``) when the spec gives a path (CRI's pre-made network
  namespace) and made new (``unshare``) when it gives none; ``pid`` and ``mount`` are not made
  (the holder needs no mounts, and a new pid namespace would need a fork, so the pid CRI learns
  would not be the process in it). A host-network pod has no network or uts entry: the holder
  stays in the host's;
- lives in the container's cgroup (``linux.cgroupsPath``, inside the pod's), made and removed
  like a module's;
- reports its real pid (CRI records it as the sandbox's and reads ``/proc/<pid>/ns/*`` from it)
  and ends by the signal Kill sends: SIGTERM 143, SIGKILL 137.

A container is a sandbox when CRI's annotation ``io.kubernetes.cri.container-type`` says
``sandbox`` (containerd 1.6, 1.7 and 2.x all set it); any other container must be a module.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections.abc import Callable, Mapping
from typing import Any, Final

import trio

from trioshim.shim.reaper import DEVNULL, PIPE, Reaper
from trioshim.wasm.cgroup import DEFAULT_ROOT, CgroupLimits, ContainerCgroup, cgroup_path
from trioshim.wasm.errors import WasmLaunchError
from trioshim.wasm.runner import SignalSource, forward_signals

__all__ = ["CONTAINER_TYPE_ANNOTATION", "holder_argv", "is_pod_sandbox", "run_sandbox"]

log = logging.getLogger(__name__)

CONTAINER_TYPE_ANNOTATION: Final = "io.kubernetes.cri.container-type"
_SANDBOX: Final = "sandbox"
# The spec's namespace types the holder honours, and the nsenter/unshare option of each.
_NAMESPACE_OPTIONS: Final = {"network": "--net", "ipc": "--ipc", "uts": "--uts"}
# The holder's last program. The chain (nsenter, unshare, sh) holds fd 3, the write end of the
# shim's readiness pipe, across its execs; sh closes it as it becomes ``sleep``, so EOF on the
# pipe says the holder is in its final namespaces and /proc/<pid>/ns/* can be read.
_READY_FD: Final = 3
_HOLDER_SCRIPT: Final = "exec {sleep} infinity 3>&-"


def is_pod_sandbox(spec: Mapping[str, Any]) -> bool:
    """Whether the spec is a pod's sandbox container, as CRI marks it."""
    annotations = spec.get("annotations") or {}
    return bool(annotations.get(CONTAINER_TYPE_ANNOTATION) == _SANDBOX)


def holder_argv(
    spec: Mapping[str, Any], which: Callable[[str], str | None] = shutil.which
) -> list[str]:
    """The holder's command line for ``spec``: ``[nsenter --net=P ... --] [unshare --ipc ...
    --] sh -c 'exec sleep infinity 3>&-'``, each program by its absolute path (``which``
    finds them)."""
    join: list[str] = []
    new: list[str] = []
    for entry in (spec.get("linux") or {}).get("namespaces") or ():
        option = _NAMESPACE_OPTIONS.get(entry.get("type"))
        if option is None:
            continue
        path = entry.get("path")
        if path:
            join.append(f"{option}={path}")
        else:
            new.append(option)
    argv: list[str] = []
    if join:
        argv += [_program("nsenter", which), *join, "--"]
    if new:
        argv += [_program("unshare", which), *new, "--"]
    script = _HOLDER_SCRIPT.format(sleep=shlex.quote(_program("sleep", which)))
    return [*argv, _program("sh", which), "-c", script]


def _is_sleeping(pid: int) -> bool:
    """Whether ``pid`` runs ``sleep`` (the readiness EOF also comes when nsenter, unshare or sh
    fail; a dead, unreaped process has no ``exe``)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "sleep"
    except OSError:
        return False


def _program(name: str, which: Callable[[str], str | None]) -> str:
    path = which(name)
    if path is None:
        raise WasmLaunchError(f"pod sandbox: {name} is not installed on this host")
    return path


async def run_sandbox(
    reaper: Reaper,
    *,
    spec: Mapping[str, Any],
    signals: SignalSource,
    on_start: Callable[[int], None],
    cgroup_root: str = DEFAULT_ROOT,
) -> int:
    """Run the pod sandbox's holder until a signal ends it; return its exit status.

    ``on_start(pid)`` is called once the holder is in its cgroup and its namespaces (or has
    failed to get there: its exit status then says so). Cancelling the call kills and
    reaps it; the cgroup, when made here, is removed once the holder is reaped.
    """
    argv = holder_argv(spec)
    path = cgroup_path(spec)
    limits = CgroupLimits.from_spec(spec)
    cgroup = None if path is None else ContainerCgroup.create(path, limits, root=cgroup_root)
    try:
        ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        try:
            child = reaper.spawn(
                argv,
                env={},
                stdin=DEVNULL,
                stdout=DEVNULL,
                stderr=PIPE,  # nsenter's or unshare's complaint, should they fail
                extra_fds={_READY_FD: ready_write},
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        try:
            if cgroup is not None:
                cgroup.add(child.pid)
            async with trio.lowlevel.FdStream(ready_read) as ready:
                while await ready.receive_some(64):
                    pass  # nothing is written: EOF is the news
            assert child.stderr is not None
            async with child.stderr as errors:
                if not _is_sleeping(child.pid):  # EOF because the chain died on the way
                    status = await child.wait()
                    said = (await errors.receive_some(4096)).decode(errors="replace").strip()
                    raise WasmLaunchError(
                        f"pod sandbox: the holder {argv[0]} failed before it was in place "
                        f"(exit status {status}): {said or 'no message'}"
                    )
            on_start(child.pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward_signals, child, signals)
                status = await child.wait()
                nursery.cancel_scope.cancel()
            return status
        finally:
            if child.returncode is None:
                child.kill()
                with trio.CancelScope(shield=True):
                    await child.wait()
    finally:
        if cgroup is not None:
            cgroup.remove()
