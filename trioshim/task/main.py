"""A shim in one call: ``trioshim.task.main("io.containerd.example.v2", MyEngine())``.

:func:`registration` makes the Task service plugin (over the framework's reaper, event
publisher and shutdown service); :func:`app` pairs it with a :class:`~trioshim.shim.Manager`
that announces task API v3 (containerd 2.x) as well as v2; :func:`main` runs the shim's
actions (``start``, ``delete``, the daemon) as containerd invokes them.
"""

from __future__ import annotations

import logging
import os
from typing import Final, NoReturn

from trioshim.shim.flags import Flags
from trioshim.shim.main import main as shim_main
from trioshim.shim.manager import Manager, StopContext, StopStatus
from trioshim.shim.mounts import has_mount, unmount_all
from trioshim.shim.plugin import (
    EVENT_PLUGIN,
    INTERNAL_PLUGIN,
    REAPER_PLUGIN,
    TTRPC_PLUGIN,
    InitContext,
    Registration,
    Registry,
)
from trioshim.task.boundary import task_services
from trioshim.task.engine import Engine, EngineBackend
from trioshim.task.instance import Backend, Host
from trioshim.task.service import TaskService

__all__ = ["TaskManager", "TaskPlugin", "app", "main", "registration"]

PLUGIN_ID: Final = "task"


class TaskPlugin:
    """The plugin instance: the service, and its ttrpc services (v2 and v3)."""

    def __init__(self, service: TaskService, *, bundle_dir: str) -> None:
        self.service = service
        self._bundle_dir = bundle_dir

    def ttrpc_services(self) -> list[tuple[object, object]]:
        return list(task_services(self.service, bundle_dir=self._bundle_dir))


def _as_backend(backend: Backend | Engine) -> Backend:
    return backend if isinstance(backend, Backend) else EngineBackend(backend)


def registration(backend: Backend | Engine) -> Registration:
    """The Task service plugin serving ``backend`` (an engine, or an instance-level backend)."""
    resolved = _as_backend(backend)

    async def init(ctx: InitContext) -> TaskPlugin:
        host = Host(namespace=ctx.namespace, reaper=ctx.get(REAPER_PLUGIN), nursery=ctx.nursery)
        shutdown = ctx.get(INTERNAL_PLUGIN)
        service = TaskService(
            resolved,
            host=host,
            publish=ctx.get(EVENT_PLUGIN).publish,
            shutdown=shutdown.shutdown,
        )
        # containerd's bundle directory (<state>/<namespace>): every Create's is <it>/<id>.
        return TaskPlugin(service, bundle_dir=os.path.dirname(ctx.bundle))

    return Registration(
        TTRPC_PLUGIN, PLUGIN_ID, init, requires=(EVENT_PLUGIN, INTERNAL_PLUGIN, REAPER_PLUGIN)
    )


class TaskManager(Manager):
    """The kit's shim manager: its ``delete`` action unmounts a rootfs the daemon mounted
    (an engine's container, see :mod:`trioshim.task.engine`) and left behind by dying."""

    def stop_at_once(self, flags: Flags, bundle: str, log: logging.Logger) -> StopStatus | None:
        """Nothing mounted on the rootfs (the daemon unmounted it, or never mounted one): only
        the report is left."""
        return None if has_mount(os.path.join(bundle, "rootfs")) else StopStatus()

    async def stop(self, ctx: StopContext) -> StopStatus:
        try:
            await unmount_all(os.path.join(ctx.bundle, "rootfs"))
        except OSError as exc:
            ctx.log.warning("failed to clean up the rootfs mount of %s: %s", ctx.flags.id, exc)
        return StopStatus()


def app(name: str, backend: Backend | Engine) -> tuple[Manager, Registry]:
    """The manager and plugin registry of a shim named ``name`` serving ``backend``."""
    manager = TaskManager(name)
    manager.max_task_api = 3
    return manager, Registry([registration(backend)])


def main(name: str, backend: Backend | Engine) -> NoReturn:
    """Run the shim (the console-script entry): ``start``, ``delete`` or the daemon."""
    shim_main(*app(name, backend))
