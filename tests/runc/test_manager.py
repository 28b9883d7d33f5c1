"""The runc shim's manager: grouping key, the `delete` action's clean-up, -info."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from google.protobuf import any_pb2
from google.protobuf.message import Message

from tests.support.delete_action import delete_without_event_loop, run_delete, with_own_stop
from trioshim.api.containerd.runtime.linux.runctypes import runc_pb2 as runctypes
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.api.containerd.types import introspection_pb2
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.runc import main as runc_main
from trioshim.runc import manager
from trioshim.runc.manager import RUNTIME_NAME, RuncManager
from trioshim.runc.options import write_bundle_files
from trioshim.shim.flags import Flags
from trioshim.shim.main import run as shim_run
from trioshim.shim.manager import StartContext, StopContext
from trioshim.shim.mounts import Mount as RootfsMount
from trioshim.shim.mounts import mount, unmount_all
from trioshim.shim.reaper import Reaper, open_reaper, set_child_subreaper


def _start_ctx(bundle: Path, container_id: str = "c1") -> StartContext:
    return StartContext(
        flags=Flags(namespace="ns", id=container_id, address="/run/c.sock", action="start"),
        bundle=str(bundle),
        ttrpc_address="/run/c.sock.ttrpc",
        options=None,
    )


@pytest.mark.parametrize(
    ("annotations", "key"),
    [
        ({}, "c1"),
        ({"io.kubernetes.cri.sandbox-id": "sb"}, "sb"),
        ({"io.containerd.trioshim.v2.group": "g", "io.kubernetes.cri.sandbox-id": "sb"}, "g"),
        ({"io.containerd.runc.v2.group": "runc-only"}, "c1"),
    ],
)
def test_grouping_key(tmp_path: Path, annotations: dict[str, str], key: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"annotations": annotations}))
    assert RuncManager().grouping_key(_start_ctx(tmp_path)) == key


@pytest.mark.parametrize(
    "options",
    [
        oci_pb2.Options(shim_cgroup="/pods/shims", binary_name="runc"),
        runctypes.CreateOptions(shim_cgroup="/pods/shims", io_uid=1000),
    ],
    ids=["runc.v1", "legacy"],
)
def test_after_spawn_joins_the_shim_cgroup_of_either_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: Message
) -> None:
    joined: list[tuple[int, str]] = []
    monkeypatch.setattr(manager, "join_shim_cgroup", lambda pid, cg: joined.append((pid, cg)))
    ctx = dataclasses.replace(
        _start_ctx(tmp_path),
        options=any_pb2.Any(
            type_url=options.DESCRIPTOR.full_name, value=options.SerializeToString()
        ),
    )
    RuncManager().after_spawn(ctx, 4242)
    assert joined == [(4242, "/pods/shims")]
    RuncManager().after_spawn(_start_ctx(tmp_path), 4243)
    assert joined == [(4242, "/pods/shims")]


def test_info_names_the_runtime() -> None:
    out = io.BytesIO()
    rc = shim_run(RuncManager(), ["-info"], runc_main.registry(), stdin=io.BytesIO(b""), stdout=out)
    assert rc == 0
    info = introspection_pb2.RuntimeInfo.FromString(out.getvalue())
    assert info.name == RUNTIME_NAME == "io.containerd.trioshim.v2"


# --- the delete action, against a real runc container ------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc"
)


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    set_child_subreaper(True)
    try:
        async with open_reaper() as r:
            yield r
    finally:
        set_child_subreaper(False)


def _stop_ctx(bundle: Path, reaper: Reaper, container_id: str) -> StopContext:
    return StopContext(
        flags=Flags(namespace="ns", id=container_id, bundle=str(bundle), action="delete"),
        bundle=str(bundle),
        reaper=reaper,
        log=logging.getLogger("test.delete"),
    )


def _is_mounted(path: Path) -> bool:
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) for line in mountinfo)


@needs_root
async def test_delete_action_cleans_up_a_live_container(
    tmp_path: Path, reaper: Reaper, busybox_rootfs: Path
) -> None:
    bundle = tmp_path / "c1"
    bundle.mkdir()
    (await reaper.run(["runc", "spec", "--bundle", str(bundle)])).check()
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sleep", "1000"]
    (bundle / "config.json").write_text(json.dumps(spec))
    (bundle / "rootfs").mkdir()
    mount(RootfsMount("bind", str(busybox_rootfs), options=("rbind", "ro")), str(bundle / "rootfs"))
    runc_root = tmp_path / "runc-root"
    write_bundle_files(str(bundle), oci_pb2.Options(root=str(runc_root)))
    root_args = ["runc", "--root", str(runc_root / "ns")]
    try:
        create = await reaper.run(
            [
                *root_args,
                "create",
                "--bundle",
                str(bundle),
                "--pid-file",
                str(bundle / "init.pid"),
                "c1",
            ]
        )
        create.check()
        pid = int((bundle / "init.pid").read_text())
        ctx = _stop_ctx(bundle, reaper, "c1")
        # runc state and a mounted rootfs left: not something to answer at once
        assert RuncManager().stop_at_once(ctx.flags, ctx.bundle, ctx.log) is None

        status = await RuncManager().stop(ctx)
        assert (status.pid, status.exit_status) == (pid, 137)
        listing = await reaper.run([*root_args, "list", "-q"])
        assert listing.stdout.strip() == b""
        assert not _is_mounted(bundle / "rootfs")
        with trio.fail_after(10):
            exit_ = await reaper.wait_for(pid)  # the init was killed (and is reaped here)
        assert exit_.status == 137

        # a second run, with every file gone, still succeeds
        for name in ("options.json", "runtime", "init.pid"):
            (bundle / name).unlink()
        status = await RuncManager().stop(_stop_ctx(bundle, reaper, "c1"))
        assert (status.pid, status.exit_status) == (0, 137)
    finally:
        await reaper.run([*root_args, "delete", "--force", "c1"])
        await unmount_all(str(bundle / "rootfs"))


def test_stop_at_once_answers_a_bundle_its_daemon_cleaned_up(tmp_path: Path) -> None:
    bundle = tmp_path / "c1"
    bundle.mkdir()
    (bundle / "rootfs").mkdir()
    runc_root = tmp_path / "runc-root"
    write_bundle_files(str(bundle), oci_pb2.Options(root=str(runc_root)))
    (bundle / "init.pid").write_text("4242")
    flags = Flags(namespace="ns", id="c1", bundle=str(bundle), action="delete")
    log = logging.getLogger("test.delete")
    status = RuncManager().stop_at_once(flags, str(bundle), log)
    assert status is not None
    assert (status.pid, status.exit_status) == (4242, 137)

    # runc still has state for it (a daemon that was killed): stop() must run runc delete
    (runc_root / "ns" / "c1").mkdir(parents=True)
    assert RuncManager().stop_at_once(flags, str(bundle), log) is None
    shutil.rmtree(runc_root)

    # options it cannot read: stop() reads them again and says why
    (bundle / "options.json").write_text("{not json")
    assert RuncManager().stop_at_once(flags, str(bundle), log) is None


def test_delete_action_of_a_cleaned_up_bundle_runs_no_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "done"
    bundle.mkdir()
    write_bundle_files(str(bundle), oci_pb2.Options(root=str(tmp_path / "runc-root")))
    (bundle / "init.pid").write_text("77")
    reply = delete_without_event_loop(RuncManager(), bundle, monkeypatch)
    assert (reply.pid, reply.exit_status) == (77, 137)


@needs_root
def test_delete_action_output_is_a_delete_response(tmp_path: Path) -> None:
    bundle = tmp_path / "gone"
    bundle.mkdir()
    out = io.BytesIO()
    err = io.BytesIO()
    rc = shim_run(
        RuncManager(),
        ["-namespace", "ns", "-id", "gone", "-bundle", str(bundle), "delete"],
        runc_main.registry(),
        stdin=io.BytesIO(b""),
        stdout=out,
        stderr=err,
    )
    assert rc == 0, err.getvalue()
    reply = shim_pb2.DeleteResponse.FromString(out.getvalue())
    assert (reply.pid, reply.exit_status) == (0, 137)
    assert reply.exited_at.seconds > 0


def test_a_subclass_with_its_own_stop_has_it_run_by_the_delete_action(tmp_path: Path) -> None:
    """RuncManager's answer at once stands for RuncManager.stop only: a subclass that cleans
    up more in its own stop() gets it run, even for a bundle RuncManager would answer."""
    cls, ran = with_own_stop(RuncManager)
    bundle = tmp_path / "done"
    bundle.mkdir()
    write_bundle_files(str(bundle), oci_pb2.Options(root=str(tmp_path / "runc-root")))
    (bundle / "init.pid").write_text("77")
    assert run_delete(cls(), bundle).pid == 77
    assert ran == ["done"]
