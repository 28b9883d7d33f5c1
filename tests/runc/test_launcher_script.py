"""The installed ``containerd-shim-trioshim-v2`` (launcher/containerd-shim-trioshim-v2): Python
without ``site`` until something runs in-process, from the venv or through a symlink."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _prefix_with(tmp_path: Path, layout: str) -> Path:
    """A venv at ``tmp_path`` holding the launcher and this venv's packages, trioshim installed
    as ``layout`` says: ``wheel`` (the package in site-packages), ``editable`` or
    ``editable-old`` (a .pth naming the tree, as hatchling writes it now and did before), or
    ``other`` (a .pth the launcher does not read)."""
    tree = Path(__file__).resolve().parents[2]
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site_packages = tmp_path / "lib" / version / "site-packages"
    site_packages.mkdir(parents=True)
    ours = Path(venv_bin_dir()).parent / "lib" / version / "site-packages"
    for entry in ours.iterdir():
        if not (entry.name.endswith(".pth") and "trioshim" in entry.name):
            (site_packages / entry.name).symlink_to(entry)
    pth = {"editable": "_editable_impl_trioshim.pth", "editable-old": "_trioshim.pth"}
    if layout == "wheel":
        (site_packages / "trioshim").symlink_to(tree / "trioshim")
    else:
        (site_packages / pth.get(layout, "other.pth")).write_text(f"{tree}\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(os.path.realpath(sys.executable))
    home = Path(os.path.realpath(sys.executable)).parent
    (tmp_path / "pyvenv.cfg").write_text(f"home = {home}\n")
    script = tmp_path / "bin" / SCRIPT.name
    script.write_bytes(SCRIPT.read_bytes())
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("layout", ["wheel", "editable", "editable-old"])
def test_the_package_is_found_without_site_when_installed_as_a_wheel_or_editable(
    tmp_path: Path, layout: str
) -> None:
    imported = _imports([str(_prefix_with(tmp_path, layout)), "-v"])
    assert imported.index("trioshim.shim.forkserver") < imported.index("site")


def test_another_layout_runs_site_to_find_the_package(tmp_path: Path) -> None:
    imported = _imports([str(_prefix_with(tmp_path, "other")), "-v"])
    assert imported.index("site") < imported.index("trioshim.shim.forkserver")


def test_the_script_names_the_apps_and_runtime_of_the_runc_launcher_module() -> None:
    """The script spells them out (importing ``trioshim.runc.launcher`` would cost every
    helper); the fork server's and the shared process's sockets are keyed by them."""
    from trioshim.runc import launcher
    from trioshim.runc.manager import SharedRuncManager

    source = SCRIPT.read_text()
    assert f'_launch("{launcher.APP}")' in source
    assert f'_launch("{launcher.SHARED_APP}", "{launcher.SHARED_RUNTIME}")' in source
    assert SharedRuncManager.name == launcher.SHARED_RUNTIME
