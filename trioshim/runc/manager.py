"""How ``containerd-shim-trioshim-v2`` describes itself to the shim framework.

- grouping key (the first thing the start action computes: containers with the same key share
  one shim daemon): annotation ``io.containerd.trioshim.v2.group``, then
  ``io.kubernetes.cri.sandbox-id``, else the container id;
- ``shim_cgroup`` from the runtime options on the start helper's stdin (containerd.runc.v1.Options
  or the legacy containerd.linux.runc.CreateOptions, see trioshim.runc.options): the new daemon
  is moved into that cgroup;
- the ``delete`` action (containerd runs it when the daemon is gone, to clean up after it):
  ``runc delete --force`` with the bundle's runtime and
  root, the rootfs unmounted, the pid from ``init.pid``; every file may be missing (a second run
  must still succeed);
- ``-info``: ``RuntimeInfo{name: io.containerd.trioshim.v2}``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final

from trioshim.runc import runc_cli
from trioshim.runc.options import read_options, read_runtime, runc_options
from trioshim.runc.runc_cli import Runc
from trioshim.runc.runc_errors import RuncError
from trioshim.shim.cgroups import is_unified
from trioshim.shim.flags import Flags
from trioshim.shim.manager import Manager, StartContext, StopContext, StopStatus
from trioshim.shim.mounts import has_mount, unmount_all

RUNTIME_NAME: Final = "io.containerd.trioshim.v2"
SHARED_RUNTIME_NAME: Final = "io.containerd.trioshim-shared.v2"
GROUP_ANNOTATION: Final = "io.containerd.trioshim.v2.group"
SANDBOX_ANNOTATION: Final = "io.kubernetes.cri.sandbox-id"
CGROUP_ROOT: Final = "/sys/fs/cgroup"


def join_shim_cgroup(pid: int, shim_cgroup: str, root: str = CGROUP_ROOT) -> None:
    """Move ``pid`` into ``shim_cgroup``: under the unified root on cgroup v2, into that
    static path of every hierarchy that has it on v1."""
    relative = shim_cgroup.lstrip("/")
    if is_unified(root):
        with open(os.path.join(root, relative, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        return
    joined = 0
    for hierarchy in sorted(os.listdir(root)):
        procs = os.path.join(root, hierarchy, relative, "cgroup.procs")
        if os.path.islink(os.path.join(root, hierarchy)) or not os.path.exists(procs):
            continue
        with open(procs, "w") as f:
            f.write(str(pid))
        joined += 1
    if not joined:
        raise FileNotFoundError(f"cgroup {shim_cgroup} does not exist in any hierarchy")


class RuncManager(Manager):
    """The lifecycle hooks of the runc shim."""

    name = RUNTIME_NAME
    group_annotations = (GROUP_ANNOTATION, SANDBOX_ANNOTATION)
    max_task_api = 3  # the task service answers as containerd.task.v2.Task and .v3.Task

    def after_spawn(self, ctx: StartContext, pid: int) -> None:
        opts = runc_options(ctx.options)
        if opts is not None and opts.shim_cgroup:
            try:
                join_shim_cgroup(pid, opts.shim_cgroup)
            except OSError as exc:
                raise RuntimeError(f"failed to join cgroup {opts.shim_cgroup}: {exc}") from exc

    def stop_at_once(self, flags: Flags, bundle: str, log: logging.Logger) -> StopStatus | None:
        """Every normal exit: the daemon deleted the container in runc (nothing left under
        runc's root for it) and unmounted its rootfs before it went, so the report is all
        that is left. Anything else (options unreadable, runc state or a mount left): None,
        and :meth:`stop` cleans up."""
        try:
            opts = read_options(bundle)
        except Exception:
            return None  # stop() reads it again and says why it cannot
        root = opts.root if opts is not None else ""
        if os.path.lexists(os.path.join(Runc.root_for(root, flags.namespace), flags.id)):
            return None
        if has_mount(os.path.join(bundle, "rootfs")):
            return None
        return _stopped(bundle, flags.id, log)

    async def stop(self, ctx: StopContext) -> StopStatus:
        """Clean up after a daemon that is gone: force-delete in runc, unmount, report."""
        bundle = ctx.bundle
        container_id = ctx.flags.id
        root = ""
        try:
            opts = read_options(bundle)
            if opts is not None:
                root = opts.root
        except Exception as exc:
            ctx.log.warning("failed to read options.json of %s: %s", container_id, exc)
        try:
            binary = read_runtime(bundle)
        except OSError as exc:
            ctx.log.warning("failed to read runtime of %s: %s", container_id, exc)
            binary = ""
        runc = Runc.for_container(
            ctx.reaper, bundle=bundle, namespace=ctx.flags.namespace, binary=binary, root=root
        )
        # `runc delete --force` only removes <root>/<id>: when the daemon deleted the container
        # already there is nothing for it to do, and skipping runc's start-up takes ~15 ms off
        # a teardown containerd waits for (stop_at_once answers the usual case before this).
        if os.path.lexists(os.path.join(runc.root, container_id)):  # noqa: ASYNC240 (tmpfs lstat)
            try:
                await runc.delete(container_id, force=True)
            except RuncError as exc:
                ctx.log.warning("failed to remove runc container %s: %s", container_id, exc)
        try:
            await unmount_all(os.path.join(bundle, "rootfs"))
        except OSError as exc:
            ctx.log.warning("failed to cleanup rootfs mount of %s: %s", container_id, exc)
        return _stopped(bundle, container_id, ctx.log)


def _stopped(bundle: str, container_id: str, log: logging.Logger) -> StopStatus:
    """The delete action's report: the init's pid (0 when unknown), killed, now."""
    try:
        pid = runc_cli.read_pid_file(os.path.join(bundle, runc_cli.INIT_PID_FILE))
    except (OSError, ValueError) as exc:
        log.warning("failed to read init pid file of %s: %s", container_id, exc)
        pid = 0
    return StopStatus(pid=max(pid, 0), exit_status=128 + 9, exited_at_ns=time.time_ns())


class SharedRuncManager(RuncManager):
    """``io.containerd.trioshim-shared.v2``: the same shim, every daemon served by one process
    per containerd (:mod:`trioshim.shim.shared`)."""

    name = SHARED_RUNTIME_NAME
    shared = True
