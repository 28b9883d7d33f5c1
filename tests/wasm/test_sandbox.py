"""A pod's sandbox (CRI's pause container) on the wasm engine: a holder process, not a module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from tests.wasm.test_engine import Context, Fds
from trioshim.shim.reaper import open_reaper
from trioshim.wasm import WasmEngine, WasmLaunchError
from trioshim.wasm.sandbox import CONTAINER_TYPE_ANNOTATION, holder_argv, is_pod_sandbox


def _spec(*namespaces: dict[str, str], kind: str = "sandbox") -> dict[str, object]:
    return {
        "annotations": {CONTAINER_TYPE_ANNOTATION: kind},
        "linux": {"namespaces": list(namespaces)},
    }


SLEEP = os.path.realpath(shutil.which("sleep") or "sleep")
HOLDER = ["/bin/sh", "-c", "exec /bin/sleep infinity 3>&-"]


def _which(name: str) -> str:
    return f"/bin/{name}"


def test_only_cris_sandbox_annotation_makes_a_sandbox() -> None:
    assert is_pod_sandbox(_spec())
    assert not is_pod_sandbox(_spec(kind="container"))
    assert not is_pod_sandbox({})


def test_host_network_pod_gets_a_new_ipc_namespace_only() -> None:
    spec = _spec({"type": "pid"}, {"type": "ipc"}, {"type": "mount"})
    assert holder_argv(spec, _which) == ["/bin/unshare", "--ipc", "--", *HOLDER]


def test_namespace_paths_are_joined_and_the_rest_made() -> None:
    spec = _spec(
        {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "ipc"}, {"type": "uts"}
    )
    assert holder_argv(spec, _which) == [
        *("/bin/nsenter", "--net=/var/run/netns/cni-1", "--"),
        *("/bin/unshare", "--ipc", "--uts", "--"),
        *HOLDER,
    ]


def test_no_namespaces_is_a_plain_sleep() -> None:
    assert holder_argv(_spec(), _which) == HOLDER


def test_a_missing_tool_is_a_clear_error() -> None:
    with pytest.raises(WasmLaunchError, match="unshare is not installed"):
        holder_argv(_spec({"type": "ipc"}), lambda name: None)


async def test_the_engine_runs_the_holder_in_new_namespaces_until_killed(tmp_path: Path) -> None:
    spec = _spec({"type": "ipc"}, {"type": "uts"})
    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        # args name the image's pause binary: it is never looked at, let alone run.
        ctx = Context(reaper, str(tmp_path), ["/pause"], Fds(None, None, None), spec=spec)
        seen: dict[str, bool] = {}

        async def inspect_then_kill() -> None:
            await ctx.running.wait()
            pid = ctx.pids[0]
            assert os.readlink(f"/proc/{pid}/exe") == SLEEP  # started = in place
            for ns in ("ipc", "uts", "net"):
                seen[ns] = os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
            ctx.signals.deliver(15)

        nursery.start_soon(inspect_then_kill)
        status = await WasmEngine(cache_dir=None).run(ctx)
    assert status == 143
    assert seen == {"ipc": True, "uts": True, "net": False}


async def test_a_holder_that_cannot_get_in_place_fails_start_with_the_reason(
    tmp_path: Path,
) -> None:
    spec = _spec({"type": "network", "path": str(tmp_path / "no-such-netns")})
    async with open_reaper() as reaper:
        ctx = Context(reaper, str(tmp_path), ["/pause"], Fds(None, None, None), spec=spec)
        with pytest.raises(WasmLaunchError, match=r"nsenter failed .*no-such-netns"):
            await WasmEngine(cache_dir=None).run(ctx)
    assert ctx.pids == []  # never reported started: Start fails with the error
