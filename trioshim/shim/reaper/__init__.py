"""The reaper: the one place in the process that waits for children.

A shim is a *subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): a container's init, started by
``runc`` which then exits, is reparented to the shim, so its exit reaches us as SIGCHLD although
we never spawned it. One task owns ``waitid(P_ALL, WEXITED | WNOHANG)``, driven by SIGCHLD, and
dispatches every status:

- to the :class:`Child` handle when we spawned the pid (the status is kept on the handle, so a
  child that exits before anyone awaits it is never lost);
- to every :meth:`Reaper.subscribe` channel (all exits, ours and reparented ones);
- to :meth:`Reaper.wait_for` callers for pids we did not spawn; an unclaimed exit of such a pid
  is *parked* (bounded) so a caller that learns the pid late (from a pid file) still finds it.

Nothing else may wait for children: no ``trio.run_process``, no ``subprocess`` waiting (CPython's
``Popen`` turns a status stolen by another waiter into exit code 0 silently). Children are spawned
synchronously by :meth:`Reaper.spawn` and registered before the caller reaches a checkpoint, so
the reaper task (which only runs at checkpoints) can never reap an unregistered pid of ours.

One job per module: ``core`` (the :class:`Reaper`), ``child`` (what it hands out), ``spawn``
(process creation), ``subreaper`` (the prctl).

Resource handling: a :class:`Child` made with ``PIPE`` owns the parent's pipe ends as
``trio.lowlevel.FdStream`` objects; the caller closes them (``Reaper.run`` does it for you).
Temporary descriptors used to pass fds are closed before ``spawn`` returns.
"""

from trioshim.shim.reaper.child import Child, Completed, Exit, ProcessFailed
from trioshim.shim.reaper.core import Reaper, open_reaper
from trioshim.shim.reaper.spawn import DEVNULL, PIPE
from trioshim.shim.reaper.subreaper import is_child_subreaper, set_child_subreaper

__all__ = [
    "DEVNULL",
    "PIPE",
    "Child",
    "Completed",
    "Exit",
    "ProcessFailed",
    "Reaper",
    "is_child_subreaper",
    "open_reaper",
    "set_child_subreaper",
]
