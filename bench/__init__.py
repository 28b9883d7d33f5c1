"""Benchmarks: trioshim side by side with containerd-shim-runc-v2, in the same run.

Run ``python -m bench --help`` (or ``nox -s bench``). Every benchmark measures the reference
shim (Debian's containerd 1.6.20 ``containerd-shim-runc-v2``) and ours
(``containerd-shim-trioshim-v2``) through one private containerd, and prints the ratio
ours/reference; see docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# `tests.support` (the private containerd, the busybox rootfs) and `trioshim` from the tree.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
