"""The task events the kit publishes, built in one place (topics and messages).

Order is the service's job (see :mod:`trioshim.task.service`); this module only spells the
messages the way containerd's runc shim does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from trioshim.api.containerd.events import task_pb2 as ev
from trioshim.api.containerd.types import mount_pb2
from trioshim.task.instance import Exit
from trioshim.task.stdio import StdioSpec

__all__ = ["GO_ZERO_TIME_SECONDS", "TASK_EXIT", "Publish", "TaskEvents", "timestamp"]

Publish = Callable[[str, Message], object]
"""``publisher.publish(topic, message)``: queue an event, never block."""

GO_ZERO_TIME_SECONDS: Final = -62135596800
"""0001-01-01T00:00:00Z, Go's zero ``time.Time``: what "never exited" looks like on the wire."""
TASK_EXIT: Final = "/tasks/exit"


def timestamp(ns: int | None) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for wall-clock ``ns``; ``None`` is Go's zero time."""
    if ns is None:
        return timestamp_pb2.Timestamp(seconds=GO_ZERO_TIME_SECONDS)
    seconds, nanos = divmod(ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


class TaskEvents:
    """One method per event; each queues its message on ``publish``."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    def create(
        self,
        container_id: str,
        bundle: str,
        stdio: StdioSpec,
        pid: int,
        *,
        rootfs: Iterable[mount_pb2.Mount] = (),
        checkpoint: str = "",
    ) -> None:
        """``rootfs``: the mounts the Create carried; ``checkpoint``: the image it restores."""
        io = ev.TaskIO(
            stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr, terminal=stdio.terminal
        )
        self._publish(
            "/tasks/create",
            ev.TaskCreate(
                container_id=container_id,
                bundle=bundle,
                rootfs=list(rootfs),
                io=io,
                checkpoint=checkpoint,
                pid=pid,
            ),
        )

    def start(self, container_id: str, pid: int) -> None:
        self._publish("/tasks/start", ev.TaskStart(container_id=container_id, pid=pid))

    def exec_added(self, container_id: str, exec_id: str) -> None:
        self._publish(
            "/tasks/exec-added", ev.TaskExecAdded(container_id=container_id, exec_id=exec_id)
        )

    def exec_started(self, container_id: str, exec_id: str, pid: int) -> None:
        self._publish(
            "/tasks/exec-started",
            ev.TaskExecStarted(container_id=container_id, exec_id=exec_id, pid=pid),
        )

    def oom(self, container_id: str) -> None:
        self._publish("/tasks/oom", ev.TaskOOM(container_id=container_id))

    def exit(self, container_id: str, process_id: str, pid: int, exit: Exit) -> None:
        self._publish(
            TASK_EXIT,
            ev.TaskExit(
                container_id=container_id,
                id=process_id,
                pid=pid,
                exit_status=exit.status,
                exited_at=timestamp(exit.exited_at_ns),
            ),
        )

    def delete(
        self, container_id: str, pid: int, exit: Exit | None, *, process_id: str = ""
    ) -> None:
        """``process_id``: the event's ``id`` (containerd's runc shim leaves it empty)."""
        self._publish(
            "/tasks/delete",
            ev.TaskDelete(
                container_id=container_id,
                id=process_id,
                pid=pid,
                exit_status=exit.status if exit else 0,
                exited_at=timestamp(exit.exited_at_ns if exit else None),
            ),
        )

    def paused(self, container_id: str) -> None:
        self._publish("/tasks/paused", ev.TaskPaused(container_id=container_id))

    def resumed(self, container_id: str) -> None:
        self._publish("/tasks/resumed", ev.TaskResumed(container_id=container_id))
