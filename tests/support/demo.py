"""`python -m tests.support.demo`: one busybox container through trioshim, then clean up.

Starts a private containerd (own root, state, sockets; unique namespace), builds a busybox
rootfs in a temp dir, runs

    ctr run --rm --runtime io.containerd.trioshim.v2 --rootfs DIR ID /bin/echo hello from trioshim

shows what the container printed, stops containerd and removes everything. The runtime can be
overridden with TRIOSHIM_DEMO_RUNTIME (e.g. io.containerd.runc.v2, the Go reference).
Exit status: the container's.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.support.containerd import PrivateContainerd
from tests.support.rootfs import build_busybox_rootfs

DEFAULT_RUNTIME = "io.containerd.trioshim.v2"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runtime", default=os.environ.get("TRIOSHIM_DEMO_RUNTIME") or DEFAULT_RUNTIME
    )
    parser.add_argument(
        "command", nargs="*", default=["/bin/echo", "hello", "from", "trioshim"],
        help="command to run in the container (default: /bin/echo hello from trioshim)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("needs root (containerd and runc)")
        return 1

    workdir = Path(tempfile.mkdtemp(prefix="trioshim-demo-"))
    daemon = PrivateContainerd(namespace=f"trioshim-demo-{secrets.token_hex(3)}")
    status = 1
    try:
        rootfs = build_busybox_rootfs(workdir / "rootfs")
        say(f"busybox rootfs at {rootfs}")
        daemon.start()
        say(f"private containerd listening on {daemon.address} (namespace {daemon.namespace})")
        cid = f"demo-{secrets.token_hex(3)}"
        cmd = ["run", "--rm", "--runtime", args.runtime, "--rootfs", str(rootfs), cid,
               *args.command]  # fmt: skip
        say("$ ctr " + " ".join(cmd))
        t0 = time.monotonic()
        r = daemon.ctr(*cmd, timeout=120)
        took = time.monotonic() - t0
        print("----- container output -----")
        sys.stdout.write(r.stdout)
        if r.stderr:
            sys.stdout.write(r.stderr)
        print("----------------------------", flush=True)
        say(f"exit status {r.returncode} after {took:.2f}s")
        if r.returncode != 0:
            say(f"containerd log tail:\n{daemon.log_tail(40)}")
        status = r.returncode
    except Exception as e:  # show the log, then clean up
        say(f"failed: {e}")
        if daemon.running:
            say(f"containerd log tail:\n{daemon.log_tail(40)}")
    finally:
        forced = daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if forced:
            say(f"cleaned up by force: {', '.join(forced)}")
            status = status or 1
        say("stopped containerd and removed its files, the rootfs and the namespace's leftovers")
    return status


if __name__ == "__main__":
    sys.exit(main())
