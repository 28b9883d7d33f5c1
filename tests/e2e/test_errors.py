"""Bad input: a clear error with the right code, never a hang, never a dead shim.

ctr prints containerd's errdefs classes as message suffixes (`: not found`, `: already exists`,
`: failed precondition`, `: unknown`), or for `ctr shim` the raw `rpc error: code = ...`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.containerd import default_path, venv_bin_dir
from tests.support.containerd_lines import ContainerdLine
from tests.support.line_containerd import LineContainerd

from .helpers import E2E, wait_for


def _set_cwd(spec: dict[str, Any]) -> None:
    spec["process"]["cwd"] = "relative/dir"


def _no_args(spec: dict[str, Any]) -> None:
    spec["process"]["args"] = []


def _bad_namespace(spec: dict[str, Any]) -> None:
    spec["linux"]["namespaces"].append({"type": "bogus"})


def _bad_mount(spec: dict[str, Any]) -> None:
    spec["mounts"].append(
        {"destination": "/mnt", "type": "bind", "source": "/nonexistent/x", "options": ["rbind"]}
    )


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_set_cwd, "Cwd must be an absolute path"),
        (_no_args, "args must not be empty"),
        (_bad_namespace, "bogus"),
        (_bad_mount, "/nonexistent/x"),
    ],
    ids=["relative-cwd", "no-args", "bad-namespace", "bad-mount"],
)
def test_invalid_config_json(
    e2e: E2E, tmp_path: Path, breakage: Callable[[dict[str, Any]], None], message: str
) -> None:
    cid = e2e.new_id()
    spec = e2e.spec(cid, ["/bin/echo", "never"])
    breakage(spec)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(spec))
    t0 = time.monotonic()
    r = e2e.ctr("run", "--rm", "--runtime", e2e.runtime, "--config", str(path), cid, timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.returncode != 0
    assert r.stdout == ""
    assert "OCI runtime create failed" in r.stderr, r.stderr
    assert message in r.stderr, r.stderr
    if e2e.major < 2:  # 1.x's errdefs suffix; 2.x prints the shim's message alone
        assert r.stderr.rstrip().endswith(": unknown"), r.stderr
    assert cid not in e2e.tasks()
    # --rm removed the container after the failure.
    assert cid not in e2e.ctr("container", "ls", "-q").stdout.split()


def _path_without(tmp_path: Path, excluded: str, line: ContainerdLine) -> str:
    """A PATH with everything of the usual PATH except `excluded` (Debian ships runc both in
    /usr/sbin and as a /usr/bin symlink): the venv's bin, then one dir of symlinks (the line's
    own bin dir first, for its containerd-shim-runc-v2)."""
    farm = tmp_path / "bin"
    farm.mkdir()
    for d in [line.bin_dir, *default_path().split(":")[1:]]:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            if name != excluded and not (farm / name).exists() and os.access(target, os.X_OK):
                (farm / name).symlink_to(target)
    path = f"{venv_bin_dir()}:{farm}"
    assert shutil.which(excluded, path=path) is None
    return path


def test_runc_missing(
    busybox_rootfs: Path,
    runtime: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_containerd: Callable[..., LineContainerd],
    containerd_line: ContainerdLine,
) -> None:
    with make_containerd(path=_path_without(tmp_path, "runc", containerd_line)) as daemon:
        e2e = E2E(daemon, busybox_rootfs, runtime, request.node.name)
        cid = e2e.new_id()
        t0 = time.monotonic()
        r = e2e.run("/bin/echo", "never", cid=cid)
        assert time.monotonic() - t0 < 30
        assert r.returncode != 0
        assert "OCI runtime create failed" in r.stderr, r.stderr
        assert "runc" in r.stderr and "executable file not found" in r.stderr, r.stderr
        assert cid not in e2e.tasks()
        e2e.ctr("container", "delete", cid)
        wait_for(lambda: not e2e.leftovers(), what=f"clean up ({e2e.leftovers()})")
        assert daemon.stop() == []


def test_start_twice(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    pid = e2e.tasks()[cid][0]
    # Through containerd: the task exists already.
    r = e2e.ctr("task", "start", cid)
    assert r.returncode != 0
    assert "already exists" in r.stderr, r.stderr
    # Straight to the shim: Start on a running init.
    r = e2e.ctr("shim", "--id", cid, "start", cid, timeout=30)
    assert r.returncode != 0
    assert "running" in r.stderr, r.stderr
    assert "code = Unknown" in r.stderr or "code = FailedPrecondition" in r.stderr, r.stderr
    # The shim is unharmed.
    assert e2e.tasks()[cid] == (pid, "RUNNING")
    r = e2e.ctr("shim", "--id", cid, "state", timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pid"] == pid
    # Start after the task stopped is refused as well.
    r = e2e.ctr("task", "kill", "-s", "SIGKILL", cid)
    assert r.returncode == 0, r.stderr
    e2e.wait_status(cid, "STOPPED")
    r = e2e.ctr("shim", "--id", cid, "start", cid, timeout=30)
    assert r.returncode != 0
    assert "stopped" in r.stderr, r.stderr
    assert e2e.delete_task(cid) == 137
    assert e2e.ctr("container", "delete", cid).returncode == 0


def test_delete_while_running(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    pid = e2e.tasks()[cid][0]
    r = e2e.ctr("task", "delete", cid, timeout=30)
    assert r.returncode != 0
    assert "failed precondition" in r.stderr, r.stderr
    assert e2e.tasks()[cid] == (pid, "RUNNING")
    # An exec still running cannot be deleted either.
    r = e2e.exec(cid, "/bin/sleep", "1000", exec_id="busy", opts=("-d",))
    assert r.returncode == 0, r.stderr
    r = e2e.ctr("task", "delete", "--exec-id", "busy", cid, timeout=30)
    assert r.returncode != 0
    assert "failed precondition" in r.stderr, r.stderr
    assert e2e.kill_and_delete(cid) == 137


def test_exec_into_stopped_task(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    r = e2e.ctr("task", "kill", "-s", "SIGKILL", cid)
    assert r.returncode == 0, r.stderr
    e2e.wait_status(cid, "STOPPED")
    r = e2e.exec(cid, "/bin/true", exec_id="late", timeout=30)
    assert r.returncode != 0
    assert "stopped" in r.stderr, r.stderr
    # Killing a finished init: NotFound.
    r = e2e.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=30)
    assert r.returncode != 0
    assert "not found" in r.stderr, r.stderr
    assert e2e.delete_task(cid) == 137
    assert e2e.ctr("container", "delete", cid).returncode == 0


def test_exec_with_bad_binary(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    r = e2e.exec(cid, "/bin/does-not-exist", exec_id="bad", timeout=30)
    assert r.returncode != 0
    assert "OCI runtime exec failed" in r.stderr, r.stderr
    assert "/bin/does-not-exist" in r.stderr, r.stderr
    # The container and the shim are fine afterwards.
    r = e2e.exec(cid, "/bin/echo", "still-here", exec_id="good")
    assert (r.returncode, r.stdout) == (0, "still-here\n"), r.stderr
    assert e2e.kill_and_delete(cid) == 137


def test_unknown_ids(e2e: E2E) -> None:
    # Unknown container: containerd answers before any shim is involved.
    for args in (
        ("task", "kill", "nosuch"),
        ("task", "delete", "nosuch"),
        ("task", "ps", "nosuch"),
        ("task", "pause", "nosuch"),
        ("task", "metrics", "nosuch"),
        ("task", "exec", "--exec-id", "x", "nosuch", "/bin/true"),
    ):
        r = e2e.ctr(*args, timeout=30)
        assert r.returncode != 0, args
        assert "not found" in r.stderr, (args, r.stderr)

    cid = e2e.run_detached("/bin/sleep", "1000")
    # Unknown exec ids reach the shim: NotFound.
    r = e2e.ctr("task", "kill", "--exec-id", "nosuch", cid, timeout=30)
    assert r.returncode != 0
    assert "process does not exist nosuch: not found" in r.stderr, r.stderr
    r = e2e.ctr("task", "delete", "--exec-id", "nosuch", cid, timeout=30)
    assert r.returncode != 0
    assert "not found" in r.stderr, r.stderr
    # An unknown container id on the shim's own socket: NotFound.
    r = e2e.ctr("shim", "--id", cid, "start", "nosuch", timeout=30)
    assert r.returncode != 0
    assert "code = NotFound" in r.stderr, r.stderr
    # A duplicate exec id: AlreadyExists.
    r = e2e.exec(cid, "/bin/sleep", "1000", exec_id="dup", opts=("-d",))
    assert r.returncode == 0, r.stderr
    r = e2e.exec(cid, "/bin/true", exec_id="dup", timeout=30)
    assert r.returncode != 0
    assert "already exists" in r.stderr, r.stderr
    # Still serving.
    r = e2e.exec(cid, "/bin/echo", "ok", exec_id="after")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    assert e2e.kill_and_delete(cid) == 137
