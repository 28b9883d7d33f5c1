"""Where a private containerd and its shims keep things, and what of it is there now.

The daemon gets a temp dir of its own with `root/`, `state/`, `ctrd.sock` (gRPC),
`ctrd.sock.ttrpc`, `config.toml`, `containerd.log` and `fs/` (our shim's fork servers). What is
machine-wide and cannot be moved by configuration is kept apart by a namespace unique to the
run: runc's state dir (`/run/containerd/runc/<ns>`), the shim sockets
(`/run/containerd/s/<sha256(address/ns/id)>`) and cgroups (`/<ns>/<id>`). The daemon itself is
run by tests.support.containerd.PrivateContainerd, a ContainerdLayout.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

SHIM_SOCKET_DIR = Path("/run/containerd/s")
RUNC_ROOT = Path("/run/containerd/runc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def shim_socket_path(address: str, namespace: str, group: str) -> Path:
    """Where a v2 shim listens (containerd's formula): /run/containerd/s/sha256(address/ns/id)."""
    digest = hashlib.sha256(os.path.join(address, namespace, group).encode()).hexdigest()
    return SHIM_SOCKET_DIR / digest


def _mountpoints() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # Octal escapes (\040 for space) as the kernel writes them.
            points.append(fields[4].encode().decode("unicode_escape"))
    return points


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


class ContainerdLayout:
    """The places of one private containerd: its temp dir's files and sockets, its bundles,
    its shims' sockets, and the shim and fork-server processes serving it."""

    def __init__(
        self, *, namespace: str | None = None, base_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.namespace = namespace or f"tsh-{os.getpid()}-{secrets.token_hex(3)}"
        # Short base dir: unix socket paths are limited to 108 bytes.
        self.base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="tsc", dir="/tmp"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.address = str(self.base / "ctrd.sock")
        self.ttrpc_address = self.address + ".ttrpc"
        self.config_path = self.base / "config.toml"
        # Our shim's fork servers for this daemon, apart from any other containerd's.
        self.forkserver_dir = self.base / "fs"
        self.log_path = self.base / "containerd.log"
        if len(self.ttrpc_address) > 100:
            raise ValueError(f"socket path too long for a unix socket: {self.ttrpc_address}")

    def bundle(self, id: str, namespace: str | None = None) -> Path:
        return self.state / "io.containerd.runtime.v2.task" / (namespace or self.namespace) / id

    def work_dir(self, id: str, namespace: str | None = None) -> Path:
        return self.root / "io.containerd.runtime.v2.task" / (namespace or self.namespace) / id

    def shim_address(self, id: str, namespace: str | None = None) -> str:
        """The address the shim returned from `start`, without `unix://`: what containerd
        recorded in the bundle's `bootstrap.json` (2.x), else the shim's `address` file."""
        bundle = self.bundle(id, namespace)
        try:
            addr = str(json.loads((bundle / "bootstrap.json").read_text())["address"])
        except FileNotFoundError:
            addr = (bundle / "address").read_text().strip()
        return addr.removeprefix("unix://")

    def shim_socket(self, id: str, namespace: str | None = None) -> Path:
        """The socket path computed by the shim-v2 rule for grouping key `id`."""
        return shim_socket_path(self.address, namespace or self.namespace, id)

    def shim_pids(self) -> list[int]:
        """Pids of shim processes started for this containerd: a `containerd-shim*` argv with
        `-address ADDR`, or with `TTRPC_ADDRESS=<our ttrpc socket>` in its environment."""
        found = []
        marker = f"TTRPC_ADDRESS={self.ttrpc_address}".encode()
        for pid in all_pids():
            argv = proc_cmdline(pid)
            if not any(os.path.basename(a).startswith("containerd-shim") for a in argv):
                continue
            if any(
                a in ("-address", "--address") and argv[i + 1] == self.address
                for i, a in enumerate(argv[:-1])
            ):
                found.append(pid)
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                found.append(pid)
        return found

    def forkserver_pids(self) -> list[int]:
        """Pids of our shim's fork servers for this daemon (their socket is in our dir)."""
        under = str(self.forkserver_dir) + "/"
        return [
            pid
            for pid in all_pids()
            if "trioshim.shim.forkserver" in (argv := proc_cmdline(pid))
            and any(a.startswith(under) for a in argv)
        ]

    def forkserver_files(self) -> list[Path]:
        """What is in the fork servers' dir (sockets and lock files while they run)."""
        try:
            return sorted(self.forkserver_dir.iterdir())
        except FileNotFoundError:
            return []

    def mounts(self) -> list[str]:
        """Mount points below our temp dir (rootfs mounts the shims left behind)."""
        base = str(self.base) + "/"
        return [p for p in _mountpoints() if p.startswith(base)]

    def shim_sockets(self, ids: Sequence[str], namespace: str | None = None) -> list[Path]:
        """Those of the shim sockets for `ids` that still exist."""
        return [p for p in (self.shim_socket(i, namespace) for i in ids) if os.path.lexists(p)]
