"""Debian packages fetched into a cache of our own, without touching the system's apt.

Packages come through `apt-get download` with a PRIVATE sources list and lists dir (the
suites are derived from the machine's own bookworm entry, same mirror and keyring), and are
unpacked with `dpkg -x` into a cache folder; only the files asked for are kept. Nothing of the
system's apt configuration, sources, lists or installed packages is touched. The lists are
deleted after a fetch: a fetch is rare and refreshes them anyway.

Cache: `$TRIOSHIM_CACHE_DIR`, else `$XDG_CACHE_HOME/trioshim`, else `~/.cache/trioshim` (one
download per item per machine, shared by every clone and CI run). Layout:

    <cache>/apt/sources.list                      private apt sources (lists/ while fetching)
    <cache>/<key>/...                             one fetched item: the files kept
    <cache>/<key>/VERSION                         its Debian version; present = complete
    <cache>/.<name>.lock                          machine-wide locks (flock)

What is fetched is decided by the callers (tests.support.containerd_lines: the containerd
lines and the CRI api.proto; tests.support.criu: criu's source).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "TRIOSHIM_CACHE_DIR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# apt lists older than this are refreshed before a download (only when something is missing).
LISTS_MAX_AGE = 6 * 3600


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trioshim"


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """A machine-wide lock (flock) so concurrent test processes fetch once."""
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------- apt plumbing


def _bookworm_source() -> tuple[str, str]:
    """(mirror URI, keyring) of the machine's bookworm `main` entry, deb822 or one-line."""
    apt = Path("/etc/apt")
    files = [apt / "sources.list"]
    parts = apt / "sources.list.d"
    if parts.is_dir():
        files += sorted(parts.iterdir())
    for f in files:
        if not f.is_file():
            continue
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if (
                    "deb" in fields.get("types", "").split()
                    and "bookworm" in fields.get("suites", "").split()
                    and "main" in fields.get("components", "").split()
                ):
                    uri = fields.get("uris", "").split()[0]
                    return uri, fields.get("signed-by", DEFAULT_KEYRING) or DEFAULT_KEYRING
        elif f.name == "sources.list" or f.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+bookworm\s+(.*)", line)
                if m and "main" in m.group(3).split():
                    opts = m.group(1) or ""
                    k = re.search(r"signed-by=(\S+?)\]?(\s|$)", opts)
                    return m.group(2), k.group(1) if k else DEFAULT_KEYRING
    return DEFAULT_MIRROR, DEFAULT_KEYRING


def apt_dir() -> Path:
    return cache_dir() / "apt"


def apt_options() -> list[str]:
    d = apt_dir()
    return [
        "-o",
        f"Dir::Etc::SourceList={d / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={d / 'lists'}",
        # No binary package cache on disk (as the system's docker-clean conf has it): each apt
        # call parses the lists, so everything missing is downloaded in ONE call.
        "-o",
        "Dir::Cache::pkgcache=",
        "-o",
        "Dir::Cache::srcpkgcache=",
        "-o",
        "Acquire::Languages=none",
        # Download as root into our own dir (no "_apt cannot access" warning).
        "-o",
        "APT::Sandbox::User=root",
        "-q",
    ]


def apt_update(
    suites: tuple[str, ...] = ("trixie", "sid"), source_suites: tuple[str, ...] = ()
) -> None:
    """Refresh the private lists: binary packages of `suites`, source packages (deb-src) of
    `source_suites`."""
    d = apt_dir()
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    mirror, keyring = _bookworm_source()
    sources = "".join(f"deb [signed-by={keyring}] {mirror} {s} main\n" for s in suites)
    sources += "".join(f"deb-src [signed-by={keyring}] {mirror} {s} main\n" for s in source_suites)
    src = d / "sources.list"
    stamp = d / "lists" / ".updated"
    fresh = (
        src.is_file()
        and src.read_text() == sources
        and stamp.is_file()
        and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
    )
    if fresh:
        return
    src.write_text(sources)
    run_checked(["apt-get", *apt_options(), "update"], timeout=600)
    stamp.touch()


def _apt_download(specs: list[str], dest: Path) -> list[Path]:
    """One `apt-get download SPEC...` into dest; returns the .debs."""
    dest.mkdir(parents=True, exist_ok=True)
    run_checked(["apt-get", *apt_options(), "download", *specs], cwd=dest, timeout=900)
    return sorted(dest.glob("*.deb"))


def _pick_deb(debs: list[Path], package: str, version_prefix: str) -> Path:
    """The .deb of `package` whose version starts with `version_prefix` (the same package comes
    from two suites: containerd 1.7 from trixie, 2.1 from sid)."""
    found = [
        d
        for d in debs
        if d.name.split("_")[0] == package and _deb_version(d).startswith(version_prefix)
    ]
    if len(found) != 1:
        raise RuntimeError(
            f"no single {package} {version_prefix}* among {[d.name for d in debs]}: "
            "did the suite move on? update LINE_SPECS in tests/support/containerd_lines.py"
        )
    return found[0]


def run_checked(argv: list[str], *, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run argv and return its stdout; RuntimeError with both outputs if it fails."""
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def _deb_version(deb: Path) -> str:
    return run_checked(["dpkg-deb", "-f", str(deb), "Version"]).strip()


@dataclass(frozen=True)
class CacheItem:
    """One package to bring into <cache>/<key>: `spec` for apt-get download (`pkg/suite`), the
    paths inside the package to keep, and the Debian version prefix it must have."""

    key: str
    spec: str
    keep: tuple[str, ...]
    version_prefix: str = ""

    @property
    def dir(self) -> Path:
        return cache_dir() / self.key

    @property
    def done(self) -> bool:
        return (self.dir / "VERSION").is_file()


def fetch_items(items: list[CacheItem]) -> None:
    """Bring every item into the cache with one `apt-get update` and one `apt-get download`
    (the caller holds the "fetch" lock and passes only what is missing)."""
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=".fetch-") as tmp:
        t = Path(tmp)
        apt_update()
        debs = _apt_download([f.spec for f in items], t / "deb")
        for f in items:
            deb = _pick_deb(debs, f.spec.split("/")[0], f.version_prefix)
            version = _deb_version(deb)
            unpacked = t / "x" / f.key
            unpacked.mkdir(parents=True)
            run_checked(["dpkg", "-x", str(deb), str(unpacked)], timeout=300)
            out = t / "out" / f.key
            for rel in f.keep:
                src = unpacked / rel
                if not src.exists():
                    raise RuntimeError(f"{deb.name} has no {rel}")
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                src.rename(out / rel)
            (out / "VERSION").write_text(version + "\n")
            if f.dir.exists():  # a half-made leftover without VERSION
                shutil.rmtree(f.dir)
            f.dir.parent.mkdir(parents=True, exist_ok=True)
            out.rename(f.dir)
    # The lists (~40 MB) only serve the next fetch, which is rare and refreshes them anyway.
    shutil.rmtree(apt_dir() / "lists", ignore_errors=True)
