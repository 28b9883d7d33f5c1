"""A container: its bundle files, rootfs mounts, runtime options, init and exec processes.

The runtime options and the bundle files written from them are trioshim.runc.options'.

Rootfs: the Create request's mounts are stacked on ``<bundle>/rootfs`` by
:mod:`trioshim.shim.mounts` and unmounted on Delete and when Create fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Final

import trio

from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.runc.exec_process import ExecProcess
from trioshim.runc.init_process import InitProcess
from trioshim.runc.oom import OOMWatcher
from trioshim.runc.options import decode_options, decode_restore_options, write_bundle_files
from trioshim.runc.process import IOOpener, Process
from trioshim.runc.runc_cli import Runc
from trioshim.runc.runc_errors import RuncError
from trioshim.runc.states import unknown
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.shim.bundlefile import read_bundle_file
from trioshim.shim.cgroups import Cgroup, CgroupV2, load_cgroup
from trioshim.shim.failpoint import Failpoints
from trioshim.shim.mounts import Mount, RootfsMountError, mount_rootfs, unmount_all
from trioshim.shim.reaper import Reaper
from trioshim.task.errors import NotFoundError
from trioshim.task.instance import CreateRequest

log = logging.getLogger(__name__)

PROCESS_DETAILS_TYPE: Final = "containerd.runc.v1.ProcessDetails"


def enable_v2_controllers(path: str, root: str = "/sys/fs/cgroup") -> None:
    """Enable every controller of the unified root in ``cgroup.subtree_control`` of each
    ancestor of ``path`` (the root included, ``path`` itself not), so that the container's
    cgroup gets them all (containerd's ``ToggleControllers``). Raises the last failure."""
    with open(os.path.join(root, "cgroup.controllers"), encoding="ascii") as f:
        controllers = f.read().split()
    if not controllers:
        return
    line = " ".join(f"+{c}" for c in controllers)
    relative = os.path.relpath(path, root)
    if relative.startswith(".."):
        raise ValueError(f"{path} is not below {root}")
    parts = [] if relative == "." else relative.split(os.sep)
    error: OSError | None = None
    for depth in range(len(parts)):
        target = os.path.join(root, *parts[:depth], "cgroup.subtree_control")
        try:
            with open(target, "w", encoding="ascii") as f:
                f.write(line)
            error = None
        except OSError as exc:
            error = exc
    if error is not None:
        raise error


def should_kill_all(bundle: str) -> bool:
    """Whether the init's exit must be followed by ``runc kill --all <id> 9``: unless the
    container has a private PID namespace (the kernel then kills the rest itself)."""
    try:
        spec = json.loads(read_bundle_file(os.path.join(bundle, "config.json")))
        namespaces = spec["linux"]["namespaces"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    for ns in namespaces or ():
        if isinstance(ns, dict) and ns.get("type") == "pid":
            return bool(ns.get("path"))
    return True


# --- the container ------------------------------------------------------------------------------


class Container:
    """One container of the shim: init, execs (by id), cgroup, rootfs."""

    def __init__(
        self,
        container_id: str,
        bundle: str,
        init: InitProcess,
        *,
        namespace: str,
        options: oci_pb2.Options,
        rootfs: str = "",
    ) -> None:
        self.id = container_id
        self.bundle = bundle
        self.init = init
        self.namespace = namespace
        self.options = options
        self.rootfs = rootfs
        self.execs: dict[str, ExecProcess] = {}
        self.cgroup: Cgroup | None = None
        self.failpoints: Failpoints | None = None  # set by the annotations of its spec

    def __repr__(self) -> str:
        return f"<Container {self.id} {self.init!r}>"

    @classmethod
    async def create(
        cls,
        request: CreateRequest,
        *,
        namespace: str,
        reaper: Reaper,
        open_io: IOOpener,
        options: oci_pb2.Options | None = None,
    ) -> Container:
        """Write the bundle files, mount the rootfs, ``runc create``; undo the mounts on error.

        ``options``: the request's decoded runtime options (decoded here when not given).
        """
        opts = options if options is not None else decode_options(request.options)
        bundle = request.bundle
        mounts = [
            Mount(m.type, m.source, m.target, tuple(m.options)) for m in request.rootfs_mounts
        ]
        rootfs = ""
        if mounts:
            rootfs = os.path.join(bundle, "rootfs")
            with contextlib.suppress(FileExistsError):
                os.mkdir(rootfs, 0o711)
        write_bundle_files(bundle, opts)
        runc = Runc.for_container(
            reaper,
            bundle=bundle,
            namespace=namespace,
            binary=opts.binary_name,
            root=opts.root,
            criu=opts.criu_path,
            systemd_cgroup=opts.systemd_cgroup,
        )
        stdio = request.stdio
        init = InitProcess(
            request.id,
            bundle,
            runc,
            StdioConfig(stdio.stdin, stdio.stdout, stdio.stderr, stdio.terminal),
            no_pivot=opts.no_pivot_root,
            no_new_keyring=opts.no_new_keyring,
            criu_work_path=opts.criu_work_path,
            restore=decode_restore_options(request.options),
        )
        container = cls(request.id, bundle, init, namespace=namespace, options=opts, rootfs=rootfs)
        try:
            await mount_rootfs(mounts, rootfs)
        except RootfsMountError as exc:
            raise unknown(str(exc)) from exc
        try:
            await init.create(
                open_io, checkpoint=request.checkpoint, parent=request.parent_checkpoint
            )
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await unmount_all(rootfs)
            raise
        if init.pid > 0:
            container.load_cgroup(init.pid)
        return container

    def load_cgroup(self, pid: int) -> None:
        try:
            self.cgroup = load_cgroup(pid)
        except Exception:  # the reference only logs this; Stats then answers NotFound
            self.cgroup = None

    # -- processes -----------------------------------------------------------------------------

    def watch_oom(self, oom: OOMWatcher | None) -> None:
        """Have ``oom`` report this container's OOM kills (once its cgroup is known; a
        failure is logged: the container runs without OOM events, as with the reference)."""
        if self.cgroup is None or oom is None or self.id in oom.watching:
            return
        if isinstance(self.cgroup, CgroupV2):
            try:
                enable_v2_controllers(self.cgroup.path)
            except (OSError, ValueError) as exc:
                log.warning("failed to enable the cgroup controllers of %s: %s", self.id, exc)
        try:
            oom.add(self.id, self.cgroup)
        except Exception as exc:
            log.warning("add cgroup of %s to the OOM monitor: %s", self.id, exc)

    def process(self, exec_id: str) -> Process:
        """The init for ``""``, else the exec, else NotFound ``process does not exist <id>``."""
        if not exec_id:
            return self.init
        process = self.execs.get(exec_id)
        if process is None:
            raise NotFoundError.wrapping(f"process does not exist {exec_id}")
        return process

    async def processes(self) -> list[task_types.ProcessInfo]:
        """Pids: every process ``runc ps`` lists, an exec's tagged with its id (as
        ``containerd.runc.v1.ProcessDetails``)."""
        try:
            pids = await self.init.runc.ps(self.id)
        except RuncError as exc:
            raise unknown(str(exc)) from exc
        processes = []
        for pid in pids:
            info = task_types.ProcessInfo(pid=pid)
            exec_process = self.find_exec_by_pid(pid)
            if exec_process is not None:
                details = oci_pb2.ProcessDetails(exec_id=exec_process.id)
                info.info.type_url = PROCESS_DETAILS_TYPE
                info.info.value = details.SerializeToString()
            processes.append(info)
        return processes

    def add_exec(self, process: ExecProcess) -> None:
        self.execs[process.id] = process

    def remove_exec(self, exec_id: str) -> None:
        self.execs.pop(exec_id, None)

    def find_exec_by_pid(self, pid: int) -> ExecProcess | None:
        for process in self.execs.values():
            if process.pid == pid:
                return process
        return None

    def should_kill_all(self) -> bool:
        return should_kill_all(self.bundle)

    async def unmount_rootfs(self) -> None:
        await unmount_all(self.rootfs)
