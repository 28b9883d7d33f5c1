"""Kubernetes through CRI: one pod's life on each containerd line and each runtime handler.

Per (line, handler) the steps below run in order against one pod; a failed step skips the rest
of that pod's steps (they would only fail for the same reason). What a kubelet does, minus the
network: a host-network pod, two containers, ExecSync, status, logs, stats, graceful and
forced stops, then the pod's stop and removal. The shim check counts the shim daemons serving
the pod: exactly one (all containers of a pod grouped by sandbox id), gone after
RemovePodSandbox together with its socket.

Handler `trioshim` fails until containerd-shim-trioshim-v2 exists on PATH (the venv's bin):
that is expected while the shim is being built.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.cri import ALL_HANDLERS, HANDLERS, SHIM_BINARIES, CRIClient, CRIContainerd

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def wait_for(probe: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class PodRun:
    """One pod's state, shared by the steps of one (line, handler)."""

    containerd: CRIContainerd  # named so tests/conftest.py attaches its log to failures
    client: CRIClient
    handler: str
    log_dir: Path
    broken: str | None = None
    pod_id: str = ""
    pod_config: Any = None
    containers: dict[str, str] = field(default_factory=dict)  # name -> id
    shim_pid: int = 0
    shim_socket: str = ""
    shims_per_pod: int = -1
    observed: dict[str, str] = field(default_factory=dict)

    @property
    def pb(self) -> Any:
        return self.client.pb

    @property
    def rt(self) -> Any:
        return self.client.runtime


F = TypeVar("F", bound=Callable[..., None])


def step(fn: F) -> F:
    """Skip when an earlier step of the same pod failed; mark the pod broken when this fails."""

    @functools.wraps(fn)
    def wrapper(self: object, pod: PodRun) -> None:
        if pod.broken:
            pytest.skip(f"an earlier step failed: {pod.broken}")
        try:
            fn(self, pod)
        except pytest.skip.Exception:
            raise
        except BaseException:
            pod.broken = fn.__name__
            raise

    return wrapper  # type: ignore[return-value]


@pytest.fixture(scope="class", params=list(HANDLERS))
def pod(
    request: pytest.FixtureRequest, cri_containerd: CRIContainerd, shims_per_pod: dict[str, str]
) -> Iterator[PodRun]:
    handler = request.param
    name = f"pod-{handler}"
    log_dir = cri_containerd.pods_dir / name
    log_dir.mkdir(parents=True, exist_ok=True)
    run = PodRun(cri_containerd, cri_containerd.client(), handler, log_dir, observed=shims_per_pod)
    yield run
    # Whatever the steps left (a failed run): remove it so the next handler starts clean.
    if cri_containerd.running:
        cri_containerd.remove_all_pods()
        wait_for(lambda: not cri_containerd.shims(), "the shims to exit after clean-up", timeout=15)


C1_CMD = ["/bin/sh", "-c", "echo hello from c1; exec sleep 100000"]
# c2 handles SIGTERM: StopContainer's grace period ends early with exit code 0.
C2_CMD = [
    "/bin/sh",
    "-c",
    "trap 'echo c2 got TERM; exit 0' TERM; echo c2 up; while :; do sleep 0.1; done",
]
LOG_LINE = re.compile(r"^(\S+) (stdout|stderr) ([FP]) (.*)$")


def log_lines(path: Path) -> list[tuple[str, str]]:
    """(stream, text) of each full line of a CRI log file."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for raw in text.splitlines():
        m = LOG_LINE.match(raw)
        assert m, f"not a CRI log line: {raw!r}"
        out.append((m.group(2), m.group(4)))
    return out


def test_handlers_configured(cri_containerd: CRIContainerd) -> None:
    """CRI is up with every handler (what `crictl info` shows) and the runtime is ready."""
    c = cri_containerd.client()
    st = c.runtime.Status(c.pb.StatusRequest(verbose=True), timeout=30)
    runtimes = json.loads(st.info["config"])["containerd"]["runtimes"]
    assert {name: runtimes[name]["runtimeType"] for name in ALL_HANDLERS} == ALL_HANDLERS
    conditions = {x.type: x.status for x in st.status.conditions}
    assert conditions["RuntimeReady"] is True
    assert conditions["NetworkReady"] is False  # no CNI here: host-network pods only
    assert c.version().runtime_version == cri_containerd.line.version


def shim_address(bundle: Path) -> str:
    """The shim address containerd keeps in a bundle: 2.x writes `bootstrap.json`
    ({"version":N,"address":..,"protocol":..}), 1.6/1.7 the `address` file (the start reply)."""
    boot = bundle / "bootstrap.json"
    if boot.exists():
        return str(json.loads(boot.read_text())["address"])
    return (bundle / "address").read_text().strip()


class TestPodLifecycle:
    @step
    def test_run_pod_sandbox(self, pod: PodRun) -> None:
        pb = pod.pb
        pod.pod_config = pod.client.pod_config(
            f"pod-{pod.handler}",
            log_dir=pod.log_dir,
            cgroup_parent=pod.containerd.cgroup_parent,
        )
        r = pod.rt.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod.pod_config, runtime_handler=pod.handler),
            timeout=60,
        )
        pod.pod_id = r.pod_sandbox_id
        st = pod.rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod.pod_id), timeout=30
        ).status
        assert st.state == pb.SANDBOX_READY
        assert st.runtime_handler == pod.handler
        assert st.linux.namespaces.options.network == pb.NODE

    @step
    def test_two_containers_created_and_started(self, pod: PodRun) -> None:
        pb = pod.pb
        for name, cmd in (("c1", C1_CMD), ("c2", C2_CMD)):
            cfg = pod.client.container_config(name, cmd, log_path=f"{name}.log")
            r = pod.rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=pod.pod_id, config=cfg, sandbox_config=pod.pod_config
                ),
                timeout=60,
            )
            pod.containers[name] = r.container_id
            pod.rt.StartContainer(pb.StartContainerRequest(container_id=r.container_id), timeout=60)
        listed = pod.rt.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod.pod_id)),
            timeout=30,
        ).containers
        states = {c.metadata.name: c.state for c in listed}
        assert states == {"c1": pb.CONTAINER_RUNNING, "c2": pb.CONTAINER_RUNNING}

    @step
    def test_exec_sync(self, pod: PodRun) -> None:
        pb = pod.pb
        r = pod.rt.ExecSync(
            pb.ExecSyncRequest(
                container_id=pod.containers["c1"],
                cmd=["sh", "-c", "echo out $((6*7)); echo err >&2; exit 3"],
                timeout=10,
            ),
            timeout=30,
        )
        assert (r.stdout, r.stderr, r.exit_code) == (b"out 42\n", b"err\n", 3)
        r = pod.rt.ExecSync(
            pb.ExecSyncRequest(
                container_id=pod.containers["c2"], cmd=["cat", "/etc/hostname"], timeout=10
            ),
            timeout=30,
        )
        assert r.exit_code == 0 and r.stdout.strip(), r

    @step
    def test_container_status(self, pod: PodRun) -> None:
        pb = pod.pb
        r = pod.rt.ContainerStatus(
            pb.ContainerStatusRequest(container_id=pod.containers["c1"], verbose=True),
            timeout=30,
        )
        st = r.status
        assert st.id == pod.containers["c1"]
        assert st.metadata.name == "c1"
        assert st.state == pb.CONTAINER_RUNNING
        assert st.started_at > 0 and st.finished_at == 0
        assert st.log_path == str(pod.log_dir / "c1.log")
        info = json.loads(r.info["info"])
        assert info["pid"] > 0
        assert info["runtimeType"] == HANDLERS[pod.handler]

    @step
    def test_container_log_file(self, pod: PodRun) -> None:
        for name, want in (("c1", "hello from c1"), ("c2", "c2 up")):
            path = pod.log_dir / f"{name}.log"
            wait_for(lambda p=path, w=want: ("stdout", w) in log_lines(p), f"{want!r} in {path}")

    @step
    def test_container_stats(self, pod: PodRun) -> None:
        pb = pod.pb
        cid = pod.containers["c1"]

        def stats() -> Any:
            s = pod.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=30).stats
            # 1.7/2.1 sometimes answer an empty message right after start: ask again.
            return s if s.attributes.id else None

        s = wait_for(stats, "ContainerStats with content")
        assert s.attributes.id == cid and s.attributes.metadata.name == "c1"
        assert s.cpu.usage_core_nano_seconds.value > 0
        assert s.memory.working_set_bytes.value > 0
        listed = pod.rt.ListContainerStats(
            pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod.pod_id)),
            timeout=30,
        ).stats
        assert {x.attributes.id for x in listed} == set(pod.containers.values())

    @step
    def test_one_shim_serves_the_pod(self, pod: PodRun) -> None:
        c = pod.containerd
        shims = c.shims()
        pod.shims_per_pod = len(shims)
        pod.observed[f"{c.line.id} {pod.handler}"] = (
            f"{len(shims)} for {1 + len(pod.containers)} containers (sandbox + "
            f"{len(pod.containers)}): {[' '.join(argv[:2]) for _, argv in shims]}"
        )
        print(
            f"{c.line.id} {pod.handler}: {len(shims)} shim daemon(s) for 1 pod of "
            f"{1 + len(pod.containers)} containers: {shims}"
        )
        assert len(shims) == 1, shims
        pid, argv = shims[0]
        assert any(os.path.basename(a) == SHIM_BINARIES[pod.handler] for a in argv[:2]), argv
        pod.shim_pid = pid
        # Every container of the pod (the sandbox too) was handed the same shim address.
        addresses = {shim_address(c.bundle(i)) for i in (pod.pod_id, *pod.containers.values())}
        assert len(addresses) == 1, addresses
        pod.shim_socket = addresses.pop().removeprefix("unix://")
        assert os.path.exists(pod.shim_socket)

    @step
    def test_stop_container_with_grace_period(self, pod: PodRun) -> None:
        pb = pod.pb
        # c2 traps SIGTERM: stops well within its 10 s grace period, exit code 0.
        t0 = time.monotonic()
        pod.rt.StopContainer(
            pb.StopContainerRequest(container_id=pod.containers["c2"], timeout=10), timeout=60
        )
        graceful = time.monotonic() - t0
        print(f"graceful stop: {graceful:.2f}s")
        st = pod.rt.ContainerStatus(
            pb.ContainerStatusRequest(container_id=pod.containers["c2"]), timeout=30
        ).status
        assert st.state == pb.CONTAINER_EXITED and st.exit_code == 0, st
        assert graceful < 8, f"a graceful stop took {graceful:.1f}s"
        wait_for(
            lambda: ("stdout", "c2 got TERM") in log_lines(pod.log_dir / "c2.log"),
            "c2's TERM trap output in its log",
        )
        # c1 is `sleep` as pid 1 of its pid namespace: SIGTERM is ignored, SIGKILL after 2 s.
        t0 = time.monotonic()
        pod.rt.StopContainer(
            pb.StopContainerRequest(container_id=pod.containers["c1"], timeout=2), timeout=60
        )
        forced = time.monotonic() - t0
        print(f"forced stop: {forced:.2f}s")
        st = pod.rt.ContainerStatus(
            pb.ContainerStatusRequest(container_id=pod.containers["c1"]), timeout=30
        ).status
        assert st.state == pb.CONTAINER_EXITED and st.exit_code == 137, st
        assert 1.5 <= forced < 10, f"stop with a 2 s grace period took {forced:.1f}s"

    @step
    def test_stop_pod_sandbox(self, pod: PodRun) -> None:
        pb = pod.pb
        pod.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.pod_id), timeout=60)
        st = pod.rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod.pod_id), timeout=30
        ).status
        assert st.state == pb.SANDBOX_NOTREADY
        # Idempotent, as kubelet relies on.
        pod.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.pod_id), timeout=60)

    @step
    def test_remove_pod_sandbox(self, pod: PodRun) -> None:
        pb = pod.pb
        c = pod.containerd
        pod.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.pod_id), timeout=60)
        pods = pod.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        assert pod.pod_id not in {p.id for p in pods}
        containers = pod.rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers
        assert not {x.id for x in containers} & set(pod.containers.values())
        wait_for(
            lambda: not os.path.exists(f"/proc/{pod.shim_pid}"), f"shim pid {pod.shim_pid} to exit"
        )
        assert not c.shims()
        assert not os.path.exists(pod.shim_socket), pod.shim_socket
        for i in (pod.pod_id, *pod.containers.values()):
            assert not c.bundle(i).exists(), c.bundle(i)
        r = c.ctr("containers", "ls", "-q", check=True)
        assert not set(r.stdout.split()) & {pod.pod_id, *pod.containers.values()}
