"""Build a minimal busybox root filesystem from the host's static busybox (busybox-static)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
nogroup:x:65534:
"""


def _applets(busybox: Path) -> list[str]:
    """Applet paths relative to the root (`bin/sh`, `usr/bin/awk`, ...)."""
    try:
        out = subprocess.run(
            [str(busybox), "--list-full"], capture_output=True, check=True, timeout=30
        ).stdout
        return [line for line in out.decode().split() if line]
    except subprocess.CalledProcessError:
        # Older busybox builds only know --list: put everything in bin/.
        out = subprocess.run(
            [str(busybox), "--list"], capture_output=True, check=True, timeout=30
        ).stdout
        return [f"bin/{name}" for name in out.decode().split() if name]


def build_busybox_rootfs(dest: Path | str, busybox: Path | str = BUSYBOX) -> Path:
    """Create `dest` as a busybox root filesystem and return it (absolute).

    Layout: bin/busybox plus symlinks per applet (pointing at /bin/busybox, so they resolve
    inside the container) both where busybox puts them and in bin/; etc/passwd, etc/group,
    etc/hostname; empty dev, proc, sys, tmp, run, root and var/tmp directories.
    """
    busybox = Path(busybox)
    if not busybox.is_file():
        raise FileNotFoundError(
            f"{busybox} not found: install busybox-static (apt-get install busybox-static)"
        )
    root = Path(dest).absolute()
    root.mkdir(parents=True, exist_ok=True)
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "dev",
        "proc",
        "sys",
        "run",
        "root",
        "var/tmp",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    os.chmod(tmp, 0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for rel in _applets(busybox):
        # Every applet at its usual place and in bin/, so `/bin/<applet>` always works.
        for link in (root / rel, root / "bin" / Path(rel).name):
            if link.name == "busybox" or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "hostname").write_text("busybox\n")
    # Sanity: the applets we rely on must exist.
    for needed in ("sh", "cat", "echo", "sleep", "stty", "sha256sum", "head", "dd", "true"):
        if not (root / "bin" / needed).is_symlink():
            raise RuntimeError(f"busybox at {busybox} lacks the {needed!r} applet")
    return root
