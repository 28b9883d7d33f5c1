"""Three containerd lines on one machine: bookworm's 1.6.20 (installed), trixie's 1.7.x and sid's
2.1.x (fetched from Debian into the cache of tests.support.debian_cache and run from there).

The first miss fetches everything missing at once: one `apt-get update` (trixie + sid, main,
~20 MB of lists, deleted afterwards) and one `apt-get download` (~62 MB of .debs, deleted after
unpacking). The same fetch brings the CRI `api.proto` from `golang-k8s-cri-api-dev` (sid).
Cache layout (besides debian_cache's own):

    <cache>/containerd/<line>/usr/bin/...         containerd, ctr, containerd-shim-runc-v2
    <cache>/containerd/<line>/VERSION             Debian version; present = complete
    <cache>/cri-api/usr/share/gocode/.../api.proto, VERSION     the CRI API, same scheme
    <cache>/grpc-py/<module>-<hash>/              gRPC modules (tests.support.grpc_modules)

A daemon of a line is tests.support.line_containerd.LineContainerd.
`python -m tests.support.containerd_lines` fetches everything and prints paths and timings.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.containerd import CONTAINERD, CTR
from tests.support.debian_cache import CacheItem, fetch_items, locked, run_checked


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


def _line_fetch(name: str) -> CacheItem:
    spec = LINE_SPECS[name]
    bins = ("containerd", "ctr", "containerd-shim-runc-v2")
    return CacheItem(
        f"containerd/{name}",
        f"containerd/{spec.suite}",
        tuple(f"usr/bin/{b}" for b in bins),
        spec.expect.rsplit(".", 1)[0] + ".",  # accept a newer x.y.* of the suite
    )


CRI_API_REL = "usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"
_CRI_FETCH = CacheItem("cri-api", "golang-k8s-cri-api-dev/sid", (CRI_API_REL,))


def _all_fetches() -> list[CacheItem]:
    return [_line_fetch(n) for n in FETCHED_LINE_NAMES] + [_CRI_FETCH]


def _ensure(item: CacheItem) -> Path:
    """<cache>/<key> for `item`. On a miss, everything else missing is fetched along with it:
    one `apt-get update` and one `apt-get download` per machine, whatever the tests ask first."""
    if item.done:
        return item.dir
    with locked("fetch"):
        missing = [f for f in _all_fetches() if not f.done]
        if item not in missing and not item.done:
            missing.append(item)
        if missing:
            fetch_items(missing)
    return item.dir


# ---------------------------------------------------------------------------------- lines


def _binary_version(binary: str) -> str:
    """`containerd --version` → its version word (third field)."""
    out = run_checked([binary, "--version"], timeout=30).split()
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
