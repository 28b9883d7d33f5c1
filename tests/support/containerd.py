"""A private containerd daemon for tests: started, restarted, stopped and cleaned up, and
driven through `ctr`.

Nothing here touches the machine's own containerd (if any). Where the daemon keeps things
(a temp dir of its own, a namespace unique to the run for what is machine-wide) and what of it
is there is tests.support.containerd_layout; its config file is tests.support.containerd_config.
`stop()` removes everything the daemon and its shims left: tasks, containers, shim processes,
runc state, mounts, cgroups and the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.containerd_config import DISABLED_PLUGINS, config_toml
from tests.support.containerd_layout import CGROUP_ROOT, RUNC_ROOT, ContainerdLayout

CONTAINERD = os.environ.get("TRIOSHIM_CONTAINERD", "/usr/bin/containerd")
CTR = os.environ.get("TRIOSHIM_CTR", "/usr/bin/ctr")


class ContainerdError(AssertionError):
    """containerd (or ctr) misbehaved; the message carries the tail of containerd's log."""


def venv_bin_dir() -> str:
    """The running interpreter's bin dir (not resolved: a venv's python is a symlink)."""
    return str(Path(sys.executable).parent)


def default_path() -> str:
    """PATH for containerd: the venv's bin first (containerd-shim-trioshim-v2), then the usual."""
    dirs = [
        venv_bin_dir(),
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    seen: list[str] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return ":".join(seen)


class PrivateContainerd(ContainerdLayout):
    """Start with `start()` (or use as a context manager); `stop()` cleans everything up."""

    def __init__(
        self,
        *,
        namespace: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        path: str | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "debug",
        start_timeout: float = 30.0,
        containerd: str | None = None,
        ctr: str | None = None,
        wrap: Sequence[str] = (),
    ) -> None:
        # The binaries: the machine's (or $TRIOSHIM_CONTAINERD / $TRIOSHIM_CTR) by default;
        # tests.support.line_containerd.LineContainerd passes those of a fetched line.
        self.containerd_bin = containerd or CONTAINERD
        self.ctr_bin = ctr or CTR
        self.wrap = list(wrap)  # a command that runs containerd's (placed elsewhere, say)
        super().__init__(namespace=namespace, base_dir=base_dir)
        self.path = path or default_path()
        self.extra_env = dict(env or {})
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PrivateContainerd:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            sys.stderr.write(f"--- containerd log tail ({self.log_path}) ---\n{self.log_tail()}\n")
        self.stop()

    @property
    def major(self) -> int:
        """containerd's major version: 1 for the machine's bookworm daemon (LineContainerd
        knows its line's)."""
        return 1

    def disabled_plugins(self) -> list[str]:
        """Plugins the daemon runs without (a hook: subclasses add or keep some)."""
        return list(DISABLED_PLUGINS)

    def config_text(self) -> str:
        """config.toml (version 2, what 1.6 reads; a hook: LineContainerd writes each line's)."""
        return config_toml(
            self, version=2, disabled=self.disabled_plugins(), log_level=self.log_level
        )

    def write_config(self) -> None:
        self.config_path.write_text(self.config_text())

    def banner(self) -> str:
        """First line written to containerd.log at each start."""
        return f"=== trioshim test: starting {self.containerd_bin} at {time.ctime()} ===\n"

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE")
        }
        env["PATH"] = self.path
        env["TRIOSHIM_FORKSERVER_DIR"] = str(self.forkserver_dir)
        # A shared-mode process ends with its last shim (not after its idle time): tests see
        # each one gone when its containers are.
        env["TRIOSHIM_SHARED_IDLE"] = "0"
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("containerd already running")
        for d in (self.root, self.state):
            d.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in _halt)
        self._log_file.write(self.banner().encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            [*self.wrap, self.containerd_bin, "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd="/",
            start_new_session=True,
        )
        self._stopped = False
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ContainerdError(
                    f"containerd exited with {self.proc.returncode} during start-up\n"
                    f"{self.log_tail()}"
                )
            if os.path.exists(self.address):
                r = subprocess.run(
                    [self.ctr_bin, "--address", self.address, "version"],
                    capture_output=True,
                    timeout=10,
                    env=self.env,
                )
                if r.returncode == 0:
                    return
                last = r.stderr.decode(errors="replace")
            time.sleep(0.1)
        raise ContainerdError(
            f"containerd did not answer within {self.start_timeout}s: {last}\n{self.log_tail()}"
        )

    def halt(self) -> None:
        """Stop the daemon process only (SIGTERM): its shims keep running, `start()` again."""
        self._halt()

    def _halt(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the daemon process only (its shims keep running, as with systemd's KillMode)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, *, sig: int = signal.SIGTERM) -> None:
        """Stop containerd (tasks and shims keep running) and start it again on the same root,
        state and sockets."""
        self._halt(sig)
        self.start()

    def kill_daemon(self) -> None:
        """SIGKILL containerd only (no clean-up), e.g. to simulate a crash."""
        self._halt(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> list[str]:
        """Kill and delete every task and container of the namespace, stop containerd, kill
        stray shims, force-delete runc leftovers, unmount, remove cgroups and the temp dir.
        Returns a list of what had to be cleaned by force (empty when the tests left nothing)."""
        if self._stopped:
            return []
        forced: list[str] = []
        if self.running:
            with contextlib.suppress(Exception):
                forced += self.cleanup_namespace()
        self._halt()
        # Shims of deleted tasks exit by themselves shortly after their Shutdown.
        deadline = time.monotonic() + 5
        while self.shim_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.shim_pids():
            forced.append(f"shim pid {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        forced += self._force_delete_runc()
        for point in sorted(self.mounts(), key=len, reverse=True):
            forced.append(f"mount {point}")
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        self._remove_cgroups()
        with contextlib.suppress(OSError):
            (RUNC_ROOT / self.namespace).rmdir()
        shutil.rmtree(self.base, ignore_errors=True)
        self._stopped = True
        return forced

    def cleanup_namespace(self) -> list[str]:
        """Kill and delete every task, then every container, in our namespace."""
        forced = []
        r = self.ctr("task", "ls", "-q", timeout=30)
        for tid in r.stdout.split():
            forced.append(f"task {tid}")
            self.ctr("task", "kill", "-a", "-s", "SIGKILL", tid, timeout=30)
            self.ctr("task", "rm", "-f", tid, timeout=60)
        r = self.ctr("container", "ls", "-q", timeout=30)
        for cid in r.stdout.split():
            forced.append(f"container {cid}")
            self.ctr("container", "rm", cid, timeout=60)
        return forced

    def _force_delete_runc(self) -> list[str]:
        root = RUNC_ROOT / self.namespace
        forced = []
        if root.is_dir():
            for entry in root.iterdir():
                forced.append(f"runc container {entry.name}")
                subprocess.run(
                    ["runc", "--root", str(root), "delete", "--force", entry.name],
                    capture_output=True,
                    timeout=30,
                )
        return forced

    def _remove_cgroups(self) -> None:
        if not CGROUP_ROOT.is_dir():
            return
        for ctl in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()]:
            top = ctl / self.namespace
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(
                os.walk(top), key=lambda t: len(t[0]), reverse=True
            ):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    # ------------------------------------------------------------------ ctr

    def ctr_argv(self, *args: str, namespace: str | None = None) -> list[str]:
        return [
            self.ctr_bin,
            "--address",
            self.address,
            "--namespace",
            namespace or self.namespace,
            *args,
        ]

    def ctr(
        self,
        *args: str,
        input: bytes | str | None = None,
        timeout: float = 60.0,
        text: bool = True,
        check: bool = False,
        namespace: str | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `ctr --address ... --namespace NS ARGS...`, capturing stdout and stderr.

        Raises ContainerdError (with containerd's log tail) if ctr does not finish within
        `timeout` seconds, or if `check` and ctr fails."""
        argv = self.ctr_argv(*args, namespace=namespace)
        if isinstance(input, str):
            input = input.encode()
        try:
            r = subprocess.run(
                argv,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                env=self.env,
                cwd=cwd,
            )
        except subprocess.TimeoutExpired as e:
            raise ContainerdError(
                f"ctr hung for {timeout}s: {' '.join(argv)}\nstdout: {e.stdout!r:.500}\n"
                f"stderr: {e.stderr!r:.2000}\n{self.log_tail()}"
            ) from None
        if text:
            r = subprocess.CompletedProcess(
                r.args,
                r.returncode,
                r.stdout.decode(errors="replace"),
                r.stderr.decode(errors="replace"),
            )
        if check and r.returncode != 0:
            raise ContainerdError(
                f"{' '.join(argv)} failed with {r.returncode}: {r.stderr!s:.2000}\n"
                f"{self.log_tail()}"
            )
        return r

    def ctr_popen(
        self, *args: str, namespace: str | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ctr in the background (e.g. `ctr events`); the caller must reap it."""
        kwargs.setdefault("env", self.env)
        return subprocess.Popen(self.ctr_argv(*args, namespace=namespace), **kwargs)

    # ------------------------------------------------------------------ log

    def log_tail(self, lines: int = 80) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as e:
            return f"(no containerd log: {e})"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
