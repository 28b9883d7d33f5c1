"""OOM-kill notifications for containers' cgroups (v1 and v2).

    async with open_oom_watcher(on_oom) as watcher:
        watcher.add(container_id, cgroup)     # at init Start, once the cgroup is known

`on_oom(container_id)` is a plain function, called from the watcher's own tasks:
the service publishes `TaskOOM` from it.

- v1 (containerd pkg/oom/v1): an eventfd registered through `cgroup.event_control`
  for the group's `memory.oom_control`. Each wake-up is one OOM notification, unless
  the memory cgroup has been removed (removal signals the eventfd too), which ends
  the watch.
- v2 (containerd pkg/oom/v2): inotify (IN_MODIFY) on `memory.events` and
  `cgroup.events`. On each notification `memory.events` is re-read and `on_oom` is
  called when `oom_kill` grew past the last value seen. The watch ends when
  `cgroup.events` says `populated 0`, when the files vanish, or on a read error.
  Unlike the reference, the counters are also read once right after the watches are
  in place, so a kill that happened between the container's start and `add` is not lost.

Each watch is a task in the watcher's nursery that waits on its fd with
`trio.lowlevel.wait_readable`; leaving the `async with` cancels them all and closes
every fd.

`poll(container_id)` is the explicit hand-off that orders TaskOOM before the init's
TaskExit: the kernel records an OOM kill (v1: signals the eventfd, v2: counts it in
`memory.events`) before the killed process dies, so by the time its exit is reaped the
kill can be seen without waiting; exit handling calls `poll` before it publishes the
exit, and whatever the watch task would have reported later is reported now (once).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import trio

from trioshim.shim.cgroups.files import Cgroup
from trioshim.shim.cgroups.oomsource import (
    IN_MODIFY,
    INOTIFY_READ_SIZE,
    V2Counter,
    cgroup_removed,
    inotify_add_watch,
    inotify_init,
    is_gone,
    read_kv,
    register_v1,
    register_v2,
    v1_pending,
)
from trioshim.shim.cgroups.v1 import CgroupV1
from trioshim.shim.cgroups.v2 import CgroupV2

__all__ = ["OOMCount", "OOMWatcher", "open_oom_watcher"]

log = logging.getLogger(__name__)


class OOMWatcher:
    """Watches containers' cgroups for OOM kills; made by `open_oom_watcher`."""

    def __init__(self, nursery: trio.Nursery, on_oom: Callable[[str], object]) -> None:
        self._nursery = nursery
        self._on_oom = on_oom
        self._active: Counter[str] = Counter()
        self._scopes: dict[str, list[trio.CancelScope]] = {}
        self._checks: dict[trio.CancelScope, Callable[[], bool]] = {}
        self._closed = False
        self._changed = trio.Event()

    @property
    def watching(self) -> frozenset[str]:
        """The container ids with a live watch."""
        return frozenset(self._active)

    async def wait_stopped(self, container_id: str) -> None:
        """Return once no watch of `container_id` is live (the group emptied or vanished)."""
        while container_id in self._active:
            await self._changed.wait()

    def add(self, container_id: str, cgroup: Cgroup) -> None:
        """Start watching `cgroup` for OOM kills, reported as `on_oom(container_id)`.

        The kernel registration happens here, so failures surface to the caller as
        OSError (the reference logs them and goes on without OOM events).
        """
        if self._closed:
            raise RuntimeError("OOM watcher is closed")
        if isinstance(cgroup, CgroupV1):
            memory_path = cgroup.memory_path
            if memory_path is None:
                raise OSError(errno.ENOENT, "cgroups: memory cgroup not supported on this system")
            fd = register_v1(memory_path)
            watch_v1 = functools.partial(self._watch_v1, container_id, memory_path, fd)
            self._start(container_id, watch_v1, fd, v1_pending(memory_path, fd))
        elif isinstance(cgroup, CgroupV2):
            fd = register_v2(cgroup.path)
            counter = V2Counter(cgroup.path)
            watch_v2 = functools.partial(self._watch_v2, container_id, cgroup.path, fd, counter)
            self._start(container_id, watch_v2, fd, counter.pending)
        else:
            raise TypeError(f"unsupported cgroup type {type(cgroup).__name__}")

    def poll(self, container_id: str) -> None:
        """Report now an OOM kill of `container_id` its watches have not reported yet."""
        for scope in self._scopes.get(container_id, []):
            check = self._checks.get(scope)
            if check is not None and check():
                self._notify(container_id)

    def discard(self, container_id: str) -> None:
        """Stop the watches of `container_id`, if any (a no-op otherwise)."""
        for scope in self._scopes.pop(container_id, []):
            scope.cancel()

    def close(self) -> None:
        """Stop every watch; `add` is refused from now on."""
        self._closed = True
        for container_id in list(self._scopes):
            self.discard(container_id)

    def _start(
        self,
        container_id: str,
        watch: Callable[[], Awaitable[None]],
        fd: int,
        pending: Callable[[], bool],
    ) -> None:
        """Run ``watch`` (which waits on ``fd``) as a task; ``pending`` is `poll`'s look."""
        scope = trio.CancelScope()
        self._scopes.setdefault(container_id, []).append(scope)
        self._checks[scope] = pending
        self._active[container_id] += 1
        try:
            self._nursery.start_soon(self._run, container_id, scope, watch, fd)
        except BaseException:
            self._checks.pop(scope, None)
            self._finish(container_id, scope)
            os.close(fd)
            raise

    async def _run(
        self,
        container_id: str,
        scope: trio.CancelScope,
        watch: Callable[[], Awaitable[None]],
        fd: int,
    ) -> None:
        try:
            with scope:
                await watch()
        except Exception:
            log.exception("OOM watch of container %s failed", container_id)
        finally:
            self._checks.pop(scope, None)
            os.close(fd)
            self._finish(container_id, scope)

    def _finish(self, container_id: str, scope: trio.CancelScope) -> None:
        self._active[container_id] -= 1
        if self._active[container_id] <= 0:
            del self._active[container_id]
        self._changed.set()
        self._changed = trio.Event()
        scopes = self._scopes.get(container_id)
        if scopes is not None and scope in scopes:
            scopes.remove(scope)
            if not scopes:
                del self._scopes[container_id]

    def _notify(self, container_id: str) -> None:
        try:
            self._on_oom(container_id)
        except Exception:
            log.exception("OOM callback for container %s failed", container_id)

    async def _watch_v1(self, container_id: str, memory_path: str, efd: int) -> None:
        while True:
            await trio.lowlevel.wait_readable(efd)
            try:
                os.eventfd_read(efd)
            except BlockingIOError:
                continue  # poll() took it
            if cgroup_removed(memory_path):
                log.debug(
                    "memory cgroup %s removed: OOM watch of %s ends", memory_path, container_id
                )
                return
            self._notify(container_id)

    async def _watch_v2(self, container_id: str, path: str, fd: int, counter: V2Counter) -> None:
        cgroup_events = os.path.join(path, "cgroup.events")
        while True:
            try:
                if counter.grew():
                    self._notify(container_id)
            except OSError as exc:
                if not is_gone(exc):
                    where = counter.memory_events
                    log.warning("reading %s: %s: OOM watch of %s ends", where, exc, container_id)
                return
            try:
                if read_kv(cgroup_events).get("populated") == 0:
                    return
            except OSError as exc:
                if not is_gone(exc):
                    log.warning(
                        "reading %s: %s: OOM watch of %s ends", cgroup_events, exc, container_id
                    )
                return
            # wait for the next change of either file
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    os.read(fd, INOTIFY_READ_SIZE)
                except BlockingIOError:
                    continue
                break


class OOMCount:
    """The OOM notifications of one cgroup from now on, counted without a task of ours: read
    them with :meth:`take`, which never waits (say, once the cgroup's only process is reaped);
    to see them as they come, loop on :meth:`wait` then :meth:`take` in a task of yours.

    The kernel keeps the count: v1, the watcher's eventfd, whose counter adds every
    notification up until it is read; v2, the ``oom`` line of ``memory.events`` (OOM events,
    killing or not), against its value when the count was opened. Open it before any process
    joins the cgroup so that nothing is missed; :meth:`close` it when done.
    """

    def __init__(
        self, *, eventfd: int | None = None, events: str | None = None, inotify: int | None = None
    ) -> None:
        self._eventfd = eventfd
        self._events = events
        self._inotify = inotify  # v2: wakes :meth:`wait` when ``events`` changes
        self._seen = 0
        if events is not None:
            self._seen = self._events_oom()

    @classmethod
    def open(cls, memory_path: str, *, unified: bool) -> OOMCount:
        """Count the OOMs of the memory cgroup at ``memory_path`` (v1: the memory hierarchy's
        directory; v2: the cgroup's). OSError when the kernel refuses the registration."""
        if unified:
            events = os.path.join(memory_path, "memory.events")
            inotify = inotify_init()
            try:
                inotify_add_watch(inotify, events, IN_MODIFY)
                return cls(events=events, inotify=inotify)
            except BaseException:
                os.close(inotify)
                raise
        return cls(eventfd=register_v1(memory_path))

    async def wait(self) -> None:
        """Until the kernel may have notified since the last :meth:`take` (which then says how
        often; 0 after a change that was no OOM). Call :meth:`take` before waiting again: v1
        stays readable until then. Forever, when there is nothing to watch."""
        if self._eventfd is not None:
            await trio.lowlevel.wait_readable(self._eventfd)
        elif self._inotify is not None:
            await trio.lowlevel.wait_readable(self._inotify)
            with suppress(BlockingIOError):
                while os.read(self._inotify, INOTIFY_READ_SIZE):
                    pass  # drained: the next change wakes us again
        else:
            await trio.sleep_forever()

    def _events_oom(self) -> int:
        assert self._events is not None
        try:
            return read_kv(self._events).get("oom", 0)
        except OSError as exc:
            if not is_gone(exc):
                log.warning("reading %s: %s", self._events, exc)
            return self._seen

    def take(self) -> int:
        """The notifications since the last call (or since :meth:`open`)."""
        if self._eventfd is not None:
            try:
                return os.eventfd_read(self._eventfd)
            except BlockingIOError:
                return 0
        if self._events is not None:
            now = self._events_oom()
            taken, self._seen = max(now - self._seen, 0), now
            return taken
        return 0

    def close(self) -> None:
        """Release the kernel's handles (no :meth:`wait` may be pending)."""
        for fd in (self._eventfd, self._inotify):
            if fd is not None:
                os.close(fd)
        self._eventfd = self._inotify = None
        self._events = None


@asynccontextmanager
async def open_oom_watcher(on_oom: Callable[[str], object]) -> AsyncIterator[OOMWatcher]:
    """An `OOMWatcher` whose watches live in its own nursery, all ended on exit."""
    async with trio.open_nursery() as nursery:
        watcher = OOMWatcher(nursery, on_oom)
        try:
            yield watcher
        finally:
            watcher.close()
