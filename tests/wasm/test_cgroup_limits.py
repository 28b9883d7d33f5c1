"""A WASI child in a real cgroup of this host: placement, limits, Stats, an OOM kill, removal,
and the OOM reports (live, or with the exit) through run_module and WasmEngine.

These make cgroups under /sys/fs/cgroup (root needed), each with a name of its own so that
nothing is shared with containerd's or another test's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.wasm import modules
from tests.wasm.harness import Run, run
from tests.wasm.test_engine import Context, Fds
from trioshim.shim.cgroups import CgroupV1, is_unified, load_cgroup
from trioshim.shim.reaper import open_reaper
from trioshim.wasm import CgroupLimits, ContainerCgroup, WasmEngine, WasmProcess
from trioshim.wasm.cgroup import DEFAULT_ROOT

MIB = 1 << 20

# Like the other tests that need root for one thing (tests/runc/test_oom.py), not e2e: no
# containerd is involved. scripts/test and CI run as root, so they always run there.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make cgroups")


@pytest.fixture
def cgroup_name() -> Iterator[str]:
    name = f"/trioshim-wasm-test-{uuid.uuid4().hex[:12]}"
    yield name
    leftovers = [p for p in Path(DEFAULT_ROOT).glob(f"*/{name.lstrip('/')}") if p.is_dir()]
    for path in leftovers:
        path.rmdir()
    assert leftovers == [], "the runner left its cgroup behind"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def _spec(
    path: str, memory: int | None = None, pids: int | None = None, *, oom_killer: bool = True
) -> dict[str, object]:
    resources: dict[str, object] = {}
    if memory is not None:
        # swap = limit (memory + swap, as OCI counts it): on a host with swap, a hungry module
        # still meets its limit instead of swapping
        resources["memory"] = {
            "limit": memory,
            "swap": memory,
            "disableOOMKiller": not oom_killer,
        }
    if pids is not None:
        resources["pids"] = {"limit": pids}
    return {"linux": {"cgroupsPath": path, "resources": resources}}


def _cgroup_lines(pid: int) -> dict[str, str]:
    """controller -> path from /proc/<pid>/cgroup (v2: the "" entry)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            out[controller] = path
    return out


def test_limits_are_written_to_the_real_hierarchy(cgroup_name: str) -> None:
    cgroup = ContainerCgroup.create(cgroup_name, CgroupLimits(memory=48 * MIB, pids=16))
    try:
        if cgroup.unified:
            directory = Path(cgroup.directories[0])
            assert (directory / "memory.max").read_text().strip() == str(48 * MIB)
            assert (directory / "pids.max").read_text().strip() == "16"
        else:
            memory = Path(DEFAULT_ROOT, "memory", cgroup_name.lstrip("/"))
            pids = Path(DEFAULT_ROOT, "pids", cgroup_name.lstrip("/"))
            assert (memory / "memory.limit_in_bytes").read_text().strip() == str(48 * MIB)
            assert (pids / "pids.max").read_text().strip() == "16"
    finally:
        cgroup.remove()


async def test_the_child_runs_in_the_container_cgroup_and_stats_can_read_it(
    rootfs: Path, cgroup_name: str
) -> None:
    module = modules.install(rootfs, "loop.wasm", modules.LOOP)
    send, receive = trio.open_memory_channel[int](1)
    seen: dict[str, object] = {}

    async def inspect_then_kill(process: WasmProcess) -> None:
        await process.running.wait()  # the module runs: it joined the cgroup before that
        seen["cgroups"] = _cgroup_lines(process.pid)
        found = load_cgroup(process.pid)  # what a Stats RPC reads (trioshim.shim.cgroups)
        assert found is not None
        seen["metrics_type"] = found.metrics().type_url
        await send.send(9)

    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        outcome = await run(
            reaper,
            Run(str(rootfs), [module], spec=_spec(cgroup_name, memory=256 * MIB)),
            signals=receive,
            on_start=lambda process: nursery.start_soon(inspect_then_kill, process),
        )
    assert outcome.status == 137
    cgroups = seen["cgroups"]
    assert isinstance(cgroups, dict)
    assert cgroups.get("memory", cgroups.get("")) == cgroup_name
    assert str(seen["metrics_type"]).startswith("io.containerd.cgroups.v")
    assert not outcome.process.oom_killed
    assert (outcome.process.oom_events, outcome.process.oom) == (0, False)  # SIGKILL is no OOM
    # the fixture checks the cgroup is gone


async def test_a_memory_limit_ends_a_hungry_module_with_an_oom_kill(
    rootfs: Path, cgroup_name: str
) -> None:
    module = modules.install(rootfs, "hog.wasm", modules.HOG)
    reports: list[None] = []
    async with open_reaper() as reaper:
        unlimited = await run(
            reaper, Run(str(rootfs), [module]), on_oom=lambda: reports.append(None)
        )
        assert reports == []
        limited = await run(
            reaper,
            Run(str(rootfs), [module], spec=_spec(cgroup_name, memory=96 * MIB)),
            on_oom=lambda: reports.append(None),
        )
    assert unlimited.status == 0  # 256 MiB touched: the module itself is fine
    assert limited.status == 137  # the kernel's OOM killer: SIGKILL
    assert limited.process.oom_killed
    assert limited.process.oom_events >= 1  # the notification runc's shim makes TaskOOM of
    assert limited.process.oom and not unlimited.process.oom
    # the kill's notification is told once: live, or with the exit if the watch had not seen it
    assert len(reports) == limited.process.oom_reports
    assert limited.process.oom_reports + limited.process.oom_at_exit == 1


def _oom_control(cgroup: CgroupV1) -> dict[str, str]:
    text = Path(cgroup.paths["memory"], "memory.oom_control").read_text()
    return dict(line.split() for line in text.splitlines())


@pytest.mark.skipif(is_unified(), reason="cgroup v2 has no switch for the OOM killer")
async def test_an_oom_that_does_not_kill_the_module_is_reported_while_it_runs(
    rootfs: Path, cgroup_name: str
) -> None:
    """With the OOM killer off (OCI disableOOMKiller) the module stalls at its limit instead
    of dying; the OOM is reported while it is stalled (we kill it only once it was), and a
    Kill then ends it."""
    module = modules.install(rootfs, "hog.wasm", modules.HOG)
    send, receive = trio.open_memory_channel[int](1)
    stalled: list[WasmProcess] = []
    states: list[str] = []

    def kill_on_the_first_report() -> None:
        process = stalled[0]
        if not states:  # the module is still there, stalled: not reaped, not OOM-killed
            states.append(Path(f"/proc/{process.pid}/status").read_text().split("State:")[1])
            cgroup = load_cgroup(process.pid)
            assert isinstance(cgroup, CgroupV1)
            assert _oom_control(cgroup)["oom_kill_disable"] == "1"
            send.send_nowait(9)

    async with open_reaper() as reaper:
        outcome = await run(
            reaper,
            Run(str(rootfs), [module], spec=_spec(cgroup_name, memory=96 * MIB, oom_killer=False)),
            signals=receive,
            on_start=stalled.append,
            on_oom=kill_on_the_first_report,
        )
    assert len(states) == 1 and "zombie" not in states[0]
    assert outcome.status == 137  # our SIGKILL, not the OOM killer's
    assert not outcome.process.oom_killed
    assert outcome.process.oom_reports >= 1 and outcome.process.oom


async def test_the_engine_tells_an_oom_kill_once(rootfs: Path, cgroup_name: str) -> None:
    module = modules.install(rootfs, "hog.wasm", modules.HOG)
    async with open_reaper() as reaper:
        ctx = Context(
            reaper, str(rootfs), [module], Fds(None, None, None), spec=_spec(cgroup_name, 96 * MIB)
        )
        assert await WasmEngine(cache_dir=None).run(ctx) == 137
    # live (ctx.report_oom) if the watch read it before the reap, else with the exit (ctx.oom)
    assert ctx.ooms in (["live"], ["exit"])


@pytest.mark.skipif(is_unified(), reason="cgroup v2 has no switch for the OOM killer")
async def test_the_engine_reports_a_stalled_modules_oom_while_it_runs(
    rootfs: Path, cgroup_name: str
) -> None:
    module = modules.install(rootfs, "hog.wasm", modules.HOG)
    spec = _spec(cgroup_name, memory=96 * MIB, oom_killer=False)
    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        ctx = Context(reaper, str(rootfs), [module], Fds(None, None, None), spec=spec)

        async def kill_once_reported() -> None:
            await ctx.oom_reported.wait()  # the module is stalled: only this kill ends it
            ctx.signals.deliver(9)

        nursery.start_soon(kill_once_reported)
        assert await WasmEngine(cache_dir=None).run(ctx) == 137
    assert ctx.ooms and set(ctx.ooms) == {"live"}  # reported live; the exit carries none
