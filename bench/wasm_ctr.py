"""`ctr run --rm` of a hello module through containerd-shim-triowasm-v2, plain entry point
versus the import-light launcher with the fork server.

    .venv/bin/python -m bench.wasm_ctr [--iterations 10] [--line 1.7]

A private containerd of the line runs both; each variant is a script named
``containerd-shim-triowasm-v2`` in a directory of its own (``ctr run --runtime PATH``): the
plain one calls ``trioshim.wasm.main:main`` (every start imports trio, protobuf and the kit),
the other ``trioshim.wasm.launcher:main`` (start and delete served by the fork server). Rounds
alternate the variants; round 0 is a warm-up (it also starts the launcher's fork server) and is
not counted. Timed: the whole `ctr run --rm` command, module output checked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.results import summary
from tests.support.containerd_lines import get_line
from tests.support.line_containerd import LineContainerd
from tests.wasm import modules

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"plain": "trioshim.wasm.main", "launcher": "trioshim.wasm.launcher"}


def _script(directory: Path, module: str) -> str:
    directory.mkdir()
    path = directory / "containerd-shim-triowasm-v2"
    path.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        f"from {module} import main\nmain()\n"
    )
    path.chmod(0o755)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--line", default="1.7")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wasm-ctr-") as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs"
        rootfs.mkdir()
        module = modules.install(rootfs, "hello.wasm", modules.HELLO)
        shims = {name: _script(work / name, target) for name, target in VARIANTS.items()}
        daemon = LineContainerd(get_line(args.line))
        daemon.start()
        samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
        try:
            for i in range(args.iterations + 1):
                for name, shim in shims.items():
                    cid = f"bench-{name}-{i}"
                    t0 = time.monotonic()
                    r = daemon.ctr(
                        "run",
                        "--rm",
                        "--runtime",
                        shim,
                        "--rootfs",
                        str(rootfs),
                        cid,
                        module,
                        timeout=60,
                    )
                    elapsed = time.monotonic() - t0
                    if r.returncode != 0 or r.stdout != "hello, wasm\n":
                        raise SystemExit(f"{name}: ctr run failed: {r.stdout!r} {r.stderr}")
                    if i:
                        samples[name].append(elapsed)
        finally:
            daemon.stop()
    for name, values in samples.items():
        print(f"{name:9s} {summary(values)}")


if __name__ == "__main__":
    main()
