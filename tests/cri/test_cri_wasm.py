"""Kubernetes through CRI on the `triowasm` handler (containerd-shim-triowasm-v2), every line.

A pod whose container is a WASI module, as a kubelet would run it (host network: no CNI here):
RunPodSandbox (the pause container runs as the wasm engine's sandbox holder: see
trioshim/wasm/sandbox.py), CreateContainer from an image holding hello.wasm, StartContainer,
the module's output in the container's CRI log and its exit code, then StopPodSandbox and
RemovePodSandbox, after which no shim, bundle, container or cgroup of the pod is left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cri.test_cri import log_lines, shim_address, wait_for
from tests.support.cri import SHIM_BINARIES, CRIContainerd
from tests.support.pause_image import build_image
from tests.wasm import modules

pytestmark = pytest.mark.e2e

HANDLER = "triowasm"
WASM_IMAGE = "localhost/trioshim/hello-wasm:test"


@pytest.fixture(scope="module")
def wasm_image(cri_containerd: CRIContainerd, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image whose only file is /hello.wasm (entrypoint), imported into CRI's namespace."""
    work = tmp_path_factory.mktemp("hello-wasm")
    root = work / "rootfs"
    root.mkdir()
    module = modules.install(root, "hello.wasm", modules.HELLO)
    tar = build_image(work / "hello-wasm.tar", WASM_IMAGE, root, [module], what="hello.wasm")
    cri_containerd.import_image(tar, WASM_IMAGE)
    return WASM_IMAGE


def _cgroups(pid: int) -> set[str]:
    """The cgroup of ``pid`` in each v1 hierarchy (this machine's layout; the hybrid unified
    line ``0::`` is not one the shims use)."""
    with open(f"/proc/{pid}/cgroup") as f:
        entries = [line.rstrip("\n").split(":", 2) for line in f]
    return {path for _, controllers, path in entries if controllers}


def test_wasm_pod_lifecycle(cri_containerd: CRIContainerd, wasm_image: str) -> None:
    c = cri_containerd
    client = c.client()
    pb, rt = client.pb, client.runtime
    log_dir = c.pods_dir / "pod-wasm"
    log_dir.mkdir(parents=True, exist_ok=True)
    pod_config = client.pod_config("pod-wasm", log_dir=log_dir, cgroup_parent=c.cgroup_parent)

    # The sandbox: the holder runs, in the pod's cgroup and in a new IPC namespace (ipc=POD).
    pod_id = rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config, runtime_handler=HANDLER), timeout=60
    ).pod_sandbox_id
    r = rt.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=30
    )
    assert r.status.state == pb.SANDBOX_READY and r.status.runtime_handler == HANDLER
    sandbox_pid = json.loads(r.info["info"])["pid"]
    assert sandbox_pid > 0
    assert all(path.startswith(c.cgroup_parent + "/") for path in _cgroups(sandbox_pid)), _cgroups(
        sandbox_pid
    )
    assert os.readlink(f"/proc/{sandbox_pid}/ns/ipc") != os.readlink("/proc/self/ns/ipc")
    assert os.readlink(f"/proc/{sandbox_pid}/ns/net") == os.readlink("/proc/self/ns/net")

    # The module: created from the image, started, its output in the CRI log, exit code 0.
    cfg = client.container_config("hello", [], log_path="hello.log", image=wasm_image)
    cid = rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_config),
        timeout=60,
    ).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)

    def exited() -> object:
        st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=30).status
        return st if st.state == pb.CONTAINER_EXITED else None

    st = wait_for(exited, "the wasm container to exit", timeout=30)
    assert st.exit_code == 0, st
    assert log_lines(log_dir / "hello.log") == [("stdout", "hello, wasm")]

    # One shim, the wasm one, served the pod (sandbox and module).
    shims = c.shims()
    assert len(shims) == 1, shims
    shim_pid, argv = shims[0]
    assert any(os.path.basename(a) == SHIM_BINARIES[HANDLER] for a in argv[:2]), argv
    socket = shim_address(c.bundle(pod_id)).removeprefix("unix://")

    # Stop and remove the pod: nothing of it is left.
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    st_pod = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30)
    assert st_pod.status.state == pb.SANDBOX_NOTREADY
    assert not os.path.exists(f"/proc/{sandbox_pid}") or _is_zombie_free(sandbox_pid)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert pod_id not in {p.id for p in rt.ListPodSandbox(pb.ListPodSandboxRequest()).items}
    assert cid not in {x.id for x in rt.ListContainers(pb.ListContainersRequest()).containers}
    wait_for(lambda: not os.path.exists(f"/proc/{shim_pid}"), f"shim pid {shim_pid} to exit")
    assert not c.shims()
    assert not os.path.exists(socket), socket
    for i in (pod_id, cid):
        assert not c.bundle(i).exists(), c.bundle(i)
    left = [d for d in _cgroup_dirs(c.cgroup_parent) if pod_id in d.name or cid in d.name]
    assert not left, left


def _is_zombie_free(pid: int) -> bool:
    """A pid still in /proc after the stop is some other process now (the holder was reaped)."""
    try:
        return Path(f"/proc/{pid}/exe").resolve().name != "sleep"
    except OSError:
        return True


def _cgroup_dirs(parent: str) -> list[Path]:
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.lstrip("/")
        if top.is_dir():
            found += [p for p in top.rglob("*") if p.is_dir()]
    return found
