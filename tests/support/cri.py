"""CRI (the Kubernetes Container Runtime Interface) against a private containerd of any line.

- `cri_modules()`: Python gRPC modules generated at test time (tests.support.grpc_modules) from
  the CRI `api.proto` of Debian's golang-k8s-cri-api-dev (see containerd_lines.cri_api_proto).
  The proto is compiled as `cri_runtime_v1.proto`, so the modules are `cri_runtime_v1_pb2` /
  `cri_runtime_v1_pb2_grpc` (package `runtime.v1` on the wire).
- `CRIContainerd`: a LineContainerd with containerd's CRI plugin configured the way this machine
  allows (measured): runtime handlers `runc` (io.containerd.runc.v2), `trioshim`
  (io.containerd.trioshim.v2), `trioshim-shared` (io.containerd.trioshim-shared.v2) and
  `triowasm` (io.containerd.triowasm.v2), the sandbox image built by tests.support.pause_image
  and imported into namespace k8s.io, `restrict_oom_score_adj = true` (no CAP_SYS_RESOURCE
  here, so runc cannot give the sandbox its -998), the `native` snapshotter, no CNI (pods must
  use host network). Config version 2 for 1.6/1.7 (`io.containerd.grpc.v1.cri`), version 3 for
  2.x (`io.containerd.cri.v1.runtime` / `io.containerd.cri.v1.images`).
- `CRIClient`: RuntimeService and ImageService stubs over containerd's unix socket, plus the
  small helpers the tests share (pod and container configs).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support.containerd_lines import ContainerdLine, cri_api_proto
from tests.support.grpc_modules import generated_modules
from tests.support.line_containerd import LineContainerd
from tests.support.pause_image import PAUSE_IMAGE, build_pause_image

CRI_NAMESPACE = "k8s.io"  # fixed by containerd's CRI plugin
# Handlers of Linux containers (every test of tests/cri/test_cri.py runs on each)...
HANDLERS = {
    "runc": "io.containerd.runc.v2",
    "trioshim": "io.containerd.trioshim.v2",
    "trioshim-shared": "io.containerd.trioshim-shared.v2",
}
# ...and of WASI modules (tests/cri/test_cri_wasm.py); the daemon is configured with all.
WASM_HANDLERS = {"triowasm": "io.containerd.triowasm.v2"}
ALL_HANDLERS = {**HANDLERS, **WASM_HANDLERS}
SHIM_BINARIES = {
    "runc": "containerd-shim-runc-v2",
    "trioshim": "containerd-shim-trioshim-v2",
    "trioshim-shared": "containerd-shim-trioshim-shared-v2",
    "triowasm": "containerd-shim-triowasm-v2",
}

# ------------------------------------------------------------------------------ generated client


def cri_modules() -> tuple[ModuleType, ModuleType]:
    """(pb2, pb2_grpc) for CRI runtime.v1 (module `cri_runtime_v1`)."""
    return generated_modules("cri_runtime_v1", cri_api_proto().read_bytes())


# ------------------------------------------------------------------------------ the daemon


def cri_config(
    line: ContainerdLine,
    *,
    sandbox_image: str,
    cni_dir: Path,
    handlers: dict[str, str] = ALL_HANDLERS,
) -> str:
    """The CRI part of config.toml for this line (see module doc)."""
    if line.config_version >= 3:
        rt = 'plugins."io.containerd.cri.v1.runtime"'
        img = 'plugins."io.containerd.cri.v1.images"'
        text = f"""\
[{img}]
  snapshotter = "native"
  [{img}.pinned_images]
    sandbox = "{sandbox_image}"

[{rt}]
  restrict_oom_score_adj = true
  enable_cdi = false
  [{rt}.containerd]
    default_runtime_name = "runc"
"""
        for name, rtype in handlers.items():
            text += f"""\
    [{rt}.containerd.runtimes.{name}]
      runtime_type = "{rtype}"
"""
        text += f"""\
  [{rt}.cni]
    bin_dirs = ["{cni_dir / "bin"}"]
    conf_dir = "{cni_dir / "net.d"}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        return text
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""\
[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
"""
    for name, rtype in handlers.items():
        text += f"""\
    [{cri}.containerd.runtimes.{name}]
      runtime_type = "{rtype}"
"""
    text += f"""\
  [{cri}.cni]
    bin_dir = "{cni_dir / "bin"}"
    conf_dir = "{cni_dir / "net.d"}"
"""
    return text


class CRIContainerd(LineContainerd):
    """A private containerd of `line` serving CRI on its gRPC socket; the sandbox image imported.

    Pods' cgroups go under `self.cgroup_parent` (unique per daemon) and their logs under
    `self.base / "pods"`; `stop()` removes every pod through CRI first, then does the base
    clean-up (restricted to what this daemon created)."""

    def __init__(
        self, line: ContainerdLine, *, image_tar: Path | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("namespace", CRI_NAMESPACE)
        super().__init__(line, **kwargs)
        self.cni_dir = self.base / "cni"
        self.pods_dir = self.base / "pods"
        self.cgroup_parent = f"/trioshim-cri-{secrets.token_hex(4)}"
        self.image_tar = image_tar
        self.extra_config = cri_config(line, sandbox_image=PAUSE_IMAGE, cni_dir=self.cni_dir) + (
            ("\n" + self.extra_config) if self.extra_config else ""
        )
        self._client: CRIClient | None = None

    # What CRI needs loaded (on 2.x the sandbox controllers and the transfer service too),
    # whatever the base class disables.
    CRI_PLUGINS = frozenset(
        {
            "io.containerd.grpc.v1.cri",
            "io.containerd.cri.v1.runtime",
            "io.containerd.cri.v1.images",
            "io.containerd.podsandbox.controller.v1.podsandbox",
            "io.containerd.sandbox.controller.v1.shim",
            "io.containerd.grpc.v1.sandbox-controllers",
            "io.containerd.transfer.v1.local",
            "io.containerd.grpc.v1.transfer",
            "io.containerd.snapshotter.v1.native",
        }
    )

    def disabled_plugins(self) -> list[str]:
        return [p for p in super().disabled_plugins() if p not in self.CRI_PLUGINS]

    def start(self) -> None:
        for d in (self.cni_dir / "bin", self.cni_dir / "net.d", self.pods_dir):
            d.mkdir(parents=True, exist_ok=True)
        super().start()
        if self.image_tar is None:
            self.image_tar = build_pause_image(self.base / "pause.tar")
        self.import_image(self.image_tar)

    def import_image(self, tar: Path, ref: str = PAUSE_IMAGE) -> None:
        r = self.ctr("images", "import", "--snapshotter", "native", str(tar), timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ctr images import failed: {r.stderr}\n{self.log_tail()}")
        # CRI learns about images through events: wait until it sees it.
        client = self.client()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = client.image.ImageStatus(
                client.pb.ImageStatusRequest(image=client.pb.ImageSpec(image=ref)),
                timeout=10,
            )
            if st.image.id:
                return
            time.sleep(0.1)
        raise RuntimeError(f"CRI does not see {ref} after import\n{self.log_tail()}")

    def client(self) -> CRIClient:
        if self._client is None:
            self._client = CRIClient(self.address)
        return self._client

    # --- clean-up, limited to this daemon's pods

    def remove_all_pods(self) -> list[str]:
        forced = []
        c = self.client()
        for pod in c.runtime.ListPodSandbox(c.pb.ListPodSandboxRequest(), timeout=30).items:
            forced.append(f"pod {pod.metadata.name}")
            with contextlib.suppress(Exception):
                c.runtime.StopPodSandbox(
                    c.pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60
                )
            with contextlib.suppress(Exception):
                c.runtime.RemovePodSandbox(
                    c.pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60
                )
        return forced

    def stop(self) -> list[str]:
        if self._stopped:
            return []
        forced: list[str] = []
        if self.running:
            with contextlib.suppress(Exception):
                forced += self.remove_all_pods()
        if self._client is not None:
            self._client.close()
            self._client = None
        return forced + super().stop()

    def _force_delete_runc(self) -> list[str]:
        """Only runc containers whose bundle is ours (k8s.io is shared by every CRI daemon)."""
        from tests.support.containerd_layout import RUNC_ROOT

        root = RUNC_ROOT / self.namespace
        forced = []
        if root.is_dir():
            for entry in root.iterdir():
                try:
                    state = (entry / "state.json").read_text()
                except OSError:
                    continue
                if str(self.base) + "/" not in state:  # bundle and rootfs live under base
                    continue
                forced.append(f"runc container {entry.name}")
                subprocess.run(
                    ["runc", "--root", str(root), "delete", "--force", entry.name],
                    capture_output=True,
                    timeout=30,
                )
        return forced

    def _remove_cgroups(self) -> None:
        from tests.support.containerd_layout import CGROUP_ROOT

        if not CGROUP_ROOT.is_dir():
            return
        for ctl in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()]:
            top = ctl / self.cgroup_parent.lstrip("/")
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(
                os.walk(top), key=lambda t: len(t[0]), reverse=True
            ):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


# ------------------------------------------------------------------------------ the client


class CRIClient:
    """RuntimeService (`.runtime`) and ImageService (`.image`) stubs, generated modules in `.pb`."""

    def __init__(self, address: str) -> None:
        import grpc

        self.pb, self.pb_grpc = cri_modules()
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.runtime = self.pb_grpc.RuntimeServiceStub(self.channel)
        self.image = self.pb_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def version(self) -> Any:
        return self.runtime.Version(self.pb.VersionRequest(version="v1"), timeout=10)

    # --- configs

    def pod_config(self, name: str, *, log_dir: Path, cgroup_parent: str) -> Any:
        pb = self.pb
        ns = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=name, namespace="default", uid=secrets.token_hex(8), attempt=0
            ),
            # No hostname: a host-network pod shares the host's UTS namespace, and runc refuses
            # to set a hostname there.
            log_directory=str(log_dir),
            labels={"app": name},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns),
            ),
        )

    def container_config(
        self, name: str, command: list[str], *, log_path: str, image: str = PAUSE_IMAGE
    ) -> Any:
        pb = self.pb
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=0),
            image=pb.ImageSpec(image=image),
            command=command,
            log_path=log_path,
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=pb.NamespaceOption(
                        network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD
                    ),
                ),
            ),
        )
