"""Start a program placed elsewhere (cgroups, umask, resource limits, oom_score_adj), and read
back where a process is placed.

As a script: ``python placed.py [--umask OCTAL] [--rlimit NAME=SOFT:HARD]... [--oom N]
[--cgroup-procs FILE]... -- ARGV...`` applies what it is told to itself and execs ARGV (a
wrapper rather than ``preexec_fn``: the test process may have threads).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
THIS = Path(__file__).resolve()


@dataclass(frozen=True)
class Place:
    """Where a process is, as the kernel shows it."""

    cgroup: str
    limits: str
    oom_score_adj: str
    umask: str

    @classmethod
    def of(cls, pid: int) -> Place:
        proc = Path(f"/proc/{pid}")
        umask = next(
            line.split()[1]
            for line in (proc / "status").read_text().splitlines()
            if line.startswith("Umask:")
        )
        return cls(
            cgroup=(proc / "cgroup").read_text(),
            limits=(proc / "limits").read_text(),
            oom_score_adj=(proc / "oom_score_adj").read_text().strip(),
            umask=umask,
        )


def wrap(
    argv: Sequence[str],
    *,
    umask: int | None = None,
    rlimits: dict[str, tuple[int, int]] | None = None,
    oom_score_adj: int | None = None,
    cgroup_procs: Sequence[Path] = (),
) -> list[str]:
    """``argv`` run by this script, placed as told."""
    wrapper = [sys.executable, str(THIS)]
    if umask is not None:
        wrapper += ["--umask", f"{umask:o}"]
    for name, (soft, hard) in (rlimits or {}).items():
        wrapper += ["--rlimit", f"{name}={soft}:{hard}"]
    if oom_score_adj is not None:
        wrapper += ["--oom", str(oom_score_adj)]
    for procs in cgroup_procs:
        wrapper += ["--cgroup-procs", str(procs)]
    return [*wrapper, "--", *argv]


@contextlib.contextmanager
def new_cgroups(tag: str) -> Iterator[list[Path]]:
    """A new child of our own cgroup in every mounted v1 hierarchy (and v2, if mounted);
    yields their ``cgroup.procs`` files; removes them after (they must be empty by then)."""
    made: list[Path] = []
    name = f"{tag}-{secrets.token_hex(3)}"
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            mount = _mount_point(controllers)
            if mount is None:
                continue
            directory = mount / path.lstrip("/") / name
            directory.mkdir()
            made.append(directory)
            for inherited in ("cpuset.cpus", "cpuset.mems"):  # empty in a new v1 cpuset
                if (directory / inherited).exists():
                    value = (directory.parent / inherited).read_text()
                    (directory / inherited).write_text(value)
        yield [d / "cgroup.procs" for d in made]
    finally:
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _mount_point(controllers: str) -> Path | None:
    if not controllers:  # v2: mounted on the root itself when there is no v1
        mounted = (CGROUP_ROOT / "cgroup.controllers").exists()
        return CGROUP_ROOT if mounted else None
    for name in (controllers, controllers.removeprefix("name=")):
        if (CGROUP_ROOT / name / "cgroup.procs").exists():
            return CGROUP_ROOT / name
    return None


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--umask", type=lambda v: int(v, 8))
    parser.add_argument("--rlimit", action="append", default=[])
    parser.add_argument("--oom", type=int)
    parser.add_argument("--cgroup-procs", action="append", default=[])
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    for procs in args.cgroup_procs:
        Path(procs).write_text(str(os.getpid()))
    for spec in args.rlimit:
        name, _, values = spec.partition("=")
        soft, _, hard = values.partition(":")
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
    if args.oom is not None:
        Path("/proc/self/oom_score_adj").write_text(str(args.oom))
    if args.umask is not None:
        os.umask(args.umask)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    _main()
