"""A shim binary wrapper that makes containerd fail right after a successful ``start``.

Usage (as the body of a ``containerd-shim-<name>-v2`` script)::

    python fill_after_start.py REAL_SHIM FILLER RECORD_DIR SHIM_ARGS...

Runs ``REAL_SHIM SHIM_ARGS...`` with our stdin and stderr. When the action is ``start`` and it
succeeded, before handing the address to containerd it

1. records ``{"address": ..., "pids": [...]}`` in ``RECORD_DIR/<id>.json``: the processes that
   hold the daemon's listening socket (the daemon itself, found before containerd can react);
2. fills the filesystem of ``FILLER`` (containerd's state dir on a small tmpfs) to the last
   byte, so that containerd's next write into the bundle, ``shim-binary-path``, fails with
   ``ENOSPC``: containerd abandons the shim it just started (removes the bundle, never calls
   Shutdown), exactly as when its state filesystem is full.

Every other action is passed through unchanged.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys

_CHUNKS = (1 << 20, 4096, 1)


def _address(reply: bytes) -> str:
    """The socket address of a ``start`` reply (plain, or 2.x's JSON with a version)."""
    text = reply.decode().strip()
    if text.startswith("{"):
        text = str(json.loads(text)["address"])
    return text.removeprefix("unix://")


def _socket_inodes(path: str) -> set[str]:
    found = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path:
                found.add(fields[6])
    return found


def _holders(path: str) -> list[int]:
    """Pids with an open file descriptor on the unix socket bound to ``path``."""
    wanted = {f"socket:[{inode}]" for inode in _socket_inodes(path)}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            links = {
                os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")
            }
        except OSError:
            continue
        if links & wanted:
            pids.append(int(entry))
    return pids


def _fill(path: str) -> None:
    """Write zeros to ``path`` until the filesystem refuses even one byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in _CHUNKS:
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def _shim_id(args: list[str]) -> str:
    for flag, value in itertools.pairwise(args):
        if flag in ("-id", "--id"):
            return value
    raise SystemExit("fill_after_start: no -id")


def main(argv: list[str]) -> int:
    real, filler, record_dir, *args = argv
    proc = subprocess.run([real, *args], stdout=subprocess.PIPE, check=False)
    if proc.returncode == 0 and args and args[-1] == "start":
        address = _address(proc.stdout)
        record = {"address": address, "pids": _holders(address)}
        with open(os.path.join(record_dir, _shim_id(args) + ".json"), "w") as f:
            json.dump(record, f)
        _fill(filler)
    sys.stdout.buffer.write(proc.stdout)
    sys.stdout.flush()
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
