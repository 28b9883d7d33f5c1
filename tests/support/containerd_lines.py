"""Three containerd lines on one machine: bookworm's 1.6.20 (installed), trixie's 1.7.x and sid's
2.1.x (fetched, unpacked, run from a cache).

The newer lines come from Debian through `apt-get download` with a PRIVATE sources list and lists
dir (the suites are derived from the machine's own bookworm entry, same mirror and keyring), and
are unpacked with `dpkg -x` into a cache folder. Nothing of the system's apt configuration,
sources, lists or installed packages is touched. The same mechanism brings the CRI `api.proto`
from `golang-k8s-cri-api-dev` (sid).

Cache: `$TRIOSHIM_CACHE_DIR`, else `$XDG_CACHE_HOME/trioshim`, else `~/.cache/trioshim` (one
download per line per machine, shared by every clone and CI run). The first miss fetches
everything missing at once: one `apt-get update` (trixie + sid, main, ~20 MB of lists, deleted
afterwards) and one `apt-get download` (~62 MB of .debs, deleted after unpacking). Layout:

    <cache>/apt/sources.list                      private apt sources (lists/ while fetching)
    <cache>/containerd/<line>/usr/bin/...         containerd, ctr, containerd-shim-runc-v2
    <cache>/containerd/<line>/VERSION             Debian version; present = complete
    <cache>/cri-api/usr/share/gocode/.../api.proto, VERSION     the CRI API, same scheme
    <cache>/grpc-py/<module>-<hash>/              gRPC modules (tests.support.grpc_modules)

`python -m tests.support.containerd_lines` fetches everything and prints paths and timings.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.containerd import (
    CONTAINERD,
    CTR,
    PrivateContainerd,
    _pids,
    _proc_cmdline,
    default_path,
    venv_bin_dir,
)

CACHE_ENV = "TRIOSHIM_CACHE_DIR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# apt lists older than this are refreshed before a download (only when something is missing).
LISTS_MAX_AGE = 6 * 3600


@dataclass(frozen=True)
class LineSpec:
    """Where a containerd line comes from: Debian suite and the upstream version expected."""

    name: str
    suite: str | None  # None: the machine's own installed containerd
    expect: str  # upstream version prefix (x.y.z); a same-x.y update in the suite is accepted


LINE_SPECS: dict[str, LineSpec] = {
    "1.6": LineSpec("1.6", None, "1.6.20"),
    "1.7": LineSpec("1.7", "trixie", "1.7.24"),
    "2.1": LineSpec("2.1", "sid", "2.1.9"),
}
LINE_NAMES = tuple(LINE_SPECS)
FETCHED_LINE_NAMES = tuple(n for n, s in LINE_SPECS.items() if s.suite is not None)


@dataclass(frozen=True)
class ContainerdLine:
    """One usable containerd line: its binaries and what its config file looks like."""

    name: str  # "1.6", "1.7", "2.1"
    version: str  # `containerd --version`'s version word, e.g. "1.7.24~ds1"
    containerd: str
    ctr: str
    shim_runc_v2: str

    @property
    def bin_dir(self) -> str:
        return os.path.dirname(self.containerd)

    @property
    def major(self) -> int:
        return int(self.name.split(".")[0])

    @property
    def config_version(self) -> int:
        """config.toml `version`: 2 for 1.x, 3 for 2.x (2.x migrates a version 2 file in memory)."""
        return 3 if self.major >= 2 else 2

    @property
    def id(self) -> str:
        """Test id, e.g. `containerd-1.7`."""
        return f"containerd-{self.name}"


# ---------------------------------------------------------------------------------- cache dirs


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trioshim"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
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


def _apt_dir() -> Path:
    return cache_dir() / "apt"


def _apt_options() -> list[str]:
    d = _apt_dir()
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


def _apt_update(
    suites: tuple[str, ...] = ("trixie", "sid"), source_suites: tuple[str, ...] = ()
) -> None:
    """Refresh the private lists: binary packages of `suites`, source packages (deb-src) of
    `source_suites`."""
    d = _apt_dir()
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
    _run(["apt-get", *_apt_options(), "update"], timeout=600)
    stamp.touch()


def _apt_download(specs: list[str], dest: Path) -> list[Path]:
    """One `apt-get download SPEC...` into dest; returns the .debs."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", *_apt_options(), "download", *specs], cwd=dest, timeout=900)
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
            f"did the suite move on? update LINE_SPECS in {__file__}"
        )
    return found[0]


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 120) -> str:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()


@dataclass(frozen=True)
class _Fetch:
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


def _line_fetch(name: str) -> _Fetch:
    spec = LINE_SPECS[name]
    bins = ("containerd", "ctr", "containerd-shim-runc-v2")
    return _Fetch(
        f"containerd/{name}",
        f"containerd/{spec.suite}",
        tuple(f"usr/bin/{b}" for b in bins),
        spec.expect.rsplit(".", 1)[0] + ".",  # accept a newer x.y.* of the suite
    )


CRI_API_REL = "usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"
_CRI_FETCH = _Fetch("cri-api", "golang-k8s-cri-api-dev/sid", (CRI_API_REL,))


def _all_fetches() -> list[_Fetch]:
    return [_line_fetch(n) for n in FETCHED_LINE_NAMES] + [_CRI_FETCH]


def _ensure(item: _Fetch) -> Path:
    """<cache>/<key> for `item`. On a miss, everything else missing is fetched along with it:
    one `apt-get update` and one `apt-get download` per machine, whatever the tests ask first."""
    if item.done:
        return item.dir
    with _locked("fetch"):
        missing = [f for f in _all_fetches() if not f.done]
        if item not in missing and not item.done:
            missing.append(item)
        if missing:
            _fetch(missing)
    return item.dir


def _fetch(items: list[_Fetch]) -> None:
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=".fetch-") as tmp:
        t = Path(tmp)
        _apt_update()
        debs = _apt_download([f.spec for f in items], t / "deb")
        for f in items:
            deb = _pick_deb(debs, f.spec.split("/")[0], f.version_prefix)
            version = _deb_version(deb)
            unpacked = t / "x" / f.key
            unpacked.mkdir(parents=True)
            _run(["dpkg", "-x", str(deb), str(unpacked)], timeout=300)
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
    shutil.rmtree(_apt_dir() / "lists", ignore_errors=True)


# ---------------------------------------------------------------------------------- lines


def _binary_version(binary: str) -> str:
    """`containerd --version` → its version word (third field)."""
    out = _run([binary, "--version"], timeout=30).split()
    if len(out) < 3:
        raise RuntimeError(f"{binary} --version printed {out}")
    return out[2]


_LINES: dict[str, ContainerdLine] = {}


def get_line(name: str) -> ContainerdLine:
    """The containerd line `name` ("1.6", "1.7", "2.1"), fetched and unpacked if needed."""
    if name in _LINES:
        return _LINES[name]
    spec = LINE_SPECS[name]
    if spec.suite is None:
        bin_dir = os.path.dirname(CONTAINERD)
        line = ContainerdLine(
            name=name,
            version=_binary_version(CONTAINERD),
            containerd=CONTAINERD,
            ctr=CTR,
            shim_runc_v2=os.path.join(bin_dir, "containerd-shim-runc-v2"),
        )
    else:
        b = _ensure(_line_fetch(name)) / "usr" / "bin"
        line = ContainerdLine(
            name=name,
            version=_binary_version(str(b / "containerd")),
            containerd=str(b / "containerd"),
            ctr=str(b / "ctr"),
            shim_runc_v2=str(b / "containerd-shim-runc-v2"),
        )
    if not line.version.startswith(spec.expect.rsplit(".", 1)[0] + "."):
        raise RuntimeError(f"{line.containerd} is {line.version}, expected {spec.expect}")
    _LINES[name] = line
    return line


def cri_api_proto() -> Path:
    """The CRI `api.proto` (package runtime.v1) from Debian's golang-k8s-cri-api-dev (sid)."""
    return _ensure(_CRI_FETCH) / CRI_API_REL


# ---------------------------------------------------------------------------------- daemons


class LineContainerd(PrivateContainerd):
    """PrivateContainerd running the binaries of one containerd line, with the config format of
    that line (version 2 for 1.x, version 3 for 2.x) and `extra_config` TOML appended.

    PATH for containerd (hence for shim lookup, and runc's for criu): `extra_path` first, then
    the venv's bin (containerd-shim-trioshim-v2), then the line's own bin dir (its
    containerd-shim-runc-v2), then the usual dirs.
    """

    def __init__(
        self,
        line: ContainerdLine,
        *,
        extra_config: str = "",
        extra_path: tuple[str, ...] = (),
        **kwargs: object,
    ) -> None:
        self.line = line
        self.extra_config = extra_config
        if "path" not in kwargs:
            first = [*extra_path, venv_bin_dir(), line.bin_dir]
            rest = [d for d in default_path().split(":") if d not in first]
            kwargs["path"] = ":".join([*first, *rest])
        kwargs.setdefault("containerd", line.containerd)
        kwargs.setdefault("ctr", line.ctr)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    @property
    def major(self) -> int:
        return self.line.major

    def banner(self) -> str:
        return f"=== trioshim test: containerd {self.line.version} at {time.ctime()} ===\n"

    # --- shims

    def shims(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every shim daemon serving this containerd: a process running a
        `containerd-shim*` binary (argv[0], or argv[1] for a Python script) whose argv has
        `-address <our address>` or whose environment has `TTRPC_ADDRESS=<our ttrpc address>`
        (what containerd gives every shim; our shim may choose its own daemon argv)."""
        found = []
        want_env = f"TTRPC_ADDRESS={self.ttrpc_address}".encode()
        for pid in _pids():
            argv = _proc_cmdline(pid)
            if not any(os.path.basename(a).startswith("containerd-shim") for a in argv[:2]):
                continue
            by_argv = any(
                a in ("-address", "--address") and argv[i + 1] == self.address
                for i, a in enumerate(argv[:-1])
            )
            by_env = False
            if not by_argv:
                with contextlib.suppress(OSError):
                    by_env = want_env in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if by_argv or by_env:
                found.append((pid, argv))
        return found

    # --- config

    def disabled_plugins(self) -> list[str]:
        """Plugins to disable; the CRI subclass keeps CRI."""
        disabled = super().disabled_plugins()
        if self.line.major >= 2:
            # 2.x split CRI into more plugins; aufs/zfs are gone (disabling them is harmless).
            disabled += ["io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
        return disabled

    def config_text(self) -> str:
        disabled = ", ".join(f'"{p}"' for p in self.disabled_plugins())
        text = f"""\
version = {self.line.config_version}
root = "{self.root}"
state = "{self.state}"
disabled_plugins = [{disabled}]
oom_score = 0

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.ttrpc_address}"

[debug]
  address = ""
  level = "{self.log_level}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base / "opt"}"

[plugins."io.containerd.runtime.v2.task"]
  platforms = ["linux/amd64"]

# NRI (enabled by default from 2.0) listens on a machine-wide socket, /var/run/nri/nri.sock:
# two private daemons would fight over it.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
"""
        if self.line.major >= 2 or self.line.name == "1.7":
            # The transfer service (1.7+; what 2.x ctr uses to import images) unpacks into the
            # snapshotters listed here, overlayfs by default: disabled in these daemons.
            text += """
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "native"
"""
        if self.extra_config:
            text += "\n" + self.extra_config
        return text


def main() -> int:
    """Fetch every line and the CRI proto; print what and how long."""
    for name in LINE_NAMES:
        t0 = time.monotonic()
        line = get_line(name)
        print(f"{line.id}: {line.version} in {time.monotonic() - t0:.1f}s")
        for b in (line.containerd, line.ctr, line.shim_runc_v2):
            print(f"  {b}")
    t0 = time.monotonic()
    proto = cri_api_proto()
    print(f"cri api.proto in {time.monotonic() - t0:.1f}s: {proto}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
