"""criu for the checkpoint/restore tests, built from Debian's source and kept in the cache.

Why built here: bookworm's criu 3.17 fails `criu check` on current kernels (it cannot parse
their vDSO symbol table), and trixie's criu 4.x package is linked against glibc 2.38 (bookworm
has 2.36). The upstream tarball of trixie's source package builds against bookworm's libraries
in well under a minute (`make criu`, no docs, no python tools); scripts/setup installs the build
dependencies and calls `python -m tests.support.criu`.

The tarball comes through `apt-get source --download-only` with the private apt configuration
of tests.support.debian_cache (a `deb-src` entry for trixie derived from the machine's own
bookworm entry; apt checks the file against the signed index). Only the `.orig.tar.*` is used:
Debian's packaging adds nothing the binary needs.

Cache (see debian_cache.cache_dir): <cache>/criu/criu and <cache>/criu/VERSION (upstream
version; present = complete). The binary is never installed on the system: tests hand its path
to runc (the shim options' criu_path) or put its directory on containerd's PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.debian_cache import apt_dir, apt_options, apt_update, cache_dir, locked

SUITE = "trixie"
VERSION_PREFIX = "4."
BUILD_TIMEOUT = 1800


def criu_dir() -> Path:
    return cache_dir() / "criu"


def criu_binary() -> Path:
    """The built criu (built first if the cache has none)."""
    d = criu_dir()
    if not (d / "VERSION").is_file():
        with locked("fetch"):  # the private apt dir is shared with the containerd fetch
            if not (d / "VERSION").is_file():
                _build(d)
    return d / "criu"


def criu_check(binary: Path | str) -> str | None:
    """Why `criu check` fails on this machine (its output), or None when it passes."""
    r = subprocess.run(
        [str(binary), "check"], capture_output=True, text=True, timeout=120, check=False
    )
    return None if r.returncode == 0 else f"exit {r.returncode}: {r.stdout}{r.stderr}".strip()


def _build(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".criu-") as tmp:
        t = Path(tmp)
        tarball = _download_source(t / "src")
        version = tarball.name.removeprefix("criu_").split(".orig.tar")[0]
        if not version.startswith(VERSION_PREFIX):
            raise RuntimeError(f"{tarball.name}: expected criu {VERSION_PREFIX}x in {SUITE}")
        _step(["tar", "-xf", str(tarball), "-C", str(t)], timeout=300)
        tree = t / f"criu-{version}"
        jobs = str(os.cpu_count() or 1)
        _step(["nice", "make", "-j", jobs, "criu"], cwd=tree, timeout=BUILD_TIMEOUT)
        out = t / "out"
        out.mkdir()
        shutil.copy2(tree / "criu" / "criu", out / "criu")
        (out / "VERSION").write_text(version + "\n")
        if dest.exists():  # a half-made leftover without VERSION
            shutil.rmtree(dest)
        out.rename(dest)


def _download_source(where: Path) -> Path:
    """criu's upstream tarball from trixie's source package, checked by apt."""
    where.mkdir(parents=True)
    try:
        apt_update(suites=(), source_suites=(SUITE,))
        argv = ["apt-get", *apt_options(), "source", "--download-only", f"criu/{SUITE}"]
        r = subprocess.run(argv, cwd=where, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(apt_dir() / "lists", ignore_errors=True)  # ~10 MB, only for this fetch
    # A mirror may lack the .dsc or Debian's patch tarball (apt then exits non-zero): only the
    # upstream tarball is needed, and apt keeps a file only once its hash matched the index.
    found = sorted(where.glob("criu_*.orig.tar.*"))
    if len(found) != 1:
        raise RuntimeError(f"{' '.join(argv)} brought no criu tarball:\n{r.stdout}\n{r.stderr}")
    return found[0]


def _step(argv: list[str], *, cwd: Path | None = None, timeout: float) -> None:
    r = subprocess.run(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if r.returncode != 0:
        tail = "\n".join(r.stdout.splitlines()[-40:])
        raise RuntimeError(
            f"{' '.join(argv)} failed ({r.returncode}); build dependencies are installed by "
            f"scripts/setup:\n{tail}"
        )


def main() -> int:
    """Build criu if the cache has none; print where, how long, and what `criu check` says."""
    t0 = time.monotonic()
    binary = criu_binary()
    version = (binary.parent / "VERSION").read_text().strip()
    print(f"criu {version} in {time.monotonic() - t0:.1f}s: {binary}")
    problem = criu_check(binary)
    print(f"criu check: {problem or 'ok'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
