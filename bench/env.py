"""The environment one benchmark run measures in.

:class:`BenchEnv` owns one temp dir (short, under /tmp), one private containerd with a
namespace unique to the run, a busybox rootfs, and (when ours is not installed on the PATH) a
generated ``containerd-shim-trioshim-v2`` launcher. It runs and removes containers for either
runtime and finds the shim processes that belong to this run; ``close()`` removes all of it
and kills every shim process that carries this containerd's address, whatever state the
benchmarks left things in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.procs import all_pids, pid_alive, proc_argv, proc_environ, wait_until
from bench.results import log, short_error
from bench.runtimes import (
    FORKSERVER_DIR_ENV,
    FORKSERVER_MODULE,
    OURS_BINARY,
    OURS_RUNTIME,
    REFERENCE_BINARY,
    REFERENCE_RUNTIME,
    SHARED_BINARY,
    SHARED_RUNTIME,
    Runtime,
    compile_tree,
    is_shared_process,
    ours_launcher,
)
from tests.support.containerd import ContainerdError, PrivateContainerd, default_path
from tests.support.containerd_layout import RUNC_ROOT
from tests.support.rootfs import build_busybox_rootfs


def _which(name: str, path: str) -> str | None:
    return shutil.which(name, path=path)


# What launcher/containerd-shim-trioshim-v2 (installed as a script, not a console script) runs.
class BenchEnv:
    """One private containerd, a busybox rootfs and the two runtimes, for one run."""

    def __init__(
        self,
        *,
        smoke_timeout: float = 30.0,
        log_level: str = "info",
        ours_binary: str | None = None,
        shared: bool = False,
    ) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="tsb", dir="/tmp"))
        self.bin_dir = self.base / "bin"
        self.smoke_timeout = smoke_timeout
        self.shared = shared
        self._n = 0
        path = default_path()
        self.reference = Runtime(
            "ref",
            "runc-v2 (Go)",
            REFERENCE_RUNTIME,
            REFERENCE_BINARY,
            "io.containerd.runc.v2.group",
            binary=_which(REFERENCE_BINARY, path),
        )
        self.ours = Runtime(
            "ours",
            "trioshim",
            OURS_RUNTIME,
            OURS_BINARY,
            "io.containerd.trioshim.v2.group",
            binary=_which(OURS_BINARY, path),
        )
        if shared:
            # Shared mode: one process per containerd serves every shim (installed only; for a
            # given build, its shared launcher, installed beside the one given).
            self.ours.label, self.ours.name = "trioshim-shared", SHARED_RUNTIME
            self.ours.binary_name = SHARED_BINARY
            if ours_binary is None:
                self.ours.binary = _which(SHARED_BINARY, path)
            else:
                given = Path(ours_binary).absolute().parent / SHARED_BINARY
                self.ours.binary = self._link(given) if given.exists() else None
                path = f"{self.bin_dir}:{path}"
            if self.ours.binary is None:
                self.ours.unavailable = f"{SHARED_BINARY} not found on {path}"
        elif ours_binary is not None:
            # A given build of ours, under the name containerd looks up.
            self.ours.binary = self._link(Path(ours_binary).absolute(), OURS_BINARY)
            path = f"{self.bin_dir}:{path}"
        if self.reference.binary is None:
            self.reference.unavailable = f"{REFERENCE_BINARY} not found on {path}"
        if self.ours.binary is None and not shared:
            self.ours.binary, self.ours.unavailable = ours_launcher(self.bin_dir)
            if self.ours.binary is not None:
                path = f"{self.bin_dir}:{path}"
        self.forkserver_dir = self.base / "fs"
        self.containerd = PrivateContainerd(
            base_dir=self.base / "c",
            path=path,
            log_level=log_level,
            # The shim's own default shared-mode idle time (the tests' containerd sets 0).
            env={FORKSERVER_DIR_ENV: str(self.forkserver_dir), "TRIOSHIM_SHARED_IDLE": ""},
        )
        self.rootfs: Path | None = None
        self.started = False

    def _link(self, target: Path, name: str | None = None) -> str:
        """``target`` in our ``bin`` directory (first on containerd's PATH) as ``name``."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        link = self.bin_dir / (name or target.name)
        link.symlink_to(target)
        return str(link)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        log(f"private containerd in {self.base} (namespace {self.containerd.namespace})")
        self.containerd.start()
        self.started = True
        self.rootfs = build_busybox_rootfs(self.base / "rootfs")

    def check_ours(self) -> None:
        """Smoke-test ours once (`ctr run --rm ... /bin/echo`) so that a shim that does not
        work yet fails every benchmark at once with its error instead of a timeout each."""
        rt = self.ours
        if rt.unavailable:
            log(f"ours unavailable: {rt.unavailable}")
            return
        compile_tree()
        cid = self.new_id(rt, "smoke")
        try:
            r = self.containerd.ctr(
                *self.run_argv(rt, cid, "/bin/echo", "trioshim-ok", rm=True),
                timeout=self.smoke_timeout,
            )
        except ContainerdError as exc:
            rt.unavailable = f"smoke test hung: {short_error(str(exc).splitlines()[0])}"
        else:
            if r.returncode != 0 or "trioshim-ok" not in r.stdout:
                rt.unavailable = f"smoke test failed (rc {r.returncode}): {short_error(r.stderr)}"
        if rt.unavailable:
            log(f"ours unavailable: {rt.unavailable}")
            self.reset(rt)
        else:
            log(f"ours works: {rt.binary}")

    def close(self) -> list[str]:
        """Remove everything; returns what had to be cleaned by force."""
        forced: list[str] = []
        self.stop_fork_servers()  # alive while containerd runs, by design: not a leftover
        if self.started:
            # Name what containerd's own clean-up will kill, before it does.
            for pid in self.containerd.shim_pids():
                forced.append(f"shim pid {pid}: {' '.join(proc_argv(pid))[:200]}")
            with contextlib.suppress(Exception):
                self.containerd.stop()
        for pid in self.shim_pids(None):
            forced.append(f"shim pid {pid} {' '.join(proc_argv(pid))[:120]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop_fork_servers()
        ns_root = RUNC_ROOT / self.containerd.namespace
        with contextlib.suppress(OSError):
            ns_root.rmdir()
        shutil.rmtree(self.base, ignore_errors=True)
        return forced

    # -- containers -------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.containerd.namespace

    def new_id(self, rt: Runtime, tag: str) -> str:
        self._n += 1
        return f"{tag}-{rt.short}-{self._n}"

    def run_argv(
        self,
        rt: Runtime,
        cid: str,
        *cmd: str,
        rm: bool = False,
        detach: bool = False,
        null_io: bool = False,
        opts: Sequence[str] = (),
    ) -> list[str]:
        flags = ["--runtime", rt.name]
        if rm:
            flags.append("--rm")
        if detach:
            flags.append("-d")
        if null_io:
            flags.append("--null-io")
        assert self.rootfs is not None
        return ["run", *flags, *opts, "--rootfs", str(self.rootfs), cid, *cmd]

    def ctr(self, *args: str, timeout: float = 60.0, check: bool = False) -> Any:
        return self.containerd.ctr(*args, timeout=timeout, check=check)

    def run_detached(
        self, rt: Runtime, cid: str, *cmd: str, opts: Sequence[str] = (), timeout: float = 60.0
    ) -> None:
        r = self.ctr(
            *self.run_argv(rt, cid, *cmd, detach=True, null_io=True, opts=opts), timeout=timeout
        )
        if r.returncode != 0:
            raise RuntimeError(f"ctr run -d {cid} failed: {short_error(r.stderr)}")

    def remove(self, cids: Iterable[str], timeout: float = 60.0) -> None:
        """Kill (SIGKILL) and delete tasks and containers; errors are ignored."""
        for cid in cids:
            self.ctr("task", "kill", "-a", "-s", "SIGKILL", cid, timeout=timeout)
        for cid in cids:
            self.ctr("task", "rm", "-f", cid, timeout=timeout)
            self.ctr("container", "rm", cid, timeout=timeout)

    def tasks(self) -> list[str]:
        r = self.ctr("task", "ls", "-q", timeout=30)
        return r.stdout.split()

    def containers(self) -> list[str]:
        r = self.ctr("container", "ls", "-q", timeout=30)
        return r.stdout.split()

    def reset(self, rt: Runtime) -> list[str]:
        """Remove every task and container of ``rt`` (ids carry ``-<short>-``), wait up to 10 s
        for its shims to exit, then kill those left; returns what was left over."""
        left: list[str] = []
        marker = f"-{rt.short}-"
        try:
            ids = [c for c in self.containers() if marker in c]
            if ids:
                left += [f"container {c}" for c in ids]
                self.remove(ids, timeout=20)
        except ContainerdError as exc:
            left.append(f"ctr hung during clean-up: {short_error(exc)}")
        # Shims exit after their last container is gone; give them a moment, then force.
        if not wait_until(lambda: not self.shim_pids(rt), timeout=10):
            for pid in self.shim_pids(rt):
                left.append(f"shim pid {pid} alive 10s later: {' '.join(proc_argv(pid))[:160]}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ContainerdError):
                ids = [c for c in self.containers() if marker in c]
                if ids:
                    self.remove(ids, timeout=20)
        return left

    # -- shim processes ---------------------------------------------------------------------

    def shim_pids(self, rt: Runtime | None, *, servers: bool = False) -> list[int]:
        """Shim processes (daemons, start/delete helpers) of ``rt`` (or of both) that belong
        to this containerd: the binary in their first arguments and this containerd's address
        in their argv or its ttrpc address in their environment. With ``servers``, ours's
        fork server too (``trioshim.shim.forkserver``, kept private to this run by
        ``TRIOSHIM_FORKSERVER_DIR``): it serves every start, so its memory counts, but it
        outlives the containers (not its containerd) by design, so it is no leftover."""
        names = (
            [REFERENCE_BINARY, OURS_BINARY, SHARED_BINARY] if rt is None else [rt.binary_name]
        )  # python launchers: [python, script, ...]
        want_servers = servers and (rt is None or rt.key == "ours")
        found: list[int] = []
        me = os.getpid()
        for pid in all_pids():
            if pid == me:
                continue
            argv = proc_argv(pid)
            if want_servers and FORKSERVER_MODULE in argv[:3]:
                if proc_environ(pid).get(FORKSERVER_DIR_ENV) == str(self.forkserver_dir):
                    found.append(pid)
                continue
            if not any(os.path.basename(a) in names for a in argv[:3]):
                continue
            if not servers and is_shared_process(argv):
                continue  # it outlives its shims (its idle time) by design: no leftover
            if self.containerd.address in argv or (
                proc_environ(pid).get("TTRPC_ADDRESS") == self.containerd.ttrpc_address
            ):
                found.append(pid)
        return found

    def fork_server_pids(self) -> list[int]:
        ours = self.shim_pids(self.ours, servers=True)
        return [p for p in ours if FORKSERVER_MODULE in proc_argv(p)[:3]]

    def shared_process_pids(self) -> list[int]:
        """Ours's shared-mode processes (``--shared``), serving shims or idle."""
        ours = self.shim_pids(self.ours, servers=True)
        return [p for p in ours if is_shared_process(proc_argv(p))]

    def stop_fork_servers(self) -> list[int]:
        """SIGKILL this run's fork servers and idle shared processes (e.g. for a cold start);
        returns their pids."""
        pids = self.fork_server_pids() + self.shared_process_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=5)
        shutil.rmtree(self.forkserver_dir, ignore_errors=True)
        return pids

    def leftover_sockets(self, keys: Iterable[str], namespace: str | None = None) -> list[Path]:
        from tests.support.containerd_layout import shim_socket_path

        ns = namespace or self.namespace
        return [
            p
            for p in (shim_socket_path(self.containerd.address, ns, k) for k in keys)
            if os.path.lexists(p)
        ]
