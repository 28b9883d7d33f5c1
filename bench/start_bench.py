"""Start latency (issue 3): invoke the shim's `start` action the way containerd 1.6 does and time
it until the first Connect is answered on the address it printed.

Per iteration and runtime: a fresh bundle dir (`config.json`, the `log` FIFO held open as
containerd holds it), argv ``SHIM -namespace NS -address ADDR -publish-binary
/usr/bin/containerd -id ID start``, cwd the bundle, env plus ``TTRPC_ADDRESS`` (and
``GOMAXPROCS=2`` as containerd sets it), its own process group. The clock runs from the spawn
to the Connect reply (our client). Then clean-up as containerd does it: Shutdown over ttrpc, the
daemon's exit awaited, the `delete` action run (cwd the bundle), and any socket left behind
removed and reported. The namespace is unique to the run (the private containerd's plus
``-st``), so no socket can collide with anything else.

Iteration 0 is reported apart as the cold start (page cache, and for a shim that keeps a
forking parent per containerd address, the parent's start-up).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.env import BenchEnv
from bench.procs import pid_alive, proc_argv, wait_until
from bench.results import BenchResult, Row, log, percentile, short_error, summary
from bench.runtimes import Runtime, is_shared_process

NAME = "start"
CONTAINERD_BINARY = "/usr/bin/containerd"
TASK = "containerd.task.v2.Task"


@dataclass
class StartSample:
    to_connect_ms: float
    helper_ms: float
    delete_ms: float
    delete_rc: int
    shim_pid: int
    leftovers: list[str] = field(default_factory=list)


def _config_json() -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["/bin/true"], "cwd": "/", "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
        "annotations": {},
    }


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


@contextlib.contextmanager
def _explain_timeout(message: str) -> Iterator[None]:
    import trio

    try:
        yield
    except trio.TooSlowError:
        raise RuntimeError(message) from None


class StartRunner:
    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.namespace = f"{env.namespace}-st"
        self.root = env.base / "st" / self.namespace
        self.root.mkdir(parents=True, exist_ok=True)
        self.spawned_pids: set[int] = set()
        self.ids: list[str] = []
        self.env_vars = dict(env.containerd.env)
        self.env_vars["TTRPC_ADDRESS"] = env.containerd.ttrpc_address
        self.env_vars["GOMAXPROCS"] = "2"

    def base_argv(self, rt: Runtime, cid: str) -> list[str]:
        assert rt.binary is not None
        return [
            rt.binary,
            "-namespace",
            self.namespace,
            "-address",
            self.env.containerd.address,
            "-publish-binary",
            CONTAINERD_BINARY,
            "-id",
            cid,
        ]

    def one(self, rt: Runtime, i: int) -> StartSample:
        import trio
        from google.protobuf import empty_pb2

        from trioshim.api.containerd.runtime.task.v2 import shim_pb2
        from trioshim.ttrpc import ClosedError, TTRPCError, open_unix_client

        cid = f"st-{rt.short}-{i}"
        self.ids.append(cid)
        bundle = self.root / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(_config_json()))
        (bundle / "rootfs").mkdir()
        os.mkfifo(bundle / "log", 0o700)
        log_fd = os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK)
        metadata = [("containerd-namespace-ttrpc", self.namespace)]
        argv = self.base_argv(rt, cid)

        async def start_and_connect() -> tuple[float, float, int, str]:
            t0 = time.perf_counter()
            proc = await trio.lowlevel.open_process(
                [*argv, "start"],
                cwd=str(bundle),
                env=self.env_vars,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
            assert proc.stdout is not None
            out = b""
            try:
                with trio.fail_after(30):
                    async with proc.stdout:
                        while chunk := await proc.stdout.receive_some(65536):
                            out += chunk
                    rc = await proc.wait()
            except BaseException as exc:
                # A helper that hangs (or a Ctrl-C): take its process group down with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await proc.wait()
                if isinstance(exc, trio.TooSlowError):
                    raise RuntimeError(
                        f"start did not exit within 30 s (printed {out[:200]!r})"
                    ) from None
                raise
            t_helper = time.perf_counter()
            text = out.decode(errors="replace")
            if rc != 0:
                raise RuntimeError(f"start exited {rc}: {text.strip()}")
            address = text.strip()
            with (
                _explain_timeout(f"no Connect answer on {address!r} within 30 s"),
                trio.fail_after(30),
            ):
                async with open_unix_client(address) as client:
                    r = await client.call(
                        TASK,
                        "Connect",
                        shim_pb2.ConnectRequest(id=cid),
                        shim_pb2.ConnectResponse,
                        metadata=metadata,
                    )
                    t1 = time.perf_counter()
                    self.spawned_pids.add(int(r.shim_pid))
                    with contextlib.suppress(ClosedError, TTRPCError), trio.move_on_after(5):
                        await client.call(
                            TASK,
                            "Shutdown",
                            shim_pb2.ShutdownRequest(id=cid, now=True),
                            empty_pb2.Empty,
                            metadata=metadata,
                        )
            return (t1 - t0) * 1000, (t_helper - t0) * 1000, int(r.shim_pid), address

        leftovers: list[str] = []
        try:
            to_connect, helper, shim_pid, address = trio.run(start_and_connect)
            path = address.removeprefix("unix://")
            if is_shared_process(proc_argv(shim_pid)):
                # Shared mode: the process serves others (or idles); this shim's end is
                # its socket's removal.
                if not wait_until(lambda: not os.path.lexists(path), timeout=5):
                    leftovers.append(f"shim on {path} still serving 5s after Shutdown")
            elif not wait_until(lambda: not pid_alive(shim_pid), timeout=5):
                leftovers.append(f"daemon {shim_pid} alive 5s after Shutdown (killed)")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(shim_pid, signal.SIGKILL)
            t0 = time.perf_counter()
            d = subprocess.run(
                [*argv, "-bundle", str(bundle), "delete"],
                cwd=str(bundle),
                env=self.env_vars,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )
            delete_ms = (time.perf_counter() - t0) * 1000
            if os.path.lexists(path):
                leftovers.append(f"socket {path} (removed)")
                with contextlib.suppress(OSError):
                    os.unlink(path)
            return StartSample(to_connect, helper, delete_ms, d.returncode, shim_pid, leftovers)
        except Exception as exc:
            tail = _drain(log_fd).decode(errors="replace").strip().splitlines()[-3:]
            if tail:
                raise RuntimeError(f"{short_error(exc)}; shim log: {' | '.join(tail)}") from exc
            raise
        finally:
            os.close(log_fd)
            self.cleanup_one(rt, cid)

    def cleanup_one(self, rt: Runtime, cid: str) -> None:
        from tests.support.containerd_layout import shim_socket_path

        sock = shim_socket_path(self.env.containerd.address, self.namespace, cid)
        for pid in self.env.shim_pids(rt):
            argv = proc_argv(pid)
            if any(a == "-id" and b == cid for a, b in itertools.pairwise(argv)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in list(self.spawned_pids):
            if not pid_alive(pid):
                self.spawned_pids.discard(pid)
        with contextlib.suppress(OSError):
            if os.path.lexists(sock):
                os.unlink(sock)
        shutil.rmtree(self.root / cid, ignore_errors=True)

    def close(self) -> list[str]:
        forced = []
        for pid in self.spawned_pids:
            if pid_alive(pid):
                # The shared process (no -id: it serves every shim) idles for the next start
                # by design; a daemon of one container should have gone with its Shutdown.
                shared = "-id" not in proc_argv(pid)
                forced.append(f"shared process {pid} (idling)" if shared else f"daemon {pid}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for rt in (self.env.reference, self.env.ours):
            for cid in self.ids:
                self.cleanup_one(rt, cid)
        shutil.rmtree(self.root, ignore_errors=True)
        return forced


def run(env: BenchEnv, args: Any, result: BenchResult) -> None:
    n: int = args.starts
    # A truly cold first start: no fork server (or idle shared process) of ours yet (earlier
    # benchmarks started one).
    if env.stop_fork_servers():
        result.notes.append(
            "start: stopped ours's fork server / shared process first, so the cold start is cold"
        )
    runner = StartRunner(env)
    runtimes = [rt for rt in (env.reference, env.ours) if rt.binary is not None]
    samples: dict[str, list[StartSample]] = {rt.key: [] for rt in runtimes}
    errors: dict[str, str] = {}
    for rt in (env.reference, env.ours):
        if rt.binary is None:
            errors[rt.key] = rt.unavailable or "binary not found"
    try:
        log(f"start: start action -> first Connect, {n} per runtime (+1 cold)")
        for i in range(n + 1):
            for rt in runtimes:
                if rt.key in errors:
                    continue
                try:
                    s = runner.one(rt, i)
                except Exception as exc:
                    errors[rt.key] = short_error(exc, 400)
                    log(f"start: {rt.key} failed: {errors[rt.key]}")
                    continue
                samples[rt.key].append(s)
                if s.leftovers:
                    result.notes.append(f"start: {rt.key} iteration {i}: {s.leftovers}")
    finally:
        forced = runner.close()
        if forced:
            result.notes.append(f"start: killed by force at the end: {forced}")
    rows = (
        Row(
            NAME,
            "start action -> first Connect, median",
            "ms",
            "lower",
            aim="<= 1.0x" if env.shared else "<= 2x",
        ),
        Row(NAME, "start action -> first Connect, p90", "ms", "lower"),
        Row(NAME, "start action -> first Connect, cold (1st)", "ms", "lower"),
        Row(
            NAME,
            "start helper exit (address printed), median",
            "ms",
            "lower",
            aim="" if env.shared else "<= 15 ms (ours)",
        ),
        Row(NAME, "delete action, median", "ms", "lower"),
    )
    for key, ss in samples.items():
        if key in errors:
            for row in rows:
                row.set(key, error=errors[key])
            continue
        if len(ss) < 2:
            continue
        warm = ss[1:]
        conn = [s.to_connect_ms for s in warm]
        rows[0].set(key, percentile(conn, 50))
        rows[1].set(key, percentile(conn, 90))
        rows[2].set(key, ss[0].to_connect_ms)
        rows[3].set(key, percentile([s.helper_ms for s in warm], 50))
        rows[4].set(key, percentile([s.delete_ms for s in warm], 50))
        result.raw[key] = {
            "to_connect_ms": summary(conn) | {"cold": ss[0].to_connect_ms},
            "helper_ms": summary([s.helper_ms for s in warm]),
            "delete_ms": summary([s.delete_ms for s in warm]),
            "delete_rc": sorted({s.delete_rc for s in ss}),
        }
    for key in errors:
        if key not in samples:
            for row in rows:
                row.set(key, error=errors[key])
    result.rows += rows
    rcs = {k: v.get("delete_rc") for k, v in result.raw.items() if isinstance(v, dict)}
    result.notes.append(
        f"start: {n} warm starts per runtime after one cold start, interleaved; bundles "
        f"without a container, so the reference's `delete` exits 1 (no `runtime` file): exit "
        f"codes {rcs}."
    )
