"""The init and exec state machines, driven without runc."""

from __future__ import annotations

import pytest

from trioshim.runc import init_process, states
from trioshim.runc.exec_process import ExecProcess
from trioshim.runc.init_process import InitProcess
from trioshim.runc.runc_cli import Runc
from trioshim.runc.stdio import StdioConfig
from trioshim.shim.reaper import Reaper
from trioshim.task.errors import TaskError
from trioshim.task.stdio import StdioSpec
from trioshim.ttrpc.errors import Code

OPS = (
    states.START,
    states.DELETE,
    states.KILL,
    states.PAUSE,
    states.RESUME,
    states.UPDATE,
    states.CHECKPOINT,
    states.EXEC,
)
OK = None

# Operation x state: the error (code, message) containerd-shim-runc-v2 v1.6 gives, or OK.
UNK = Code.UNKNOWN
NF = Code.NOT_FOUND
INIT_TABLE: dict[type[states.State], dict[str, tuple[int, str] | None]] = {
    states.InitCreated: {
        states.START: OK,
        states.DELETE: OK,
        states.KILL: OK,
        states.PAUSE: (UNK, "cannot pause task in created state"),
        states.RESUME: (UNK, "cannot resume task in created state"),
        states.UPDATE: OK,
        states.CHECKPOINT: (UNK, "cannot checkpoint a task in created state"),
        states.EXEC: OK,
    },
    states.InitCreatedCheckpoint: {
        states.START: OK,
        states.DELETE: OK,
        states.KILL: OK,
        states.PAUSE: (UNK, "cannot pause task in created state"),
        states.RESUME: (UNK, "cannot resume task in created state"),
        states.UPDATE: OK,
        states.CHECKPOINT: (UNK, "cannot checkpoint a task in created state"),
        states.EXEC: (UNK, "cannot exec in a created state"),
    },
    states.InitRunning: {
        states.START: (UNK, "cannot start a running process"),
        states.DELETE: (UNK, "cannot delete a running process"),
        states.KILL: OK,
        states.PAUSE: OK,
        states.RESUME: (UNK, "cannot resume a running process"),
        states.UPDATE: OK,
        states.CHECKPOINT: OK,
        states.EXEC: OK,
    },
    states.InitPaused: {
        states.START: (UNK, "cannot start a paused process"),
        states.DELETE: (UNK, "cannot delete a paused process"),
        states.KILL: OK,
        states.PAUSE: (UNK, "cannot pause a paused container"),
        states.RESUME: OK,
        states.UPDATE: OK,
        states.CHECKPOINT: OK,
        states.EXEC: (UNK, "cannot exec in a paused state"),
    },
    states.InitStopped: {
        states.START: (UNK, "cannot start a stopped process"),
        states.DELETE: OK,
        states.KILL: OK,
        states.PAUSE: (UNK, "cannot pause a stopped container"),
        states.RESUME: (UNK, "cannot resume a stopped container"),
        states.UPDATE: (UNK, "cannot update a stopped container"),
        states.CHECKPOINT: (UNK, "cannot checkpoint a stopped container"),
        states.EXEC: (UNK, "cannot exec in a stopped state"),
    },
    states.InitDeleted: {
        states.START: (UNK, "cannot start a deleted process"),
        states.DELETE: (NF, "cannot delete a deleted process: not found"),
        states.KILL: (NF, "cannot kill a deleted process: not found"),
        states.PAUSE: (UNK, "cannot pause a deleted process"),
        states.RESUME: (UNK, "cannot resume a deleted process"),
        states.UPDATE: (UNK, "cannot update a deleted process"),
        states.CHECKPOINT: (UNK, "cannot checkpoint a deleted process"),
        states.EXEC: (UNK, "cannot exec in a deleted state"),
    },
}

EXEC_TABLE: dict[type[states.State], dict[str, tuple[int, str] | None]] = {
    states.ExecCreated: {
        states.START: OK,
        states.DELETE: OK,
        states.KILL: (Code.FAILED_PRECONDITION, "process not created: failed precondition"),
        states.RESIZE: OK,
    },
    states.ExecRunning: {
        states.START: (UNK, "cannot start a running process"),
        states.DELETE: (UNK, "cannot delete a running process"),
        states.KILL: OK,
        states.RESIZE: OK,
    },
    states.ExecStopped: {
        states.START: (UNK, "cannot start a stopped process"),
        states.DELETE: OK,
        states.KILL: (NF, "process already finished: not found"),
        states.RESIZE: (UNK, "cannot resize a stopped container"),
    },
    states.ExecStartFailed: {
        states.START: (UNK, "cannot start an exec process whose start failed"),
        states.DELETE: OK,
        states.KILL: (Code.FAILED_PRECONDITION, "process not created: failed precondition"),
        states.RESIZE: OK,
    },
    states.ExecDeleted: {
        states.START: (UNK, "cannot start a deleted process"),
        states.DELETE: (NF, "cannot delete a deleted process: not found"),
        states.KILL: (NF, "cannot kill a deleted process: not found"),
        states.RESIZE: (UNK, "cannot resize a deleted process"),
    },
}


def _check_table(table: dict[type[states.State], dict[str, tuple[int, str] | None]]) -> None:
    for state_cls, row in table.items():
        state = state_cls()
        for op, expected in row.items():
            if expected is None:
                state.check(op)
                assert state.allows(op)
                continue
            with pytest.raises(TaskError) as info:
                state.check(op)
            assert (info.value.code, str(info.value)) == expected, (state_cls, op)
            assert not state.allows(op)


def test_init_operation_state_table() -> None:
    _check_table(INIT_TABLE)


def test_exec_operation_state_table() -> None:
    _check_table(EXEC_TABLE)


def test_status_strings() -> None:
    assert [s.status for s in INIT_TABLE] == [
        "created",
        "created",
        "running",
        "paused",
        "stopped",
        "stopped",
    ]
    assert [s.status for s in EXEC_TABLE] == [
        "created",
        "running",
        "stopped",
        "created",
        "stopped",
    ]


def _init() -> InitProcess:
    runc = Runc.for_container(Reaper(), bundle="/b/c1", namespace="default")
    return InitProcess("c1", "/b/c1", runc, StdioConfig(stdout="/fifo/out"))


def _exec(init: InitProcess, exec_id: str = "e1") -> ExecProcess:
    return ExecProcess(exec_id, init, {"args": ["true"]}, StdioConfig(terminal=True))


@pytest.mark.parametrize(
    ("state", "recorded"),
    [
        (states.InitCreated, True),
        (states.InitCreatedCheckpoint, True),
        (states.InitRunning, True),
        (states.InitPaused, True),
        (states.InitStopped, False),
        (states.InitDeleted, False),
    ],
)
def test_init_exit_by_state(state: type[states.State], recorded: bool) -> None:
    init = _init()
    init.state = state()
    assert init.set_exited(137, 1_700_000_000_000_000_000) is recorded
    if recorded:
        assert isinstance(init.state, states.InitStopped)
        assert (init.exit_status, init.exited_at_ns) == (137, 1_700_000_000_000_000_000)
        assert init.has_exited
    else:
        assert init.state.__class__ is state
        assert (init.exit_status, init.exited_at_ns) == (0, None)
        assert not init.has_exited


def test_second_exit_is_ignored() -> None:
    init = _init()
    init.state = states.InitRunning()
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


def test_exec_exit_by_state() -> None:
    init = _init()
    exe = _exec(init)
    assert exe.set_exited(1, 5)
    assert isinstance(exe.state, states.ExecStopped)
    for state in (states.ExecStopped, states.ExecDeleted, states.ExecStartFailed):
        other = _exec(init)
        other.state = state()
        assert not other.set_exited(1, 5)


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
    exe.state = states.ExecRunning()
    with pytest.raises(TaskError, match="process not created: failed precondition"):
        await exe.kill(9)  # running but pid unknown (0)
    exe.pid = 123456789
    exe.set_exited(0, 1)
    with pytest.raises(TaskError, match="process already finished: not found"):
        await exe.kill(9)


async def test_exec_delete_is_immediate_and_removes_pid_file(tmp_path: object) -> None:
    init = _init()
    exe = _exec(init)
    await exe.delete()
    assert isinstance(exe.state, states.ExecDeleted)
    with pytest.raises(TaskError, match="cannot delete a deleted process: not found"):
        await exe.delete()


def test_resize_without_console_is_a_noop() -> None:
    init = _init()
    init.resize(80, 24)
    exe = _exec(init)
    exe.resize(80, 24)
    exe.state = states.ExecStopped()
    with pytest.raises(TaskError, match="cannot resize a stopped container"):
        exe.resize(80, 24)


def test_kit_refusals_in_runc_words() -> None:
    """The kit's state refusals, as RuncRefusals words them: the tables above for the state
    the kit's state stands for (a created init refuses Exec as one made from a checkpoint
    does: the kit starts execs only in a running container), the kit's words elsewhere."""
    from trioshim.runc.states import RuncRefusals
    from trioshim.task.process import Action, Process, State

    refusals = RuncRefusals()
    init = Process("c1", "", None, StdioSpec())  # type: ignore[arg-type]
    exe = Process("c1", "e1", None, StdioSpec())  # type: ignore[arg-type]
    cases = [
        (init, State.RUNNING, Action.START, (UNK, "cannot start a running process")),
        (init, State.STOPPED, Action.START, (UNK, "cannot start a stopped process")),
        (init, State.PAUSED, Action.DELETE, (UNK, "cannot delete a paused process")),
        (init, State.CREATED, Action.PAUSE, (UNK, "cannot pause task in created state")),
        (init, State.CREATED, Action.EXEC, (UNK, "cannot exec in a created state")),
        (init, State.STOPPED, Action.EXEC, (UNK, "cannot exec in a stopped state")),
        (init, State.DELETED, Action.KILL, (NF, "cannot kill a deleted process: not found")),
        (init, State.STOPPED, Action.KILL, (NF, "process already finished: not found")),
        (exe, State.STOPPED, Action.KILL, (NF, "process already finished: not found")),
        (exe, State.RUNNING, Action.DELETE, (UNK, "cannot delete a running process")),
    ]
    for process, state, action, expected in cases:
        process.state = state
        err = refusals.refuse(action, process)
        assert (err.code, str(err)) == expected, (process.name, state, action)
    init.state = State.STOPPED
    err = refusals.refuse(Action.START_EXEC, init)
    assert err.code == Code.FAILED_PRECONDITION
    assert str(err) == "container c1 init process is not running: failed precondition"
    assert str(refusals.no_container("c9")) == "container not created: not found"
    assert str(refusals.no_exec("c1", "e9")) == "process does not exist e9: not found"
