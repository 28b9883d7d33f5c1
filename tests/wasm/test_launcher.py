"""The console script of containerd-shim-triowasm-v2: import-light, and its app is the kit's
manager and plugins over the wasm engine (what the fork server imports)."""

from __future__ import annotations

from tests.support.forkserver_env import modules_loaded_by
from trioshim.task.main import TaskManager
from trioshim.wasm import launcher


def test_importing_the_launcher_is_light() -> None:
    heavy = (
        "trio",
        "google.protobuf",
        "wasmtime",
        "trioshim.task",
        "trioshim.wasm.engine",
        "typing",
    )
    assert modules_loaded_by("trioshim.wasm.launcher", heavy) == []


def test_the_app_is_the_kit_over_the_wasm_engine() -> None:
    manager, registry = launcher.app()
    assert isinstance(manager, TaskManager)
    assert manager.name == "io.containerd.triowasm.v2"
    assert registry is not None
