"""``python -m bench wasm``: containerd-shim-triowasm-v2 beside runc-v2 running busybox.

Two measurements through the bench's private containerd, each row runc-v2 (reference column)
against the wasm shim (ours column):

- latency: `ctr run --rm` of busybox `/bin/true` through runc-v2, and of a WASI module that
  writes one line (``hello.wasm``) through ``io.containerd.triowasm.v2``; interleaved, one
  warm-up each (it also starts the wasm shim's fork server);
- memory per container: N detached containers each (runc-v2: `sleep`; wasm: a module that
  loops), one shim each; PSS of the shim daemons alone, and of the daemons plus what they run
  (runc-v2: the container's init; wasm: the module's process: an interpreter with wasmtime and
  the compiled module), divided by N. The wasm shim's fork server is counted in both.

The modules are compiled here from the text in tests/wasm/modules.py.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from bench.env import BenchEnv
from bench.procs import all_pids, memory_kb, proc_argv, proc_ppid, wait_until
from bench.results import BenchResult, Row, log, percentile, short_error, summary
from bench.runtimes import FORKSERVER_MODULE, Runtime
from tests.support.containerd import ContainerdError
from tests.wasm import modules

WASM_RUNTIME = "io.containerd.triowasm.v2"
WASM_BINARY = "containerd-shim-triowasm-v2"


def _wasm_runtime() -> Runtime:
    # key "ours": ids carry -ts-, so BenchEnv.reset cleans up after it like after ours
    return Runtime("ours", "triowasm", WASM_RUNTIME, WASM_BINARY, "io.containerd.trioshim.v2.group")


def _wasm_rootfs(base: Path) -> Path:
    root = base / "wasmroot"
    root.mkdir(exist_ok=True)
    modules.install(root, "hello.wasm", modules.HELLO)
    modules.install(root, "loop.wasm", modules.LOOP)
    return root


def _run_argv(env: BenchEnv, rt: Runtime, wasm_root: Path, cid: str, detach: bool) -> list[str]:
    if rt.key == "ref":
        cmd = ("/bin/sleep", "1000000") if detach else ("/bin/true",)
        return env.run_argv(rt, cid, *cmd, rm=not detach, detach=detach, null_io=detach)
    module = "/loop.wasm" if detach else "/hello.wasm"
    flags = ["-d", "--null-io"] if detach else ["--rm"]
    return ["run", "--runtime", rt.name, *flags, "--rootfs", str(wasm_root), cid, module]


def _children(pids: list[int]) -> list[int]:
    parents = set(pids)
    return [p for p in all_pids() if p not in parents and proc_ppid(p) in parents]


def _pss_mb(pids: list[int]) -> float:
    return sum(memory_kb(p).get("Pss", 0) for p in pids) / 1024.0


def _latency(env: BenchEnv, runtimes: list[Runtime], wasm_root: Path, n: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {rt.key: [] for rt in runtimes}
    errors: dict[str, str] = {}
    for i in range(n + 1):
        for rt in runtimes:
            if rt.key in errors:
                continue
            cid = env.new_id(rt, "wasmrun")
            t0 = time.perf_counter()
            r = env.ctr(*_run_argv(env, rt, wasm_root, cid, detach=False), timeout=60)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.returncode != 0 or (rt.key == "ours" and r.stdout != "hello, wasm\n"):
                errors[rt.key] = short_error(f"ctr run --rm failed (rc {r.returncode}): {r.stderr}")
                env.reset(rt)
            elif i > 0:
                samples[rt.key].append(elapsed)
    return {"samples": samples, "errors": errors}


def _memory(env: BenchEnv, rt: Runtime, wasm_root: Path, count: int) -> dict[str, Any]:
    ids = [env.new_id(rt, "wasmmem") for _ in range(count)]
    started: list[str] = []
    try:
        for cid in ids:
            r = env.ctr(*_run_argv(env, rt, wasm_root, cid, detach=True), timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"ctr run -d {cid} failed: {short_error(r.stderr)}")
            started.append(cid)
        daemons = [p for p in env.shim_pids(rt) if FORKSERVER_MODULE not in proc_argv(p)[:3]]
        if not wait_until(lambda: len(_children(daemons)) >= count, timeout=30):
            raise RuntimeError(f"{count} containers but {len(_children(daemons))} workloads")
        servers = [
            p
            for p in env.fork_server_pids()
            if rt.key == "ours" and any("triowasm" in a for a in proc_argv(p))
        ]
        shims = _pss_mb(daemons + servers)
        workloads = _pss_mb(_children(daemons))
        return {
            "containers": count,
            "daemons": len(daemons),
            "fork_servers": len(servers),
            "shim_pss_mb": shims,
            "workload_pss_mb": workloads,
        }
    finally:
        with contextlib.suppress(ContainerdError):
            env.remove(started)
        env.reset(rt)


def run(env: BenchEnv, args: Any, result: BenchResult) -> None:
    n: int = args.runs
    count: int = args.containers
    rows = {
        "p50": Row("wasm", "ctr run --rm, runc-v2 true / wasm hello, median", "ms", "lower"),
        "p90": Row("wasm", "ctr run --rm, runc-v2 true / wasm hello, p90", "ms", "lower"),
        "shim": Row("wasm", f"shim PSS per container, {count} one shim each", "MB", "lower"),
        "all": Row(
            "wasm", f"shim + workload PSS per container, {count} one shim each", "MB", "lower"
        ),
    }
    runtimes = [env.reference, _wasm_runtime()]
    if env.reference.unavailable:
        for row in rows.values():
            row.set("ref", error=env.reference.unavailable)
        runtimes = runtimes[1:]
    wasm_root = _wasm_rootfs(env.base)
    log(f"wasm: ctr run --rm x {n} per runtime (+1 warm-up), interleaved")
    latency = _latency(env, runtimes, wasm_root, n)
    result.raw["latency"] = latency
    for rt in runtimes:
        if rt.key in latency["errors"]:
            for key in ("p50", "p90"):
                rows[key].set(rt.key, error=latency["errors"][rt.key])
            continue
        values = latency["samples"][rt.key]
        rows["p50"].set(rt.key, percentile(values, 50))
        rows["p90"].set(rt.key, percentile(values, 90))
        result.raw[f"latency_{rt.key}"] = summary(values)
    for rt in runtimes:
        log(f"wasm: {rt.label}: {count} detached containers for memory")
        try:
            mem = _memory(env, rt, wasm_root, count)
        except Exception as exc:
            err = short_error(exc)
            rows["shim"].set(rt.key, error=err)
            rows["all"].set(rt.key, error=err)
            continue
        result.raw[f"memory_{rt.key}"] = mem
        rows["shim"].set(rt.key, mem["shim_pss_mb"] / count)
        rows["all"].set(rt.key, (mem["shim_pss_mb"] + mem["workload_pss_mb"]) / count)
    result.rows += list(rows.values())
    result.notes.append(
        f"wasm: reference column = runc-v2 with busybox, ours column = containerd-shim-triowasm-v2 "
        f"({WASM_RUNTIME}) with WASI modules; {n} runs each after a warm-up; memory from "
        f"/proc/<pid>/smaps_rollup with {count} containers per runtime, the wasm shim's fork "
        f"server included."
    )
