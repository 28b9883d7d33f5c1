"""The kit's state rules in runc's words, and what runc's process objects refuse themselves,
driven without runc."""

from __future__ import annotations

import pytest

from trioshim.runc import init_process
from trioshim.runc.exec_process import ExecProcess
from trioshim.runc.init_process import InitProcess
from trioshim.runc.runc_args import CheckpointOpts
from trioshim.runc.runc_cli import Runc
from trioshim.runc.states import RuncRefusals
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.shim.reaper import Reaper
from trioshim.task.errors import TaskError
from trioshim.task.process import Action, Process, State
from trioshim.task.stdio import StdioSpec
from trioshim.ttrpc.errors import Code

OK = None
UNK = Code.UNKNOWN
NF = Code.NOT_FOUND

# (is the init, the kit's state) x operation: the error (code, message)
# containerd-shim-runc-v2 v1.6 gives, or OK. The kit decides what is allowed; RuncRefusals
# words the refusals. (An init created from a checkpoint refuses Exec, an exec whose `runc
# exec` failed a second Start, an exec that never ran Kill, a stopped one resizing: those are
# the process objects', tested below.)
TABLE: dict[tuple[bool, State], dict[Action, tuple[int, str] | None]] = {
    (True, State.CREATED): {
        Action.START: OK,
        Action.DELETE: OK,
        Action.KILL: OK,
        Action.PAUSE: (UNK, "cannot pause task in created state"),
        Action.RESUME: (UNK, "cannot resume task in created state"),
        Action.UPDATE: OK,
        Action.CHECKPOINT: (UNK, "cannot checkpoint a task in created state"),
        Action.EXEC: OK,
    },
    (True, State.RUNNING): {
        Action.START: (UNK, "cannot start a running process"),
        Action.DELETE: (UNK, "cannot delete a running process"),
        Action.KILL: OK,
        Action.PAUSE: OK,
        Action.RESUME: (UNK, "cannot resume a running process"),
        Action.UPDATE: OK,
        Action.CHECKPOINT: OK,
        Action.EXEC: OK,
    },
    (True, State.PAUSED): {
        Action.START: (UNK, "cannot start a paused process"),
        Action.DELETE: (UNK, "cannot delete a paused process"),
        Action.KILL: OK,
        Action.PAUSE: (UNK, "cannot pause a paused container"),
        Action.RESUME: OK,
        Action.UPDATE: OK,
        Action.CHECKPOINT: OK,
        Action.EXEC: (UNK, "cannot exec in a paused state"),
    },
    (True, State.STOPPED): {
        Action.START: (UNK, "cannot start a stopped process"),
        Action.DELETE: OK,
        # containerd's shim asks runc, whose "container not running" gives the same answer
        Action.KILL: (NF, "process already finished: not found"),
        Action.PAUSE: (UNK, "cannot pause a stopped container"),
        Action.RESUME: (UNK, "cannot resume a stopped container"),
        Action.UPDATE: (UNK, "cannot update a stopped container"),
        Action.CHECKPOINT: (UNK, "cannot checkpoint a stopped container"),
        Action.EXEC: (UNK, "cannot exec in a stopped state"),
    },
    (True, State.DELETED): {
        Action.START: (UNK, "cannot start a deleted process"),
        Action.DELETE: (NF, "cannot delete a deleted process: not found"),
        Action.KILL: (NF, "cannot kill a deleted process: not found"),
        Action.PAUSE: (UNK, "cannot pause a deleted process"),
        Action.RESUME: (UNK, "cannot resume a deleted process"),
        Action.UPDATE: (UNK, "cannot update a deleted process"),
        Action.CHECKPOINT: (UNK, "cannot checkpoint a deleted process"),
        Action.EXEC: (UNK, "cannot exec in a deleted state"),
    },
    (False, State.CREATED): {
        Action.START: OK,
        Action.DELETE: OK,
        Action.KILL: OK,  # the exec refuses it itself (test_exec_kill_guards)
    },
    (False, State.RUNNING): {
        Action.START: (UNK, "cannot start a running process"),
        Action.DELETE: (UNK, "cannot delete a running process"),
        Action.KILL: OK,
    },
    (False, State.STOPPED): {
        Action.START: (UNK, "cannot start a stopped process"),
        Action.DELETE: OK,
        Action.KILL: (NF, "process already finished: not found"),
    },
    (False, State.DELETED): {
        Action.START: (UNK, "cannot start a deleted process"),
        Action.DELETE: (NF, "cannot delete a deleted process: not found"),
        Action.KILL: (NF, "cannot kill a deleted process: not found"),
    },
}

_CHECKS = {
    Action.START: Process.check_start,
    Action.DELETE: Process.check_delete,
    Action.KILL: Process.check_kill,
    Action.PAUSE: Process.check_pause,
    Action.RESUME: Process.check_resume,
    Action.UPDATE: Process.check_update,
    Action.CHECKPOINT: Process.check_checkpoint,
    Action.EXEC: Process.check_exec,
}


def test_operation_state_table() -> None:
    for (is_init, state), row in TABLE.items():
        exec_id = "" if is_init else "e1"
        process = Process("c1", exec_id, None, StdioSpec(), refusals=RuncRefusals())  # type: ignore[arg-type]
        process.state = state
        for action, expected in row.items():
            if expected is None:
                _CHECKS[action](process)
                continue
            with pytest.raises(TaskError) as info:
                _CHECKS[action](process)
            assert (info.value.code, str(info.value)) == expected, (is_init, state, action)


def _init() -> InitProcess:
    runc = Runc.for_container(Reaper(), bundle="/b/c1", namespace="default")
    return InitProcess("c1", "/b/c1", runc, StdioConfig(stdout="/fifo/out"))


def _exec(init: InitProcess, exec_id: str = "e1") -> ExecProcess:
    return ExecProcess(exec_id, init, {"args": ["true"]}, StdioConfig(terminal=True))


def test_second_exit_is_ignored() -> None:
    init = _init()
    assert init.set_exited(3, 10)
    assert not init.set_exited(9, 20)
    assert (init.exit_status, init.exited_at_ns) == (3, 10)


def test_exec_spec_terminal_forced() -> None:
    init = _init()
    exe = ExecProcess("e1", init, {"args": ["sh"], "terminal": False}, StdioConfig(terminal=True))
    assert exe.spec == {"args": ["sh"], "terminal": True}
    assert exe.pid_file == "/b/c1/e1.pid"
    assert exe.container_id == "c1"
    assert init.pid_file == "/b/c1/init.pid"


async def test_a_failed_exec_start_is_not_retried() -> None:
    exe = _exec(_init())
    exe.start_failed = True
    with pytest.raises(TaskError, match=r"^cannot start an exec process whose start failed$"):
        await exe.start(None)  # type: ignore[arg-type]


def test_an_init_being_restored_refuses_execs() -> None:
    init = _init()
    init.check_exec()
    init._restore = CheckpointOpts(image_path="/ck")
    with pytest.raises(TaskError, match=r"^cannot exec in a created state$"):
        init.check_exec()


def test_kill_error_mapping() -> None:
    cases = {
        "runc did not terminate successfully: exit status 1: container not running": (
            NF,
            "process already finished: not found",
        ),
        "os: process already finished": (NF, "process already finished: not found"),
        "No Such Process": (NF, "process already finished: not found"),
        "container does not exist": (NF, "no such container: not found"),
        "boom": (UNK, "unknown error after kill: boom"),
    }
    for text, expected in cases.items():
        err = init_process.kill_error(text)
        assert (err.code, str(err)) == expected


async def test_exec_kill_guards() -> None:
    init = _init()
    exe = _exec(init)
    with pytest.raises(TaskError, match="process not created: failed precondition"):
        await exe.kill(9)
    exe.start_failed = True
    with pytest.raises(TaskError, match="process not created: failed precondition"):
        await exe.kill(9)  # its runc exec failed: it never ran
    exe.pid = 123456789
    exe.set_exited(0, 1)
    with pytest.raises(TaskError, match="process already finished: not found"):
        await exe.kill(9)


async def test_exec_delete_is_immediate_and_removes_pid_file(tmp_path: object) -> None:
    init = _init()
    exe = _exec(init)
    await exe.delete()  # a second Delete is the kit's to refuse (the table above)
    assert exe.io is None


def test_resize_without_console_is_a_noop() -> None:
    init = _init()
    init.resize(80, 24)
    exe = _exec(init)
    exe.resize(80, 24)
    exe.set_exited(0, 1)
    with pytest.raises(TaskError, match="cannot resize a stopped container"):
        exe.resize(80, 24)


def test_refusals_of_lookups_and_of_an_exec_start_after_the_init() -> None:
    refusals = RuncRefusals()
    init = Process("c1", "", None, StdioSpec())  # type: ignore[arg-type]
    init.state = State.STOPPED
    err = refusals.refuse(Action.START_EXEC, init)
    assert err.code == Code.FAILED_PRECONDITION
    assert str(err) == "container c1 init process is not running: failed precondition"
    assert str(refusals.no_container("c9")) == "container not created: not found"
    assert str(refusals.no_exec("c1", "e9")) == "process does not exist e9: not found"
