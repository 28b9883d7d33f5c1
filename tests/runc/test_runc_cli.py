"""runc command lines (as go-runc builds them) and log.json error surfacing."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from trioshim.runc import runc_args, runc_cli, runc_errors
from trioshim.runc.runc_args import CheckpointOpts
from trioshim.runc.runc_cli import Runc
from trioshim.runc.runc_errors import RuncError
from trioshim.shim.reaper import Reaper, open_reaper


def _runc(**kwargs: Any) -> Runc:
    # Building command lines needs no running reaper.
    return Runc.for_container(Reaper(), bundle="/b/c1", namespace="default", **kwargs)


# --- global arguments -------------------------------------------------------------------------


def test_global_args_default() -> None:
    r = _runc()
    assert r.command(["start", "c1"]) == [
        "runc",
        "--root",
        "/run/containerd/runc/default",
        "--log",
        "/b/c1/log.json",
        "--log-format",
        "json",
        "start",
        "c1",
    ]


def test_global_args_all_options() -> None:
    r = _runc(binary="/opt/runc", root="/r", criu="/usr/bin/criu", systemd_cgroup=True)
    assert r.global_args() == [
        "--root",
        "/r/default",
        "--log",
        "/b/c1/log.json",
        "--log-format",
        "json",
        "--criu",
        "/usr/bin/criu",
        "--systemd-cgroup",
    ]
    assert r.binary == "/opt/runc"


def test_environment_drops_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("KEEP_ME", "1")
    r = _runc()
    assert r.env is None  # read at each spawn, not copied per container
    assert "NOTIFY_SOCKET" not in r.environment()
    assert r.environment()["KEEP_ME"] == "1"


# --- subcommands ------------------------------------------------------------------------------


def test_create_args() -> None:
    assert runc_args.create_args("c1", "/b/c1", pid_file="/b/c1/init.pid") == [
        "create",
        "--bundle",
        "/b/c1",
        "--pid-file",
        "/b/c1/init.pid",
        "c1",
    ]
    assert runc_args.create_args(
        "c1",
        "/b/c1",
        pid_file="/b/c1/init.pid",
        console_socket="/tmp/pty1/pty.sock",
        no_pivot=True,
        no_new_keyring=True,
    ) == [
        "create",
        "--bundle",
        "/b/c1",
        "--pid-file",
        "/b/c1/init.pid",
        "--console-socket",
        "/tmp/pty1/pty.sock",
        "--no-pivot",
        "--no-new-keyring",
        "c1",
    ]


def test_pid_file_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = runc_args.create_args("c1", str(tmp_path), pid_file="init.pid")
    assert args[args.index("--pid-file") + 1] == str(tmp_path / "init.pid")


def test_exec_args() -> None:
    assert runc_args.exec_args(
        "c1", process_file="/tmp/runc-process1", pid_file="/b/c1/e1.pid"
    ) == [
        "exec",
        "--process",
        "/tmp/runc-process1",
        "--detach",
        "--pid-file",
        "/b/c1/e1.pid",
        "c1",
    ]
    assert runc_args.exec_args(
        "c1", process_file="/tmp/p", pid_file="/b/e.pid", console_socket="/tmp/s"
    ) == [
        "exec",
        "--process",
        "/tmp/p",
        "--console-socket",
        "/tmp/s",
        "--detach",
        "--pid-file",
        "/b/e.pid",
        "c1",
    ]


def test_kill_delete_pause_resume_ps_update() -> None:
    assert runc_args.kill_args("c1", 15) == ["kill", "c1", "15"]
    assert runc_args.kill_args("c1", 9, all=True) == ["kill", "--all", "c1", "9"]
    assert runc_args.delete_args("c1") == ["delete", "c1"]
    assert runc_args.delete_args("c1", force=True) == ["delete", "--force", "c1"]
    assert runc_args.pause_args("c1") == ["pause", "c1"]
    assert runc_args.resume_args("c1") == ["resume", "c1"]
    assert runc_args.start_args("c1") == ["start", "c1"]
    assert runc_args.ps_args("c1") == ["ps", "--format", "json", "c1"]
    assert runc_args.update_args("c1") == ["update", "--resources", "-", "c1"]


def test_checkpoint_args() -> None:
    assert runc_args.checkpoint_args(
        "c1", CheckpointOpts(image_path="/img", work_path="/b/work/criu-work"), leave_running=True
    ) == [
        "checkpoint",
        "--image-path",
        "/img",
        "--work-path",
        "/b/work/criu-work",
        "--leave-running",
        "c1",
    ]
    opts = CheckpointOpts(
        image_path="/img",
        work_path="/w",
        tcp_established=True,
        ext_unix_sk=True,
        shell_job=True,
        file_locks=True,
        empty_namespaces=("network", "ipc"),
        cgroups_mode="soft",
    )
    assert runc_args.checkpoint_args("c1", opts) == [
        "checkpoint",
        "--image-path",
        "/img",
        "--work-path",
        "/w",
        "--tcp-established",
        "--ext-unix-sk",
        "--shell-job",
        "--file-locks",
        "--manage-cgroups-mode",
        "soft",
        "--empty-ns",
        "network",
        "--empty-ns",
        "ipc",
        "c1",
    ]


def test_restore_args() -> None:
    opts = CheckpointOpts(image_path="/img", work_path="/b/work", parent_path="/parent")
    assert runc_args.restore_args(
        "c1",
        "/b/c1",
        opts,
        pid_file="/b/c1/init.pid",
        console_socket="/tmp/s",
        no_pivot=True,
    ) == [
        "restore",
        "--image-path",
        "/img",
        "--work-path",
        "/b/work",
        "--parent-path",
        "/parent",
        "--detach",
        "--pid-file",
        "/b/c1/init.pid",
        "--console-socket",
        "/tmp/s",
        "--no-pivot",
        "-no-subreaper",
        "--bundle",
        "/b/c1",
        "c1",
    ]


# --- log.json ---------------------------------------------------------------------------------


def _log(path: Path, *entries: object, raw: str = "") -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + raw)
    return str(path)


def test_last_runtime_error_picks_last_error(tmp_path: Path) -> None:
    log = _log(
        tmp_path / "log.json",
        {"level": "error", "msg": "first", "time": "2023-01-01T00:00:00Z"},
        {"level": "warning", "msg": "meh", "time": "2023-01-01T00:00:01Z"},
        {"level": "error", "msg": "  container does not exist \n", "time": "2023-01-01T00:00:02Z"},
        {"level": "info", "msg": "later", "time": "2023-01-01T00:00:03Z"},
    )
    assert runc_errors.last_runtime_error(log) == "container does not exist"


def test_last_runtime_error_stream_without_newlines(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    log.write_text('{"level":"error","msg":"a"}{"level":"error","msg":"b"}  ')
    assert runc_errors.last_runtime_error(str(log)) == "b"


def test_last_runtime_error_empty_and_no_error(tmp_path: Path) -> None:
    assert runc_errors.last_runtime_error(_log(tmp_path / "empty.json")) == ""
    log = _log(tmp_path / "info.json", {"level": "info", "msg": "fine"})
    assert runc_errors.last_runtime_error(log) == ""


def test_runtime_error_wrapping(tmp_path: Path) -> None:
    err = RuncError("runc did not terminate successfully: exit status 1")
    log = _log(
        tmp_path / "log.json", {"level": "error", "msg": "container with given ID already exists"}
    )
    assert (
        runc_errors.runtime_error(log, "OCI runtime create failed", err)
        == "OCI runtime create failed: container with given ID already exists"
    )
    quiet = _log(tmp_path / "quiet.json", {"level": "debug", "msg": "x"})
    assert (
        runc_errors.runtime_error(quiet, "OCI runtime start failed", err)
        == "OCI runtime start failed: runc did not terminate successfully: exit status 1"
    )
    missing = str(tmp_path / "missing.json")
    assert runc_errors.runtime_error(missing, "OCI runtime create failed", err) == (
        "OCI runtime create failed: unable to retrieve OCI runtime error "
        f"(open {missing}: no such file or directory): "
        "runc did not terminate successfully: exit status 1"
    )
    broken = _log(tmp_path / "broken.json", {"level": "error", "msg": "x"}, raw="{not json")
    text = runc_errors.runtime_error(broken, "failed to delete task", err)
    assert text.startswith("failed to delete task: unable to retrieve OCI runtime error (")
    assert text.endswith("): runc did not terminate successfully: exit status 1")


def test_read_pid_file(tmp_path: Path) -> None:
    (tmp_path / "init.pid").write_text("4242")
    assert runc_cli.read_pid_file(str(tmp_path / "init.pid")) == 4242
    (tmp_path / "bad.pid").write_text("")
    with pytest.raises(ValueError, match="invalid syntax"):
        runc_cli.read_pid_file(str(tmp_path / "bad.pid"))


# --- real runc ---------------------------------------------------------------------------------

needs_runc = pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    async with open_reaper() as r:
        yield r


@needs_runc
async def test_real_runc_version_and_list(reaper: Reaper, tmp_path: Path) -> None:
    r = Runc.for_container(
        reaper, bundle=str(tmp_path), namespace="ns", root=str(tmp_path / "root")
    )
    assert (await r.version()).startswith("runc version ")
    assert await r.list_containers() == []


@needs_runc
async def test_real_runc_error_comes_from_log_json(reaper: Reaper, tmp_path: Path) -> None:
    r = Runc.for_container(
        reaper, bundle=str(tmp_path), namespace="ns", root=str(tmp_path / "root")
    )
    with pytest.raises(RuncError) as info:
        await r.start("nosuch")
    assert str(info.value).startswith("runc did not terminate successfully: exit status 1: ")
    assert r.runtime_error("OCI runtime start failed", info.value) == (
        "OCI runtime start failed: container does not exist"
    )
    # kill maps the raw text, which carries runc's stderr
    with pytest.raises(RuncError, match="does not exist"):
        await r.kill("nosuch", 9)
    with pytest.raises(RuncError, match="exit status 1"):
        await r.ps("nosuch")


async def test_missing_binary(reaper: Reaper, tmp_path: Path) -> None:
    r = Runc.for_container(reaper, bundle=str(tmp_path), namespace="ns", binary="no-such-runc")
    with pytest.raises(RuncError) as info:
        await r.start("c1")
    assert str(info.value) == 'exec: "no-such-runc": executable file not found in $PATH'
    assert r.runtime_error("OCI runtime create failed", info.value) == (
        "OCI runtime create failed: unable to retrieve OCI runtime error "
        f"(open {tmp_path}/log.json: no such file or directory): "
        'exec: "no-such-runc": executable file not found in $PATH'
    )
