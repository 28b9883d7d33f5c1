"""trioshim.shim.prefork: the fork server's heap preparation.

Each test runs in a fresh interpreter: freezing the heap or making objects immortal would
change the pytest process for every test after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from trioshim.shim.prefork import ENV_IMMORTALIZE, IMMORTAL_REFCNT, immortalize_supported


def _run(code: str, env: dict[str, str] | None = None, *args: str) -> Any:
    """Run ``code`` in a new interpreter (``args`` in its ``sys.argv[1:]``); it prints one JSON
    value as its last line."""
    import os

    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_immortalize_reaches_nested_objects_but_not_the_roots_list() -> None:
    result = _run(
        """
        import ctypes, json
        from trioshim.shim.prefork import immortalize
        inner = ["x" * 100, 10**30]
        graph = {"k": (inner, object())}
        roots = [graph]
        count = immortalize(roots)
        word = lambda o: ctypes.c_ssize_t.from_address(id(o)).value
        print(json.dumps({
            "count": count,
            "graph": word(graph), "inner": word(inner), "str": word(inner[0]),
            "int": word(inner[1]), "object": word(graph["k"][1]), "roots": word(roots),
        }))
        """
    )
    # graph, the tuple, the list, its two items and the object (a dict with only str keys
    # does not report its keys as referents; 3.12 makes the interned ones immortal anyway).
    assert result.pop("count") >= 6
    assert result.pop("roots") < 10
    for name, word in result.items():
        # At least the immortal count (3.11 still adds the references it takes).
        assert word >= IMMORTAL_REFCNT, name


@pytest.mark.parametrize("immortal", ["1", "0"])
def test_prepare_heap_freezes_warms_up_and_forks_cleanly(immortal: str) -> None:
    result = _run(
        """
        import gc, json, os, sys, threading
        import trio
        from trioshim.shim.prefork import prepare_heap
        before = sorted(os.listdir("/proc/self/fd"))
        marker = ["made before the fork server serves"]
        problem = prepare_heap()
        after = sorted(os.listdir("/proc/self/fd"))

        async def child():
            await trio.sleep(0)

        pid = os.fork()
        if pid == 0:
            trio.run(child)
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({
            "problem": problem, "frozen": gc.get_freeze_count(),
            "fds_left": sorted(set(after) - set(before)), "threads": threading.active_count(),
            "marker": sys.getrefcount(marker), "child": os.waitstatus_to_exitcode(status),
            "codecs": "encodings.ascii" in sys.modules,
        }))
        """,
        env={ENV_IMMORTALIZE: immortal},
    )
    assert result["problem"] is None
    assert result["frozen"] > 1000
    assert result["fds_left"] == []  # the warm-up's sockets are closed
    assert result["threads"] == 1
    assert result["codecs"]
    assert result["child"] == 7
    if immortalize_supported() and immortal == "1":
        assert result["marker"] == IMMORTAL_REFCNT
    else:
        assert result["marker"] < 10


def test_failed_steps_are_reported_and_the_heap_still_frozen() -> None:
    result = _run(
        """
        import gc, json
        from trioshim.shim import prefork

        def broken():
            raise OSError("no sockets here")

        def no_stats():
            raise OSError("no room for the allocator's statistics")

        prefork._warm_up = broken
        prefork.pool_holes = no_stats
        print(json.dumps({"problem": prefork.prepare_heap(), "frozen": gc.get_freeze_count()}))
        """
    )
    assert result["problem"] == (
        "warm-up: OSError: no sockets here; "
        "filling pool holes: OSError: no room for the allocator's statistics"
    )
    assert result["frozen"] > 1000


@pytest.mark.parametrize("imported", [True, False])
def test_the_warm_up_finds_its_own_cgroup_only_for_an_app_that_uses_cgroups(
    imported: bool,
) -> None:
    result = _run(
        """
        import json, os, sys
        from trioshim.shim import prefork
        FIND = "trioshim.shim.cgroups.find"
        calls = []
        if sys.argv[1] == "yes":
            import trioshim.shim.cgroups.find as find
            real = find.load_cgroup
            find.load_cgroup = lambda pid: calls.append(pid) or real(pid)
        problem = prefork.prepare_heap()
        print(json.dumps({
            "problem": problem, "calls": calls, "pid": os.getpid(), "loaded": FIND in sys.modules,
        }))
        """,
        None,
        "yes" if imported else "no",
    )
    assert result["problem"] is None
    assert result["loaded"] is imported  # never imported for an app that does not use it
    assert result["calls"] == ([result["pid"]] if imported else [])


# A registry whose only plugin records its init in a file and serves an empty Task service.
_RECORDING_APP = """
import os, sys
from trioshim import shim
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.runc.manager import RuncManager

RECORD = sys.argv[1]

class Service:
    def ttrpc_services(self):
        return [(shim_pb2.DESCRIPTOR.services_by_name["Task"], object())]

async def init(ctx):
    with open(RECORD, "a") as f:
        f.write(f"init {ctx.bundle} {os.environ.get('FAIL', '')}\\n")
    if os.environ.get("FAIL"):
        raise RuntimeError("no container here")
    return Service()

manager = RuncManager()
registry = shim.Registry([shim.Registration(shim.TTRPC_PLUGIN, "task", init)])
"""


def _run_with_app(code: str, record: str, env: dict[str, str] | None = None) -> Any:
    return _run(_RECORDING_APP + textwrap.dedent(code), env, record)


def test_the_daemon_dry_run_runs_the_plugins_once_and_leaves_nothing_behind(
    tmp_path: Any,
) -> None:
    record = tmp_path / "record"
    result = _run_with_app(
        """
        import gc, glob, json, signal, tempfile, threading
        from trioshim.shim.prefork import prepare_heap
        handlers = lambda: [signal.getsignal(s) for s in signal.valid_signals()
                            if s not in (signal.SIGKILL, signal.SIGSTOP)]
        fds, before = sorted(os.listdir("/proc/self/fd")), handlers()
        problem = prepare_heap(manager, registry)
        print(json.dumps({
            "problem": problem, "frozen": gc.get_freeze_count(),
            "fds_left": sorted(set(os.listdir("/proc/self/fd")) - set(fds)),
            "threads": threading.active_count(), "signals_kept": handlers() == before,
            "scratch_left": glob.glob(os.path.join(tempfile.gettempdir(), "trioshim-warm-up-*")),
        }))
        """,
        str(record),
    )
    assert result == {
        "problem": None,
        "frozen": result["frozen"],
        "fds_left": [],
        "threads": 1,
        "signals_kept": True,
        "scratch_left": [],
    }
    assert result["frozen"] > 1000
    (line,) = record.read_text().splitlines()
    assert line.startswith("init /") and "trioshim-warm-up-" in line


def test_a_plugin_failing_in_the_dry_run_is_reported_and_the_heap_still_frozen(
    tmp_path: Any,
) -> None:
    record = tmp_path / "record"
    result = _run_with_app(
        """
        import gc, json
        from trioshim.shim.prefork import prepare_heap
        problem = prepare_heap(manager, registry)
        print(json.dumps({"problem": problem, "frozen": gc.get_freeze_count()}))
        """,
        str(record),
        env={"FAIL": "1"},
    )
    assert "no container here" in result["problem"]
    assert result["frozen"] > 1000
    assert len(record.read_text().splitlines()) == 1


def test_filling_pool_holes_leaves_no_free_block_in_partly_used_pools() -> None:
    result = _run(
        """
        import json
        import trioshim.runc.launcher, trioshim.runc.backend  # a realistic heap
        from trioshim.shim import prefork
        before = prefork.pool_holes()
        fillers = prefork._fill_pool_holes()
        after = prefork.pool_holes()
        print(json.dumps({"before": sum(before.values()),
                          "after": {str(k): v for k, v in after.items() if k >= 96}}))
        """
    )
    assert result["before"] > 1000
    # Small classes may have started a fresh pool since (pool_holes allocates); the larger
    # ones were all filled exactly.
    assert result["after"] == {}


def test_a_cgroup_look_up_that_fails_in_the_warm_up_leaves_the_dry_run_to_run(
    tmp_path: Any,
) -> None:
    """The look-up is only warming a cache: a host where it fails (an unreadable or unusual
    ``/proc/self/cgroup``) must not cost every daemon the rest of the warm-up."""
    record = tmp_path / "record"
    result = _run_with_app(
        """
        import json
        import trioshim.shim.cgroups.find as find
        from trioshim.shim.prefork import prepare_heap
        def unusual(pid):
            raise ValueError("invalid cgroup entry: 'x'")
        find.load_cgroup = unusual
        print(json.dumps({"problem": prepare_heap(manager, registry)}))
        """,
        str(record),
    )
    assert result == {"problem": None}
    assert len(record.read_text().splitlines()) == 1
