"""The two runtimes a benchmark compares (the Go reference and ours, optionally in shared
mode): their containerd names and binaries, and how ours is made runnable from this tree when
it is not installed (a generated launcher, its bytecode written first)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import REPO

REFERENCE_RUNTIME = "io.containerd.runc.v2"
OURS_RUNTIME = "io.containerd.trioshim.v2"
REFERENCE_BINARY = "containerd-shim-runc-v2"
OURS_BINARY = "containerd-shim-trioshim-v2"
SHARED_RUNTIME = "io.containerd.trioshim-shared.v2"
SHARED_BINARY = "containerd-shim-trioshim-shared-v2"
# ours's fork server (trioshim/shim/forkserver.py): `python -m trioshim.shim.forkserver serve`;
# its socket dir is made private to the run through this variable in containerd's environment.
FORKSERVER_MODULE = "trioshim.shim.forkserver"
FORKSERVER_DIR_ENV = "TRIOSHIM_FORKSERVER_DIR"


@dataclass
class Runtime:
    key: str  # "ref" or "ours"
    label: str
    name: str  # the containerd runtime name
    binary_name: str  # the binary containerd looks up on its PATH
    group_annotation: str
    binary: str | None = None  # resolved path, when known
    unavailable: str | None = None  # why it cannot run (ours before it lands)

    @property
    def short(self) -> str:
        return "rc" if self.key == "ref" else "ts"


OURS_ENTRY = "trioshim.runc.launcher:main"


def _entry_point() -> tuple[str, str]:
    """``(module, function)`` of ours's entry: a console script's from pyproject.toml, else
    what the installed launcher script calls."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        spec = tomllib.load(f)["project"].get("scripts", {}).get(OURS_BINARY, OURS_ENTRY)
    module, _, function = spec.partition(":")
    return module, function or "main"


def ours_launcher(bin_dir: Path) -> tuple[str | None, str | None]:
    """A console-script launcher for ours (its entry point, see :func:`_entry_point`), when the
    package is in the tree but not installed in the venv.
    Returns (path, None) or (None, why not)."""
    try:
        module, function = _entry_point()
    except (OSError, KeyError, ValueError) as exc:
        return None, f"{OURS_BINARY} not installed and no entry point in pyproject.toml: {exc}"
    probe = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; assert callable(m.{function})"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
    )
    if probe.returncode != 0:
        tail = probe.stderr.strip().splitlines()[-1:] or ["?"]
        return None, f"{OURS_BINARY} not installed and {module} not importable: {tail[0]}"
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / OURS_BINARY
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"from {module} import {function}\n"
        f"sys.exit({function}())\n"
    )
    path.chmod(0o755)
    return str(path), None


# ------------------------------------------------------------------------------- environment


def compile_tree() -> None:
    """Write the bytecode of this tree's ``trioshim``, as installing a wheel does. An editable
    install run with ``PYTHONDONTWRITEBYTECODE=1`` (set in some shells, inherited by containerd
    and so by the shims) never writes it, and every start and delete helper would then compile
    the modules it imports: about 5 ms each, which an installed shim never pays."""
    import compileall

    import trioshim

    compileall.compile_dir(Path(trioshim.__file__).parent, quiet=1)


def is_shared_process(argv: Sequence[str]) -> bool:
    """A shared-mode process: the shared binary with a containerd address but no shim id."""
    return any(os.path.basename(a) == SHARED_BINARY for a in argv[:3]) and "-id" not in argv
