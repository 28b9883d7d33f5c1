"""SIGUSR1: dump every Trio task (with its await stack) and every thread's stack to the log.

The Go shim logs one info record ``=== BEGIN goroutine stack dump ===\\n...\\n=== END
goroutine stack dump ===``; we keep the markers (tools grep for them) and put the Trio task tree
plus ``faulthandler``'s thread dump between them.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import tempfile
from typing import Final

import trio

__all__ = ["BEGIN", "END", "dump_stacks", "format_task_tree", "serve_stack_dumps"]

BEGIN: Final = "=== BEGIN goroutine stack dump ==="
END: Final = "=== END goroutine stack dump ==="


def _format_task(task: trio.lowlevel.Task, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    out.append(f"{pad}task {task.name}")
    for frame, lineno in task.iter_await_frames():
        code = frame.f_code
        out.append(f"{pad}    {code.co_filename}:{lineno} in {code.co_name}")
    for nursery in task.child_nurseries:
        for child in sorted(nursery.child_tasks, key=lambda t: t.name):
            _format_task(child, depth + 1, out)


def format_task_tree() -> str:
    """Every task of the current Trio run, indented by nursery, innermost await frame last."""
    out: list[str] = ["trio tasks:"]
    _format_task(trio.lowlevel.current_root_task(), 1, out)  # type: ignore[arg-type]
    return "\n".join(out)


def _thread_stacks() -> str:
    with tempfile.TemporaryFile() as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        return f.read().decode(errors="replace")


def dump_stacks(log: logging.Logger) -> str:
    """Log (at info) and return the dump; call it from inside the Trio run."""
    text = f"{BEGIN}\n{format_task_tree()}\nthreads:\n{_thread_stacks()}\n{END}"
    log.info(text)
    return text


async def serve_stack_dumps(
    log: logging.Logger, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Dump on every SIGUSR1 until cancelled."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        task_status.started()
        async for _ in signals:
            dump_stacks(log)
