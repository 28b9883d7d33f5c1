"""What a start costs the machine, apart from the load: CPU time and page faults of the start
and delete helpers and of the fork server's side, and the private memory of fresh daemons.

Wall time on a shared machine moves by 2x from one run to the next; CPU time and page faults
move far less, and private dirty memory hardly at all. No containerd: the helpers are run
the way containerd 1.6 runs them (a bundle with ``config.json`` and the ``log`` FIFO held
open, ``SHIM -namespace NS -address ADDR -publish-binary /usr/bin/containerd -id ID start``,
``TTRPC_ADDRESS`` and ``GOMAXPROCS`` set) by this process, which is the fork server's
"containerd" (the server lives as long as it does), with a private server directory.

    python -m bench.start_cost cpu [--shim PATH] [--cycles 15]
    python -m bench.start_cost memory [--shim PATH] [--daemons 12]
    python -m bench.start_cost instructions [--shim PATH] [--runs 3]

``cpu``: ``perf stat -e task-clock,page-faults`` around each helper, and attached to the fork
server (inherited by its workers and daemons) over the cycles start, Connect, Shutdown,
delete; medians per helper, totals per cycle for the server's side. ``memory``: starts
``--daemons`` daemons, calls Connect on each, then reads their ``Private_Dirty``
(``/proc/<pid>/smaps_rollup``). ``instructions``: what the start helpers themselves execute
(valgrind's callgrind, user space, the whole helper process; these counts do not move with
the load), each run the way the launcher runs it (the interpreter beside it, ``-S``) against a
fake fork server or shared process that answers at once, beside ``python3 -S -c pass``.
``--shim`` names the build to measure (default: the ``containerd-shim-trioshim-v2`` beside
this interpreter), e.g. another checkout's launcher; its ``-shared-v2`` sibling is measured
too when it is there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import marshal
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.procs import pid_alive, wait_until

TASK = "containerd.task.v2.Task"
NAMESPACE = "cost"
PERF_EVENTS = "task-clock,page-faults"


class Driver:
    """Runs one shim build's helpers against a private fork-server directory."""

    def __init__(self, shim: str, base: Path) -> None:
        self.shim, self.base = shim, base
        self.address = str(base / "containerd.sock")  # nothing listens: start never dials it
        self.env = dict(os.environ)
        self.env.update(
            TRIOSHIM_FORKSERVER_DIR=str(base / "fs"),
            TRIOSHIM_FORKSERVER_LOG=str(base / "fs.log"),
            TTRPC_ADDRESS=self.address + ".ttrpc",
            GOMAXPROCS="2",
        )
        self.fifos: list[int] = []

    def bundle(self, cid: str) -> Path:
        bundle = self.base / cid
        (bundle / "rootfs").mkdir(parents=True)
        config = {"ociVersion": "1.0.2", "process": {"args": ["/bin/true"]}, "root": {}}
        (bundle / "config.json").write_text(json.dumps(config))
        os.mkfifo(bundle / "log")
        self.fifos.append(os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK))
        return bundle

    def helper(self, cid: str, action: str, prefix: list[str] | None = None) -> bytes:
        bundle = self.base / cid
        argv = [self.shim, "-namespace", NAMESPACE, "-address", self.address]
        argv += ["-publish-binary", "/usr/bin/containerd", "-id", cid, "-bundle", str(bundle)]
        done = subprocess.run(
            [*(prefix or []), *argv, action],
            cwd=bundle,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=action == "start",
        )
        return done.stdout

    def serving(self) -> list[int]:
        """The fork servers that said they serve (their log), as of now."""
        log = self.base / "fs.log"
        with contextlib.suppress(FileNotFoundError):
            return [int(p) for p in re.findall(r"forkserver\[(\d+)\] serving", log.read_text())]
        return []

    def server_pid(self) -> int:
        found = wait_until(self.serving, timeout=120)
        if not found:
            raise RuntimeError(f"no fork server serving (see {self.base / 'fs.log'})")
        return found[0]

    def close(self) -> None:
        """Stop what serves (without waiting for a server that never came) and let go."""
        for pid in self.serving():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for fd in self.fifos:
            os.close(fd)
        self.fifos.clear()


def connect(address: str, cid: str, *, shutdown: bool) -> int:
    """Connect (and Shutdown) over ttrpc; returns the daemon's pid."""
    import trio
    from google.protobuf import empty_pb2

    from trioshim.api.containerd.runtime.task.v2 import shim_pb2
    from trioshim.ttrpc import ClosedError, TTRPCError, open_unix_client

    metadata = [("containerd-namespace-ttrpc", NAMESPACE)]

    async def call() -> int:
        async with open_unix_client(address) as client:
            reply = await client.call(
                TASK, "Connect", shim_pb2.ConnectRequest(id=cid), shim_pb2.ConnectResponse,
                metadata=metadata,
            )  # fmt: skip
            if shutdown:
                with contextlib.suppress(ClosedError, TTRPCError):
                    request = shim_pb2.ShutdownRequest(id=cid, now=True)
                    await client.call(TASK, "Shutdown", request, empty_pb2.Empty, metadata=metadata)
            return int(reply.shim_pid)

    return trio.run(call)


def perf_counts(path: Path) -> dict[str, float]:
    """``perf stat -x,`` output: event name -> count."""
    counts = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0][:1].isdigit():
            counts[fields[2]] = float(fields[0])
    return counts


def measure_cpu(driver: Driver, cycles: int) -> None:
    server = subprocess.Popen(
        ["perf", "stat", "-x,", "-e", PERF_EVENTS, "-p", str(driver.server_pid()),
         "-o", str(driver.base / "perf-server")],
    )  # fmt: skip
    time.sleep(1)  # perf attaches
    helpers: dict[str, list[dict[str, float]]] = {"start": [], "delete": []}

    def helper(cid: str, action: str) -> bytes:
        out = driver.base / f"perf-{cid}-{action}"
        stdout = driver.helper(
            cid, action, ["perf", "stat", "-x,", "-e", PERF_EVENTS, "-o", str(out)]
        )
        helpers[action].append(perf_counts(out))
        return stdout

    for i in range(cycles):
        cid = f"cpu-{i}"
        driver.bundle(cid)
        pid = connect(helper(cid, "start").decode().strip(), cid, shutdown=True)
        wait_until(lambda: not pid_alive(pid), timeout=30)  # noqa: B023 - called right here
        helper(cid, "delete")
    server.send_signal(signal.SIGINT)
    server.wait()
    for action, counts in helpers.items():
        clock = statistics.median(c["task-clock"] for c in counts)
        faults = statistics.median(c["page-faults"] for c in counts)
        print(f"{action} helper: task-clock {clock:.2f} ms, page faults {faults:.0f} (medians)")
    total = perf_counts(driver.base / "perf-server")
    print(
        f"fork server + workers + daemons, per cycle: task-clock "
        f"{total['task-clock'] / cycles:.2f} ms, page faults {total['page-faults'] / cycles:.0f}"
    )


def private_dirty_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Private_Dirty for {pid}")


def measure_memory(driver: Driver, daemons: int) -> None:
    held = []
    try:
        for i in range(daemons):
            cid = f"mem-{i}"
            driver.bundle(cid)
            address = driver.helper(cid, "start").decode().strip()
            held.append((address, cid, connect(address, cid, shutdown=False)))
        time.sleep(1)  # settled: nothing of theirs is still running
        values = [private_dirty_mb(pid) for _, _, pid in held]
        print(
            f"private dirty per daemon after Connect: median {statistics.median(values):.2f} MB "
            f"(min {min(values):.2f}, max {max(values):.2f}, {len(values)} daemons)"
        )
    finally:
        for address, cid, _ in held:
            with contextlib.suppress(Exception):
                connect(address, cid, shutdown=True)


# What each helper's socket path is computed with: the shim build's own code, run by the
# interpreter beside it, as if it were the helper (the path is keyed by its argv[0]).
_SERVER_PATH = (
    "import sys; sys.argv = [{shim!r}]; from trioshim.runc import launcher as l; "
    "from trioshim.shim import forkserver, sharedlaunch; print(forkserver.server_path(l.APP, "
    "{address!r}) if not {shared!r} else sharedlaunch.control_path(l.SHARED_RUNTIME, {address!r}))"
)


def _fake_server(path: str, shared: bool) -> socket.socket:
    """Listens at ``path`` and answers each helper at once (the worker's ``S`` status, or the
    shared process's reply with an address), in a thread of its own."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    listener = socket.socket(
        socket.AF_UNIX, socket.SOCK_SEQPACKET if shared else socket.SOCK_STREAM
    )
    listener.bind(path)
    listener.listen(8)
    reply = {"ok": True, "status": 0, "stdout": b"unix:///fake\n", "stderr": b""}

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    if shared:
                        conn.recv(1 << 20)
                        conn.send(marshal.dumps(reply))
                        continue
                    data, fds, _, _ = socket.recv_fds(conn, 4, 3)
                    for fd in fds:
                        os.close(fd)
                    size = int.from_bytes(data, "big")
                    while size > 0:
                        size -= len(conn.recv(size))
                    conn.sendall(b"S" + (0).to_bytes(4, "big"))

    threading.Thread(target=answer, daemon=True).start()
    return listener


def _instructions(argv: list[str], env: dict[str, str], cwd: str) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
    )  # fmt: skip
    found = re.search(rb"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{argv[0]}: status {done.returncode}: {done.stderr[-2000:]!r}")
    return int(found.group(1))


def measure_instructions(shim: str, runs: int) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("instructions: needs valgrind (apt-get install valgrind)")
    python = os.path.join(os.path.dirname(shim), "python3")
    shims = [shim]
    shared_shim = shim.replace("-trioshim-v2", "-trioshim-shared-v2")
    if shared_shim != shim and os.path.exists(shared_shim):
        shims.append(shared_shim)
    with tempfile.TemporaryDirectory(prefix="tsi", dir="/tmp") as tmp:
        address = tmp + "/containerd.sock"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(TRIOSHIM_FORKSERVER_DIR=tmp + "/fs", TTRPC_ADDRESS=address + ".ttrpc")
        floor = [_instructions([python, "-S", "-c", "pass"], env, tmp) for _ in range(runs)]
        print(f"python3 -S -c pass: {statistics.median(floor) / 1e6:.2f} M instructions")
        for helper in shims:
            shared = helper.endswith("-shared-v2")
            code = _SERVER_PATH.format(shim=helper, address=address, shared=shared)
            path = subprocess.run(
                [python, "-c", code], cwd=tmp, env=env, capture_output=True, text=True, check=True
            ).stdout.strip()
            listener = _fake_server(path, shared)
            try:
                argv = [python, "-S", helper, "-namespace", NAMESPACE, "-address", address]
                argv += ["-publish-binary", "/usr/bin/containerd", "-id", "i", "start"]
                counts = [_instructions(argv, env, tmp) for _ in range(runs)]
            finally:
                listener.close()
            median = statistics.median(counts) / 1e6
            extra = median - statistics.median(floor) / 1e6
            print(f"{os.path.basename(helper)} start: {median:.2f} M instructions ({extra:+.2f} M)")


@contextlib.contextmanager
def driven(shim: str) -> Iterator[Driver]:
    with tempfile.TemporaryDirectory(prefix="tsc", dir="/tmp") as tmp:
        driver = Driver(shim, Path(tmp))
        try:
            driver.bundle("cold")
            driver.helper("cold", "delete")  # cold: runs here, spawns the server
            driver.server_pid()
            yield driver
        finally:
            driver.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.start_cost", description=__doc__)
    parser.add_argument("what", choices=["cpu", "memory", "instructions"])
    default = str(Path(sys.executable).parent / "containerd-shim-trioshim-v2")
    parser.add_argument("--shim", default=default, help="the shim build to measure")
    parser.add_argument("--cycles", type=int, default=15, help="cpu: start/delete cycles")
    parser.add_argument("--daemons", type=int, default=12, help="memory: daemons held")
    parser.add_argument("--runs", type=int, default=3, help="instructions: runs per helper")
    args = parser.parse_args(argv)
    if args.what == "instructions":
        measure_instructions(args.shim, args.runs)
        return
    with driven(args.shim) as driver:
        if args.what == "cpu":
            measure_cpu(driver, args.cycles)
        else:
            measure_memory(driver, args.daemons)


if __name__ == "__main__":
    main()
