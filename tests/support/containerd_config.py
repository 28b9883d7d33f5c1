"""The config.toml of a private containerd: what every line's file holds (the format
version is the caller's: 2 for 1.x, 3 for 2.x) and the plugins a test daemon runs without."""

from __future__ import annotations

from collections.abc import Sequence

from tests.support.containerd_layout import ContainerdLayout

# Plugins a test daemon does not need (CRI would also want CNI and an image store).
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


def config_toml(
    layout: ContainerdLayout, *, version: int, disabled: Sequence[str], log_level: str
) -> str:
    """The part of config.toml every line shares: where the daemon keeps things and listens,
    its log level, the plugins disabled."""
    disabled_list = ", ".join(f'"{p}"' for p in disabled)
    return f"""\
version = {version}
root = "{layout.root}"
state = "{layout.state}"
disabled_plugins = [{disabled_list}]
oom_score = 0

[grpc]
  address = "{layout.address}"

[ttrpc]
  address = "{layout.ttrpc_address}"

[debug]
  address = ""
  level = "{log_level}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.base / "opt"}"

[plugins."io.containerd.runtime.v2.task"]
  platforms = ["linux/amd64"]
"""
