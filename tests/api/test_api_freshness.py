"""The committed trioshim/api tree must be exactly what tools/genproto.py generates now."""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import subprocess
import sys

import trioshim.api

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "trioshim" / "api"


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_tree_is_fresh(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "api"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "genproto.py"), str(out)], check=True, cwd=ROOT
    )
    fresh, committed = _tree(out), _tree(COMMITTED)
    hint = "trioshim/api is stale: run `nox -s proto` (python tools/genproto.py) and commit"
    assert sorted(fresh) == sorted(committed), hint
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"{hint}; differing: {stale}"


def test_every_generated_module_imports() -> None:
    names = [
        info.name
        for info in pkgutil.walk_packages(trioshim.api.__path__, prefix="trioshim.api.")
        if info.name.endswith("_pb2")
    ]
    for name in names:
        importlib.import_module(name)
    # Every .proto has its module.
    protos = sorted((ROOT / "proto").rglob("*.proto"))
    assert len(names) == len(protos) > 10
