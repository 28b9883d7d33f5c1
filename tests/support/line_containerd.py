"""A private containerd of one containerd line (tests.support.containerd_lines): that line's
binaries, its config file format and plugins, and the shim processes serving it."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from tests.support.containerd import PrivateContainerd, default_path, venv_bin_dir
from tests.support.containerd_config import config_toml
from tests.support.containerd_layout import all_pids, proc_cmdline
from tests.support.containerd_lines import ContainerdLine


class LineContainerd(PrivateContainerd):
    """PrivateContainerd running the binaries of one containerd line, with the config format of
    that line (version 2 for 1.x, version 3 for 2.x) and `extra_config` TOML appended.

    PATH for containerd (hence for shim lookup, and runc's for criu): `extra_path` first, then
    the venv's bin (containerd-shim-trioshim-v2), then the line's own bin dir (its
    containerd-shim-runc-v2), then the usual dirs.
    """

    def __init__(
        self,
        line: ContainerdLine,
        *,
        extra_config: str = "",
        extra_path: tuple[str, ...] = (),
        **kwargs: object,
    ) -> None:
        self.line = line
        self.extra_config = extra_config
        if "path" not in kwargs:
            first = [*extra_path, venv_bin_dir(), line.bin_dir]
            rest = [d for d in default_path().split(":") if d not in first]
            kwargs["path"] = ":".join([*first, *rest])
        kwargs.setdefault("containerd", line.containerd)
        kwargs.setdefault("ctr", line.ctr)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    @property
    def major(self) -> int:
        return self.line.major

    def banner(self) -> str:
        return f"=== trioshim test: containerd {self.line.version} at {time.ctime()} ===\n"

    # --- shims

    def shims(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every shim daemon serving this containerd: a process running a
        `containerd-shim*` binary (argv[0], or argv[1] for a Python script) whose argv has
        `-address <our address>` or whose environment has `TTRPC_ADDRESS=<our ttrpc address>`
        (what containerd gives every shim; our shim may choose its own daemon argv)."""
        found = []
        want_env = f"TTRPC_ADDRESS={self.ttrpc_address}".encode()
        for pid in all_pids():
            argv = proc_cmdline(pid)
            if not any(os.path.basename(a).startswith("containerd-shim") for a in argv[:2]):
                continue
            by_argv = any(
                a in ("-address", "--address") and argv[i + 1] == self.address
                for i, a in enumerate(argv[:-1])
            )
            by_env = False
            if not by_argv:
                with contextlib.suppress(OSError):
                    by_env = want_env in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if by_argv or by_env:
                found.append((pid, argv))
        return found

    # --- config

    def disabled_plugins(self) -> list[str]:
        """Plugins to disable; the CRI subclass keeps CRI."""
        disabled = super().disabled_plugins()
        if self.line.major >= 2:
            # 2.x split CRI into more plugins; aufs/zfs are gone (disabling them is harmless).
            disabled += ["io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
        return disabled

    def config_text(self) -> str:
        text = config_toml(
            self,
            version=self.line.config_version,
            disabled=self.disabled_plugins(),
            log_level=self.log_level,
        )
        text += """
# NRI (enabled by default from 2.0) listens on a machine-wide socket, /var/run/nri/nri.sock:
# two private daemons would fight over it.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
"""
        if self.line.major >= 2 or self.line.name == "1.7":
            # The transfer service (1.7+; what 2.x ctr uses to import images) unpacks into the
            # snapshotters listed here, overlayfs by default: disabled in these daemons.
            text += """
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "native"
"""
        if self.extra_config:
            text += "\n" + self.extra_config
        return text
