"""`python -m bench [names...]`: trioshim vs containerd-shim-runc-v2, side by side, one run.

Prints one table (reference, ours, ratio ours/reference, aim) and optionally writes JSON
(``--json FILE``). Needs root, containerd 1.6 (``/usr/bin/containerd``), runc and
busybox-static. Everything runs through one private containerd (own temp dir, a namespace
unique to the run) that is torn down at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import REPO
from bench.env import BenchEnv
from bench.results import BenchResult, bench_guard, log
from bench.table import render_table

Runner = Callable[[BenchEnv, Any, BenchResult], None]


def _runners() -> dict[str, tuple[str, Runner]]:
    from bench import ctr_bench, rss_bench, start_bench, ttrpc_bench, wasm_bench

    return {
        "ttrpc": ("ttrpc unary State calls/s, p50/p99 at concurrency 1 and 64", ttrpc_bench.run),
        "start": ("start action -> first Connect answered (issue 3)", start_bench.run),
        "run": ("ctr run --rm /bin/true latency", ctr_bench.bench_run),
        "exec": ("ctr task exec /bin/true round trip", ctr_bench.bench_exec),
        "stdout": ("stdout throughput, 1 GB through ctr", ctr_bench.bench_stdout),
        "rss": ("shim RSS/PSS: 1 idle container, per container with 50", rss_bench.bench_rss),
        "wasm": (
            "triowasm ctr run --rm latency and PSS per container beside runc-v2's busybox",
            wasm_bench.run,
        ),
    }


# How ours runs: one daemon per shim, or one shared process per containerd for every shim.
MODES = {"isolated": False, "shared": True}
# Benchmarks that do not involve the shim's mode (run in the first mode only).
MODELESS = frozenset({"ttrpc", "wasm"})

# Benchmarks other helpers may add as modules of their own (run as `python -m bench.<module>`,
# output shown verbatim); only run when named on the command line.
EXTERNAL = {"stdio_bench": "bench/stdio_bench.py", "start_latency": "bench/start_latency.py"}


def _externals() -> dict[str, str]:
    return {name: path for name, path in EXTERNAL.items() if (REPO / path).is_file()}


def parse_args(argv: list[str]) -> argparse.Namespace:
    runners = _runners()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names",
        nargs="*",
        help=f"benchmarks to run (default: all of {', '.join(runners)}); see --list",
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--runs", type=int, default=20, help="ctr run --rm iterations (20)")
    p.add_argument("--execs", type=int, default=20, help="ctr task exec iterations (20)")
    p.add_argument("--starts", type=int, default=10, help="start-action iterations (10)")
    p.add_argument(
        "--ttrpc-seconds", type=float, default=3.0, help="seconds per ttrpc measurement (3)"
    )
    p.add_argument(
        "--ttrpc-rounds",
        type=int,
        default=3,
        help="ttrpc: alternate the two servers this many times per point (3)",
    )
    p.add_argument(
        "--ttrpc-client",
        choices=("trio", "raw"),
        default="trio",
        help="ttrpc: our Trio client (default) or the raw pipelined one of bench/ttrpc_raw.py "
        "(no paced point)",
    )
    p.add_argument(
        "--ttrpc-paced-rate",
        type=float,
        default=200.0,
        help="ttrpc: calls/s offered in the open-loop point, at most 64 in flight (200; 0: skip)",
    )
    p.add_argument(
        "--stdout-bytes", type=int, default=1_000_000_000, help="bytes through stdout (1e9)"
    )
    p.add_argument(
        "--stdout-producer",
        choices=("dd", "head"),
        default="dd",
        help="what writes stdout in the container: dd bs=1MB (default) or busybox head -c "
        "(slow itself: ~70 MB/s)",
    )
    p.add_argument("--stdout-runs", type=int, default=1, help="stdout runs per runtime (1)")
    p.add_argument("--containers", type=int, default=50, help="containers for the RSS test (50)")
    p.add_argument(
        "--rss-skip-single",
        action="store_true",
        help="RSS: skip the one-shim-per-container phase (the slowest part)",
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="RSS: seconds to wait before reading (2)"
    )
    p.add_argument("--parallel", type=int, default=4, help="concurrent ctr calls for RSS (4)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke run (5 runs/execs/starts, 1 s ttrpc, 100 MB, 10 containers)",
    )
    p.add_argument(
        "--shared",
        action="store_true",
        help="measure ours in shared mode (io.containerd.trioshim-shared.v2: one process per "
        "containerd serves every shim); the same as --modes shared",
    )
    p.add_argument(
        "--modes",
        default="",
        help="comma-separated modes of ours to measure in this one run, each against the "
        "reference: isolated (one daemon per shim, the default), shared; e.g. isolated,shared",
    )
    p.add_argument(
        "--ours-binary",
        metavar="PATH",
        help="use this executable as containerd-shim-trioshim-v2, and in shared mode the "
        "containerd-shim-trioshim-shared-v2 beside it (default: the ones on the PATH)",
    )
    p.add_argument(
        "--no-ours", action="store_true", help="measure the reference only (ours shown as skipped)"
    )
    p.add_argument(
        "--smoke-timeout",
        type=float,
        default=30.0,
        help="seconds ours gets for its first `ctr run` before it is reported broken (30)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.runs = min(args.runs, 5)
        args.execs = min(args.execs, 5)
        args.starts = min(args.starts, 5)
        args.ttrpc_seconds = min(args.ttrpc_seconds, 1.0)
        args.stdout_bytes = min(args.stdout_bytes, 100_000_000)
        args.containers = min(args.containers, 10)
    modes = [m for m in args.modes.split(",") if m] or ["shared" if args.shared else "isolated"]
    bad = [m for m in modes if m not in MODES]
    if bad or len(set(modes)) != len(modes):
        p.error(f"--modes: each of {sorted(MODES)} at most once, got {args.modes!r}")
    args.modes = modes
    known = set(runners) | set(_externals())
    unknown = [n for n in args.names if n not in known]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {sorted(known)}")
    return args


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"


def metadata(env: BenchEnv | None, args: argparse.Namespace) -> dict[str, Any]:
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "containerd": _version(["/usr/bin/containerd", "--version"]),
        "runc": _version(["runc", "--version"]),
        "trioshim_commit": commit + ("+dirty" if dirty else ""),
        "loadavg_at_end": os.getloadavg(),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
    }
    if env is not None:
        meta["reference_binary"] = env.reference.binary
        meta["ours_binary"] = env.ours.binary
        meta["ours_unavailable"] = env.ours.unavailable
        meta["namespace"] = env.namespace
    return meta


# ------------------------------------------------------------------------------- main


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_external(name: str) -> BenchResult:
    result = BenchResult(name)
    t0 = time.monotonic()
    log(f"{name}: running python -m bench.{name} (another helper's benchmark)")
    r = subprocess.run(
        [sys.executable, "-m", f"bench.{name}"],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    result.seconds = time.monotonic() - t0
    result.raw = {"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-4000:]}
    if r.returncode != 0:
        result.error = f"exit {r.returncode}: {r.stderr.strip()[-300:]}"
    return result


def run_mode(
    env: BenchEnv, args: Any, runners: dict[str, tuple[str, Runner]], names: list[str], mode: str
) -> list[BenchResult]:
    """Run ``names`` with ours in ``mode``; with several modes, each row names its mode."""
    results: list[BenchResult] = []
    if args.no_ours:
        env.ours.unavailable = "skipped (--no-ours)"
    env.start()
    if any(n in runners and n not in MODELESS for n in names):
        env.check_ours()
    for name in names:
        if name not in runners:
            results.append(run_external(name))
            continue
        result = BenchResult(name)
        results.append(result)
        log(f"=== {name}: {runners[name][0]}")
        bench_guard(result, lambda r=result, n=name: runners[n][1](env, args, r))
        # Whatever a benchmark left behind (tasks, containers, shims still alive 10 s
        # after their last container) is removed here and reported.
        for rt in (env.reference, env.ours):
            if rt.binary is not None:
                left = env.reset(rt)
                if left:
                    result.notes.append(f"{name}: {rt.key} left behind (removed): {left}")
        log(f"=== {name}: done in {result.seconds:.1f}s")
        if len(args.modes) > 1 and name not in MODELESS:
            for row in result.rows:
                row.bench = f"{row.bench} [{mode}]"
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    runners = _runners()
    if args.list:
        for name, (desc, _) in runners.items():
            print(f"{name:14} {desc}")
        for name, path in _externals().items():
            print(f"{name:14} {path} (run only when named)")
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (containerd, runc, mounts)", file=sys.stderr)
        return 2
    names = args.names or list(runners)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    load_at_start = os.getloadavg()
    env: BenchEnv | None = None
    results: list[BenchResult] = []
    forced: list[str] = []
    interrupted = False
    try:
        for n, mode in enumerate(args.modes):
            env = None
            try:
                env = BenchEnv(
                    smoke_timeout=args.smoke_timeout,
                    ours_binary=args.ours_binary,
                    shared=MODES[mode],
                )
                mode_names = [x for x in names if n == 0 or x not in MODELESS]
                if len(args.modes) > 1:
                    log(f"##### ours in {mode} mode: {mode_names}")
                results += run_mode(env, args, runners, mode_names, mode)
            finally:
                if env is not None:
                    log("cleaning up")
                    forced += env.close()
                    if forced:
                        log(f"had to clean up by force: {forced}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    meta = metadata(env, args)
    meta["loadavg_at_start"] = load_at_start
    rows = [row for r in results for row in r.rows]
    table, footnotes = render_table(rows)
    print()
    print(f"trioshim benchmarks  {meta['date']}  {meta['host']}  {meta['cpus']} CPUs")
    print(f"  {meta['containerd']} | {meta['runc']} | Python {meta['python']}")
    print(f"  trioshim {meta['trioshim_commit']}  ours: {meta.get('ours_binary')}")
    print(f"  command: {meta['command']}")
    print(
        f"  load average at start {meta.get('loadavg_at_start')}, at end {meta['loadavg_at_end']}"
    )
    print()
    print(table)
    if footnotes:
        print()
        print("errors:")
        for f in footnotes:
            print(f"  {f}")
    notes = [n for r in results for n in r.notes]
    for r in results:
        if r.error:
            notes.append(f"{r.name}: FAILED: {r.error}")
        if r.name not in runners:
            notes.append(f"{r.name}: output of python -m bench.{r.name}:\n{r.raw.get('stdout')}")
    if forced:
        notes.append(f"clean-up had to force: {forced}")
    if notes:
        print()
        print("notes:")
        for n in notes:
            print(f"  - {n}")
    if args.json:
        doc = {
            "meta": meta,
            "args": vars(args),
            "benchmarks": {
                r.name: {
                    "rows": [row.as_dict() for row in r.rows],
                    "raw": r.raw,
                    "notes": r.notes,
                    "error": r.error,
                    "seconds": r.seconds,
                }
                for r in results
            },
            "forced_cleanup": forced,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
