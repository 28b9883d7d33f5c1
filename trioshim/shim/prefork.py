"""Get the fork server's heap ready to be shared by the daemons forked from it.

A daemon forked from the fork server shares the server's pages copy-on-write, and every page
it writes becomes its own. With CPython that is far more than the objects the daemon builds:
using an object writes its reference count (3.11 has no immortal objects), and the
specialising interpreter writes counters into the bytecode of every function it runs. So
the pages a daemon copies are roughly every page holding an object its start-up and its RPCs
touch (docs/benchmarks.md, "Memory of one daemon per container", has the measurements).
:func:`prepare_heap`, the fork server's last step before it serves, does what helps:

- **warm-up**, so that what Trio, the ttrpc code, protobuf and the daemon create lazily on
  first use is built, and the bytecode they run is specialised, once here instead of in every
  daemon: the codecs a daemon looks up by name; a look-up of the server's own cgroup, as a
  daemon does for each container (when the app uses the cgroup code); one Task.State call
  through our ttrpc server and client on a private socket (it answers Unimplemented); and
  one **dry run of the daemon** (:func:`~trioshim.shim.daemon.serve_daemon` with the app's
  manager and plugins, signals left alone, a scratch bundle, an abstract socket nobody else
  knows, a logger writing to ``/dev/null``), shut down as soon as it serves. So a plugin's
  ``init`` also runs once in the fork server, where there is no container: it must not need
  one;
- ``gc.collect()``, then **holes filled**: every free block of pymalloc's partly used pools
  gets a small object that is never freed, so the objects a daemon makes go to pools of its
  own, packed, instead of one here and one there into shared pages (each such page copied
  for one object);
- ``gc.freeze()``: the survivors move to the permanent generation, which the collector of a
  forked daemon never walks (a walk would write every object's GC header);
- **immortal heap** (CPython 3.12 and 3.13): every object reachable from the collector's lists
  gets the immortal reference count, so no daemon writes the reference counts of the
  pre-imported objects any more. These objects are never freed, which costs nothing: they are
  the imported state, alive as long as the process anyway. ``TRIOSHIM_IMMORTALIZE=0`` turns
  it off (for comparisons).
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import os
import socket
import sys
import sysconfig

import trio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from trioshim.shim.manager import Manager
    from trioshim.shim.plugin import Registry

__all__ = ["ENV_IMMORTALIZE", "immortalize", "immortalize_supported", "prepare_heap"]

ENV_IMMORTALIZE = "TRIOSHIM_IMMORTALIZE"
# Looked up by name after the fork (bytes.decode / str.encode), imported on first use.
_CODECS = ("ascii", "utf-8", "latin-1")
# CPython 3.12/3.13, 64-bit default build: the reference count is the object's first word,
# _Py_IMMORTAL_REFCNT is UINT_MAX, and Py_INCREF/Py_DECREF leave such an object alone.
IMMORTAL_REFCNT = 0xFFFF_FFFF
_DRY_RUN_TIMEOUT = 10.0
_HOLE_FILLERS: list[list[object]] = []  # alive for good (see _fill_pool_holes)


def prepare_heap(manager: Manager | None = None, registry: Registry | None = None) -> str | None:
    """Warm up, collect, fill the pool holes, freeze, and make the frozen heap immortal where
    the interpreter allows it. Call it once, right before the first fork; ``manager`` and
    ``registry`` (the app's) are for the daemon's dry run, skipped without them. Returns what
    failed (``None``: nothing did). A failed step costs memory, not correctness, so the other
    steps are done anyway."""
    problems: list[str] = []
    with _noting(problems, "warm-up"):
        _warm_up()
        if manager is not None and registry is not None:
            _daemon_dry_run(manager, registry)
    gc.collect()
    with _noting(problems, "filling pool holes"):
        _HOLE_FILLERS.extend(_fill_pool_holes())
    objects = gc.get_objects()  # before freezing: the permanent generation is not listed
    gc.freeze()
    if immortalize_supported() and os.environ.get(ENV_IMMORTALIZE) != "0":
        with _noting(problems, "immortal heap"):
            immortalize(objects)
    return "; ".join(problems) or None


@contextlib.contextmanager
def _noting(problems: list[str], step: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        problems.append(f"{step}: {type(exc).__name__}: {exc}")


def _warm_up() -> None:
    for name in _CODECS:
        codecs.lookup(name)
    _warm_cgroup_lookup()
    trio.run(_ttrpc_round_trip)


def _warm_cgroup_lookup() -> None:
    """Find the fork server's own cgroup, as a daemon finds each container's after ``runc
    create``: the mount-table parsing compiles a regular expression into ``re``'s cache on
    first use, about half a millisecond of every daemon's Create otherwise. Only when the app
    imported the cgroup code (a shim that never looks at cgroups gets nothing new). A host
    where the look-up fails loses only this: the daemons meet (and report) it themselves,
    and the rest of the warm-up, the dry run above all, must still run."""
    find = sys.modules.get("trioshim.shim.cgroups.find")
    if find is not None:
        with contextlib.suppress(OSError, ValueError):
            find.load_cgroup(os.getpid())


async def _ttrpc_round_trip() -> None:
    from trioshim.api.containerd.runtime.task.v2 import shim_pb2
    from trioshim.ttrpc import Server, Unimplemented, open_client

    service = shim_pb2.DESCRIPTOR.services_by_name["Task"]
    # Bound and connected synchronously: trio would bind and connect a unix socket in a
    # worker thread, and the fork server must not have threads when it forks.
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(f"\0trioshim-warm-up-{os.getpid()}")  # abstract: nothing on disk
    listening.listen(1)
    connecting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connecting.connect(listening.getsockname())
    server = Server()
    server.register(service, object())  # no handlers: every rpc answers Unimplemented
    async with trio.open_nursery() as nursery:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(listening))
        await nursery.start(server.serve, listener)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(connecting))
        async with open_client(stream) as client:
            with contextlib.suppress(Unimplemented):
                await client.call(
                    service.full_name,
                    "State",
                    shim_pb2.StateRequest(id="warm-up"),
                    shim_pb2.StateResponse,
                )
        await server.shutdown()


def pool_holes() -> dict[int, int]:
    """Free blocks in pymalloc's partly used pools, by block size (bytes -> count), from
    ``sys._debugmallocstats()``; empty when that is missing or its table is not there."""
    import tempfile

    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return {}
    with tempfile.TemporaryFile() as out:
        stderr = os.dup(2)  # it prints to the C-level stderr
        try:
            os.dup2(out.fileno(), 2)
            stats()
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
        out.seek(0)
        text = out.read().decode(errors="replace")
    holes: dict[int, int] = {}
    # The table: "class  size  num pools  blocks in use  avail blocks", one row per class.
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 5 and all(field.isdigit() for field in fields):
            size, avail = int(fields[1]), int(fields[4])
            if avail:
                holes[size] = avail
    return holes


def _fill_pool_holes() -> list[list[object]]:
    """Allocate one object per free block of every partly used pool (pymalloc hands those
    out before any fresh pool); returns the list that keeps them alive."""
    holes = pool_holes()
    fillers: list[object] = [None] * sum(holes.values())  # its array is malloc'd, not pooled
    i = 0
    for size, count in holes.items():
        for _ in range(count):
            if size <= 16:
                filler: object = object()  # 16 bytes
            elif size <= 32:
                filler = 1_000_000_000 + i  # a one-digit int: 28 bytes
            else:
                filler = bytes(size - 33)  # 33 bytes of header and terminator
            fillers[i] = filler
            i += 1
    return [fillers]


def _daemon_dry_run(manager: Manager, registry: Registry) -> None:
    """The daemon's start-up and shutdown, once, in-process (see the module docstring)."""
    import tempfile

    from trioshim.shim.daemon import DaemonConfig, serve_daemon
    from trioshim.shim.flags import parse_flags
    from trioshim.shim.log import setup_logger

    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    log = setup_logger(null, static={"runtime": manager.name}, name="trioshim.warm-up")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listening.bind(f"\0trioshim-warm-up-daemon-{os.getpid()}")
        listening.listen(1)
        with tempfile.TemporaryDirectory(prefix="trioshim-warm-up-") as bundle:
            flags = parse_flags(["-namespace", "warm-up", "-id", "warm-up", "-address", bundle])
            config = DaemonConfig(
                flags=flags,
                manager=manager,
                registry=registry,
                bundle=bundle,
                ttrpc_address=f"\0trioshim-warm-up-nobody-{os.getpid()}",
                log=log,
                listener=listening,
                handle_signals=False,
                plugin_config={},
            )

            crashes: list[str] = []

            def trace(stage: str) -> None:
                if stage == "serving" and config.shutdown is not None:
                    config.shutdown.shutdown("warm-up done")
                elif stage.startswith("crash: "):
                    crashes.append(stage.removeprefix("crash: "))

            config.trace = trace

            async def dry_run() -> int:
                with trio.move_on_after(_DRY_RUN_TIMEOUT):
                    return await serve_daemon(config)
                raise TimeoutError(f"the daemon's dry run took over {_DRY_RUN_TIMEOUT:g} s")

            status = trio.run(dry_run)
            if status != 0:
                why = "; ".join(crashes) or f"exit status {status}"
                raise RuntimeError(f"the daemon's dry run failed: {why}")
    finally:
        listening.close()
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        os.close(null)


def immortalize_supported() -> bool:
    """Whether this interpreter has immortal objects laid out as :func:`immortalize` assumes
    (3.12 and 3.13, 64-bit, neither free-threaded nor a debug build)."""
    return (
        (3, 12) <= sys.version_info[:2] <= (3, 13)
        and sys.maxsize > 2**32
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
        and not hasattr(sys, "gettotalrefcount")
        and sys.getrefcount(None) == IMMORTAL_REFCNT
    )


def immortalize(roots: list[object]) -> int:
    """Set the reference count of every object reachable from ``roots`` (``roots`` itself
    excepted) to :data:`IMMORTAL_REFCNT`; returns how many. Only meaningful where
    :func:`immortalize_supported`; elsewhere the objects merely never get freed."""
    import ctypes

    seen: set[int] = set()
    stack = list(roots)
    own = {id(roots), id(stack), id(seen)}
    while stack:
        obj = stack.pop()
        key = id(obj)
        if key in seen or key in own:
            continue
        seen.add(key)
        stack.extend(gc.get_referents(obj))
    refcount = ctypes.c_ssize_t
    for address in seen:
        refcount.from_address(address).value = IMMORTAL_REFCNT
    return len(seen)
