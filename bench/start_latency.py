"""Start latency of the shim framework: from invoking ``start`` to the first Connect answered.

    sudo .venv/bin/python bench/start_latency.py [--iterations 15]

Runtimes, interleaved round by round so that load drifts hit all of them alike:

- ``runc-v2``: Debian's Go ``containerd-shim-runc-v2`` (the reference);
- ``fork``: ``examples/minimal_shim.py`` on ``trioshim.shim.main`` (the helper imports Trio and
  protobuf, then forks the daemon: one interpreter start-up on the critical path);
- ``forkserver``: ``examples/minimal_shim_fast`` (an import-light helper hands the action to a
  pre-imported fork server; round 0 is its cold start and spawns the server);
- ``trioshim-v2``: the project's runc shim ``containerd-shim-trioshim-v2`` if installed.

Each iteration does what containerd 1.6 does: a fresh bundle with ``config.json`` and the
``log`` FIFO held open, ``SHIM -namespace NS -address A -publish-binary B -id ID start`` with
cwd the bundle, stdin ``/dev/null``, stdout+stderr one pipe read to EOF, its own process group.
The clock stops when a Connect reply arrives on the printed address (a blocking, minimal ttrpc
client, so the measuring side costs nothing noticeable). Then Shutdown, the daemon's exit, and
``delete``. The shims' sockets go to ``/run/containerd/s`` (the Go shim's is hard-coded), under a
namespace unique to the run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trioshim.api.containerd.runtime.task.v2 import shim_pb2  # noqa: E402
from trioshim.api.ttrpc.request_pb2 import KeyValue, Request, Response  # noqa: E402

HEADER = struct.Struct(">IIBB")
TASK = "containerd.task.v2.Task"
GO_SHIM = "/usr/bin/containerd-shim-runc-v2"


@dataclass
class Runtime:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    connect_ms: list[float] = field(default_factory=list)
    helper_ms: list[float] = field(default_factory=list)
    cold_ms: float | None = None
    errors: list[str] = field(default_factory=list)


def call(sock: socket.socket, stream: int, method: str, request: bytes, ns: str) -> bytes:
    req = Request(
        service=TASK,
        method=method,
        payload=request,
        metadata=[KeyValue(key="containerd-namespace-ttrpc", value=ns)],
    ).SerializeToString()
    sock.sendall(HEADER.pack(len(req), stream, 1, 0) + req)
    head = _read(sock, HEADER.size)
    length, _, _, _ = HEADER.unpack(head)
    response = Response.FromString(_read(sock, length))
    if response.status.code:
        raise RuntimeError(f"{method}: {response.status.code} {response.status.message}")
    return bytes(response.payload)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def connect(path: str, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.0005)


def make_bundle(root: Path, id: str) -> tuple[Path, int]:
    bundle = root / id
    bundle.mkdir()
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2", "annotations": {}}')
    os.mkfifo(bundle / "log", 0o700)
    # containerd holds the FIFO open O_RDWR (so the daemon's O_WRONLY open returns at once).
    return bundle, os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK)


def one(rt: Runtime, root: Path, ns: str, id: str, env: dict[str, str]) -> tuple[float, float]:
    bundle, log_fd = make_bundle(root, id)
    argv = [*rt.argv, "-namespace", ns, "-address", str(root / "ctrd.sock")]
    argv += ["-publish-binary", "/usr/bin/containerd", "-id", id]
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*argv, "start"],
            cwd=bundle,
            env={**env, **rt.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        out, _ = proc.communicate(timeout=120)
        t_helper = time.monotonic()
        address = out.decode().strip()
        if proc.returncode != 0 or not address.startswith("unix://"):
            raise RuntimeError(f"start failed ({proc.returncode}): {out[-300:]!r}")
        path = address.removeprefix("unix://")
        with connect(path, time.monotonic() + 30) as sock:
            reply = shim_pb2.ConnectResponse.FromString(
                call(sock, 1, "Connect", shim_pb2.ConnectRequest(id=id).SerializeToString(), ns)
            )
            t_connect = time.monotonic()
            call(sock, 3, "Shutdown", shim_pb2.ShutdownRequest(id=id).SerializeToString(), ns)
        deadline = time.monotonic() + 15
        while _alive(reply.shim_pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        subprocess.run(
            [*argv, "-bundle", str(bundle), "delete"],
            cwd=bundle,
            env={**env, **rt.env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        with _suppress():
            os.unlink(path)
        return (t_connect - t0) * 1000, (t_helper - t0) * 1000
    finally:
        os.close(log_fd)
        shutil.rmtree(bundle, ignore_errors=True)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stl", dir="/tmp"))
    ns = f"stl-{os.getpid()}"
    python = sys.executable
    fs_dir = root / "fs"
    runtimes = [Runtime("runc-v2", [GO_SHIM])] if os.access(GO_SHIM, os.X_OK) else []
    runtimes += [
        Runtime("fork", [python, str(REPO / "examples" / "minimal_shim.py")]),
        Runtime(
            "forkserver",
            [python, str(REPO / "examples" / "minimal_shim_fast")],
            {
                "TRIOSHIM_FORKSERVER_DIR": str(fs_dir),
                "TRIOSHIM_FORKSERVER_LOG": str(root / "fs.log"),
            },
        ),
    ]
    ours = shutil.which("containerd-shim-trioshim-v2", path=str(Path(python).parent))
    if ours:
        runtimes.append(Runtime("trioshim-v2", [ours]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIOSHIM_", "NOTIFY_SOCKET"))}
    env.update({"TTRPC_ADDRESS": str(root / "ctrd.sock.ttrpc"), "GOMAXPROCS": "2"})
    load = os.getloadavg()
    try:
        for i in range(args.iterations + 1):
            for rt in runtimes:
                try:
                    connect_ms, helper_ms = one(rt, root, ns, f"{rt.name}-{i}", env)
                except Exception as exc:  # report and go on
                    rt.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if i == 0:
                    rt.cold_ms = connect_ms
                else:
                    rt.connect_ms.append(connect_ms)
                    rt.helper_ms.append(helper_ms)
                if rt.name == "forkserver" and i == 0:
                    # Let the server finish its imports before the warm rounds.
                    deadline = time.monotonic() + 60
                    while "serving" not in _read_text(root / "fs.log"):
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.01)
    finally:
        for pid in re.findall(r"forkserver\[(\d+)\] serving", _read_text(root / "fs.log")):
            with _suppress():
                os.kill(int(pid), signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"start -> first Connect answered, {args.iterations} warm rounds + 1 cold, "
        f"{os.cpu_count()} CPUs, load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"{'runtime':<12} {'median':>8} {'p90':>8} {'cold':>8} {'helper exit':>12}  (ms)")
    for rt in runtimes:
        if not rt.connect_ms:
            print(f"{rt.name:<12} failed: {rt.errors[:1]}")
            continue
        p90 = statistics.quantiles(rt.connect_ms, n=10)[-1] if len(rt.connect_ms) > 1 else 0
        cold = f"{rt.cold_ms:8.1f}" if rt.cold_ms is not None else f"{'-':>8}"
        print(
            f"{rt.name:<12} {statistics.median(rt.connect_ms):8.1f} {p90:8.1f} {cold} "
            f"{statistics.median(rt.helper_ms):12.1f}"
            + (f"  ({len(rt.errors)} errors: {rt.errors[0]})" if rt.errors else "")
        )
    return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
