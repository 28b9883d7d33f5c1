"""The installed ``containerd-shim-trioshim-v2`` (launcher/containerd-shim-trioshim-v2): Python
without ``site`` until something runs in-process, from the venv or through a symlink."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.containerd import venv_bin_dir

SCRIPT = Path(venv_bin_dir()) / "containerd-shim-trioshim-v2"


def _imports(argv: list[str]) -> list[str]:
    """The modules the run imported, in order (``PYTHONVERBOSE``, which ``-S`` honours)."""
    env = {**os.environ, "PYTHONVERBOSE": "1", "TRIOSHIM_FORKSERVER": "0"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True, timeout=60)
    assert "Version:" in out.stdout
    return [
        line.split("'")[1]
        for line in out.stderr.splitlines()
        if line.startswith("import '") and "'" in line[8:]
    ]


def test_the_installed_script_is_the_launcher_not_a_console_script() -> None:
    source = Path(__file__).resolve().parents[2] / "launcher" / SCRIPT.name
    assert SCRIPT.read_text() == source.read_text(), (
        f"{SCRIPT} is not {source} (a console script, or an older copy: pip install -e . again)"
    )


def test_the_helper_side_is_imported_before_site_and_re() -> None:
    imported = _imports([str(SCRIPT), "-v"])
    helper = imported.index("trioshim.shim.forkserver")
    # -v runs in-process, so site comes, but only after the helper side: a `start` handed to
    # the fork server never gets that far.
    assert "site" in imported[helper:]
    assert "site" not in imported[:helper]
    assert "re" not in imported[:helper]


def test_a_symlink_to_the_script_runs_the_venvs_interpreter(tmp_path: Path) -> None:
    link = tmp_path / SCRIPT.name
    link.symlink_to(SCRIPT)
    imported = _imports([str(link), "-v"])
    assert "trioshim.shim.forkserver" in imported


def test_without_site_the_helper_side_imports_only_built_ins() -> None:
    tree = Path(__file__).resolve().parents[2]
    heavy = ("site", "importlib", "warnings", "re", "enum", "typing", "socket", "struct", "trio")
    code = (
        f"import sys; sys.path.append({str(tree)!r}); "
        "import trioshim.runc.launcher, trioshim.shim.forkserver; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_shared_name_linked_to_the_script_runs_the_shared_runtime(tmp_path: Path) -> None:
    """``launcher/containerd-shim-trioshim-shared-v2`` is a symlink to this script: the name
    containerd ran, not the file it resolves to, picks the runtime."""
    link = tmp_path / "containerd-shim-trioshim-shared-v2"
    link.symlink_to(SCRIPT)
    out = subprocess.run(
        [str(link), "-info"], stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60
    )
    assert b"io.containerd.trioshim-shared.v2" in out.stdout
