"""The newer containerd lines (trixie's 1.7, sid's 2.1) fetched, unpacked and running here, and
the basic `ctr run --rm` of issue 4 on each, through the reference runc shim and through ours.

The `trioshim` runtime fails until containerd-shim-trioshim-v2 exists on PATH (the venv's bin):
that is expected while the shim is being built.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.containerd_lines import FETCHED_LINE_NAMES, LINE_NAMES, LINE_SPECS, get_line
from tests.support.line_containerd import LineContainerd

pytestmark = pytest.mark.e2e

RUNTIMES = {"runc": "io.containerd.runc.v2", "trioshim": "io.containerd.trioshim.v2"}


@pytest.mark.parametrize("name", LINE_NAMES, ids=lambda n: f"containerd-{n}")
def test_line_binaries_run(name: str) -> None:
    line = get_line(name)
    expect = LINE_SPECS[name].expect
    for binary in (line.containerd, line.ctr):
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert line.version in out, out
    out = subprocess.run(
        [line.shim_runc_v2, "-v"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "containerd-shim-runc-v2" in out, out
    # The lines the suite was written for; a newer point release of the suite is accepted.
    assert line.version.startswith(expect.rsplit(".", 1)[0] + "."), (line.version, expect)


def test_fetch_is_cached() -> None:
    """A second look-up (another process, same machine) costs no download."""
    t0 = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import tests.support.containerd_lines as L\n"
            "for n in L.FETCHED_LINE_NAMES: L.get_line(n)\n"
            "L.cri_api_proto()\n",
        ],
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("runtime", list(RUNTIMES.values()), ids=list(RUNTIMES))
def test_ctr_run_echo(line_containerd: LineContainerd, busybox_rootfs: Path, runtime: str) -> None:
    c = line_containerd
    cid = f"echo-{secrets.token_hex(4)}"
    r = c.ctr(
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--rootfs",
        str(busybox_rootfs),
        cid,
        "/bin/echo",
        "hello",
        "from",
        c.line.version,
        timeout=60,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, f"hello from {c.line.version}\n", "")
    # Nothing left: task, container, shim process, shim socket, bundle.
    deadline = time.monotonic() + 10
    while c.shims() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not c.shims()
    assert c.ctr("tasks", "ls", "-q", check=True).stdout.split() == []
    assert cid not in c.ctr("containers", "ls", "-q", check=True).stdout.split()
    assert not c.shim_sockets([cid])
    assert not c.bundle(cid).exists()


@pytest.mark.parametrize(
    "line_containerd",
    [n for n in FETCHED_LINE_NAMES if int(n.split(".")[0]) >= 2],  # 1.x never runs -info
    ids=lambda n: f"containerd-{n}",
    indirect=True,
)
def test_runtime_info_through_containerd(line_containerd: LineContainerd) -> None:
    """2.x runs `<shim> -info` for `ctr plugins inspect-runtime` (introspection PluginInfo):
    our RuntimeInfo arrives whole."""
    c = line_containerd
    assert c.major >= 2
    r = c.ctr("plugins", "inspect-runtime", "--runtime", RUNTIMES["trioshim"], timeout=60)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["Name"] == RUNTIMES["trioshim"]
    assert info["Version"]["Version"]
