"""Resolving paths inside the rootfs as the container sees it, and the env forms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.wasm import modules
from trioshim.wasm import WasmLaunchError, resolve_in_root, resolve_launch


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "app" / "bin").mkdir(parents=True)
    return root


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/app/bin", "app/bin"),
        ("app//bin/.", "app/bin"),
        ("/../../etc/passwd", "etc/passwd"),  # ".." stops at the root
        ("/app/../../app", "app"),
        ("/missing/tail", "missing/tail"),  # need not exist
        ("/", ""),
    ],
)
def test_lexical_paths_stay_in_the_root(root: Path, path: str, inside: str) -> None:
    expected = str(root / inside) if inside else str(root)
    assert resolve_in_root(str(root), path) == expected


def test_symlinks_are_followed_with_the_root_as_slash(root: Path) -> None:
    (root / "abs").symlink_to("/app/bin")  # absolute: the rootfs' /app/bin, not the host's
    (root / "app" / "rel").symlink_to("bin")
    (root / "escape").symlink_to("../../../../../../etc")  # climbs: stops at the root
    (root / "hostabs").symlink_to("/etc/passwd")
    (root / "chain").symlink_to("/abs/x")
    assert resolve_in_root(str(root), "/abs") == str(root / "app" / "bin")
    assert resolve_in_root(str(root), "/app/rel/x") == str(root / "app" / "bin" / "x")
    assert resolve_in_root(str(root), "/escape/passwd") == str(root / "etc" / "passwd")
    assert resolve_in_root(str(root), "/hostabs") == str(root / "etc" / "passwd")
    assert resolve_in_root(str(root), "/chain") == str(root / "app" / "bin" / "x")


def test_a_symlink_loop_is_an_error(root: Path) -> None:
    (root / "a").symlink_to("/b")
    (root / "b").symlink_to("/a")
    with pytest.raises(WasmLaunchError, match="too many levels"):
        resolve_in_root(str(root), "/a/x")


def test_a_module_link_pointing_out_of_the_rootfs_is_not_followed_out(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.wasm"
    outside.write_bytes(b"\0asm\1\0\0\0")  # a valid header outside the rootfs
    (root / "m.wasm").symlink_to(os.path.relpath(outside, root))  # ../outside.wasm
    with pytest.raises(WasmLaunchError, match="No such file"):
        resolve_launch(str(root), ["/m.wasm"], [])


@pytest.mark.parametrize("env", [["A=1", "B=x=y", "EMPTY="], {"A": "1", "B": "x=y", "EMPTY": ""}])
def test_env_as_oci_list_or_mapping(root: Path, env: list[str] | dict[str, str]) -> None:
    module = modules.install(root, "hello.wasm", modules.HELLO)
    request = resolve_launch(str(root), [module], env)
    assert request.env == (("A", "1"), ("B", "x=y"), ("EMPTY", ""))


@pytest.mark.parametrize("entry", ["NOEQUALS", "=value"])
def test_a_malformed_env_entry_is_refused(root: Path, entry: str) -> None:
    module = modules.install(root, "hello.wasm", modules.HELLO)
    with pytest.raises(WasmLaunchError, match="bad environment entry"):
        resolve_launch(str(root), [module], [entry])
