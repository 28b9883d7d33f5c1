"""The benchmark's environment measures the build it is given, in either mode of ours."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.env import BenchEnv
from bench.runtimes import OURS_BINARY, SHARED_BINARY
from tests.support.containerd import venv_bin_dir


@contextmanager
def bench_env(ours_binary: Path, *, shared: bool) -> Iterator[BenchEnv]:
    env = BenchEnv(ours_binary=str(ours_binary), shared=shared)  # nothing started yet
    try:
        yield env
    finally:
        shutil.rmtree(env.base, ignore_errors=True)


def test_a_given_build_is_measured_in_shared_mode_too(tmp_path: Path) -> None:
    given = Path(venv_bin_dir()) / OURS_BINARY
    for shared, name in ((False, OURS_BINARY), (True, SHARED_BINARY)):
        with bench_env(given, shared=shared) as env:
            assert env.ours.binary == str(env.bin_dir / name)
            assert os.path.realpath(env.ours.binary) == str(given.parent.resolve() / name)
            assert env.containerd.path.startswith(f"{env.bin_dir}:")  # what containerd finds
            assert env.ours.unavailable is None

    # A build without a shared launcher is not measured as shared (no other build instead).
    lone = tmp_path / OURS_BINARY
    lone.write_text("#!/bin/sh\n")
    with bench_env(lone, shared=True) as env:
        assert env.ours.binary is None
        assert env.ours.unavailable is not None and SHARED_BINARY in env.ours.unavailable
