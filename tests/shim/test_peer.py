"""The start reply per containerd line (trioshim.shim.peer) and 2.3's stdin told apart from an
options Any (trioshim.shim.startplan.parse_stdin), from bytes built here."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from trioshim.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.shim.flags import parse_flags
from trioshim.shim.peer import containerd_task_api, go_build_info, start_reply
from trioshim.shim.startplan import StartError, parse_stdin

ADDRESS = "unix:///run/containerd/s/" + "ab" * 32
SENTINEL = bytes(range(16))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def go_elf(path: Path, modinfo: str, *, flags: int = 2, go: str = "go1.24.4") -> Path:
    """A minimal ELF64 file with a `.go.buildinfo` section laid out as Go 1.18+ writes it."""
    info = SENTINEL + modinfo.encode() + SENTINEL
    blob = b"\xff Go buildinf:" + bytes([8, flags]) + b"\0" * 16
    blob += _varint(len(go)) + go.encode() + _varint(len(info)) + info
    names = b"\0.shstrtab\0.go.buildinfo\0"
    data_off = 64
    names_off = data_off + len(blob)
    shoff = names_off + len(names)
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    assert len(header) == 64

    def sh(name: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 1, 0)

    table = b"\0" * 64 + sh(1, names_off, len(names)) + sh(11, data_off, len(blob))
    path.write_bytes(header + blob + names + table)
    return path


V1 = "path\tgithub.com/containerd/containerd/cmd/containerd\nbuild\t-compiler=gc\n"
V2 = "path\tgithub.com/containerd/containerd/v2/cmd/containerd\nbuild\t-compiler=gc\n"
V2_MOD = (
    "path\tgithub.com/containerd/containerd/v2/cmd/containerd\n"
    "mod\tgithub.com/containerd/containerd/v2\tv2.1.9\th1:x=\n"
)
K3S_LIKE = "path\tgithub.com/k3s-io/k3s/cmd/server\ndep\tgithub.com/containerd/containerd/v2\tv2\n"


def test_build_info_of_a_built_binary(tmp_path: Path) -> None:
    assert go_build_info(str(go_elf(tmp_path / "c", V2))) == ("go1.24.4", V2)


@pytest.mark.parametrize(
    ("modinfo", "flags", "api"),
    [
        (V1, 2, 2),
        (V2, 2, 3),
        (V2_MOD, 2, 3),
        (V2.replace("/v2/", "/v3/"), 2, 3),
        (K3S_LIKE, 2, 2),  # another main module: not known to be a 2.x daemon
        ("", 2, 2),
        (V2, 0, 2),  # pre-1.18 layout (pointers, not inline strings): not read
    ],
)
def test_task_api_from_the_binary(tmp_path: Path, modinfo: str, flags: int, api: int) -> None:
    assert containerd_task_api(str(go_elf(tmp_path / "c", modinfo, flags=flags))) == api


def test_task_api_of_anything_else_is_2(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\n")
    (tmp_path / "short").write_bytes(b"\x7fELF")
    for path in ("/nonexistent/containerd", "/bin/sh", tmp_path / "script", tmp_path / "short"):
        assert containerd_task_api(str(path)) == 2


@pytest.mark.skipif(not os.path.exists("/usr/bin/containerd"), reason="no containerd")
def test_task_api_of_the_installed_containerd() -> None:
    # bookworm's 1.6.20 (the fetched 1.7 and 2.1 are checked end to end in tests/e2e)
    assert containerd_task_api("/usr/bin/containerd") == 2


def test_start_reply_per_line(tmp_path: Path) -> None:
    v1 = str(go_elf(tmp_path / "c1", V1))
    v2 = str(go_elf(tmp_path / "c2", V2))
    env17 = {"MAX_SHIM_VERSION": "2", "GRPC_ADDRESS": "/c.sock", "NAMESPACE": "ns"}
    plain = ADDRESS.encode()
    # 1.6 sets no MAX_SHIM_VERSION: plain, whatever the binary says.
    assert start_reply(ADDRESS, max_task_api=3, environ={}, publish_binary=v2) == plain
    # 1.7: plain (= version 2).
    assert start_reply(ADDRESS, max_task_api=3, environ=env17, publish_binary=v1) == plain
    # 2.x: JSON version 3 ...
    reply = start_reply(ADDRESS, max_task_api=3, environ=env17, publish_binary=v2)
    assert json.loads(reply) == {"version": 3, "address": ADDRESS, "protocol": "ttrpc"}
    # ... that 2.3 would not mistake for a BootstrapResult protobuf.
    with pytest.raises(DecodeError):
        bootstrap_pb2.BootstrapResult.FromString(reply)
    # ... but only when the shim serves task v3.
    assert start_reply(ADDRESS, max_task_api=2, environ=env17, publish_binary=v2) == plain
    # No -publish-binary: /proc/<containerd pid>/exe (our own pid: python, not containerd).
    assert start_reply(ADDRESS, max_task_api=3, environ=env17, containerd_pid=os.getpid()) == plain
    # Forced either way.
    forced2 = {**env17, "TRIOSHIM_TASK_API": "2"}
    assert start_reply(ADDRESS, max_task_api=3, environ=forced2, publish_binary=v2) == plain
    forced3 = {"TRIOSHIM_TASK_API": "3"}
    assert json.loads(start_reply(ADDRESS, max_task_api=3, environ=forced3))["version"] == 3


def test_start_reply_to_bootstrap_params_is_a_bootstrap_result() -> None:
    reply = start_reply(ADDRESS, max_task_api=3, environ={}, bootstrap=True)
    result = bootstrap_pb2.BootstrapResult.FromString(reply)
    assert (result.version, result.address, result.protocol) == (3, ADDRESS, "ttrpc")
    assert start_reply(ADDRESS, max_task_api=2, environ={}, bootstrap=True) == ADDRESS.encode()


# --------------------------------------------------------------------------- stdin of start

FLAGS = parse_flags(["-namespace", "testns", "-id", "c1", "start"])


def runc_options() -> any_pb2.Any:
    opts = oci_pb2.Options(shim_cgroup="/pod/shim", binary_name="runc")
    return any_pb2.Any(type_url="containerd.runc.v1.Options", value=opts.SerializeToString())


def test_empty_stdin_is_no_options() -> None:
    assert parse_stdin(b"", FLAGS) == (None, None)


def test_options_any_is_not_bootstrap_params() -> None:
    data = runc_options().SerializeToString()
    # The bytes do parse as BootstrapParams (type_url and value land in instance_id and
    # namespace), which is why the id and namespace must match.
    parsed = bootstrap_pb2.BootstrapParams.FromString(data)
    assert parsed.instance_id == "containerd.runc.v1.Options"
    options, bootstrap = parse_stdin(data, FLAGS)
    assert bootstrap is None and options == runc_options()


def test_any_that_parses_as_bootstrap_params_with_our_id_is_still_an_any() -> None:
    """An Any whose type URL happens to equal the id, with a value that is valid UTF-8 but not
    our namespace: still the options Any."""
    weird = any_pb2.Any(type_url="c1", value=b"some-other-ns")
    data = weird.SerializeToString()
    assert bootstrap_pb2.BootstrapParams.FromString(data).instance_id == "c1"
    options, bootstrap = parse_stdin(data, FLAGS)
    assert bootstrap is None and options == weird


def test_bootstrap_params_with_options_extension() -> None:
    params = bootstrap_pb2.BootstrapParams(
        instance_id="c1",
        namespace="testns",
        log_level=bootstrap_pb2.LOG_LEVEL_TRACE,  # negative: a 10-byte varint
        containerd_version="2.3.0",
        containerd_ttrpc_address="/run/containerd/containerd.sock.ttrpc",
        containerd_grpc_address="/run/containerd/containerd.sock",
        containerd_binary="/usr/bin/containerd",
        socket_dir="/run/containerd/s",
    )
    other = any_pb2.Any(type_url="type.googleapis.com/containerd.types.Platform", value=b"")
    params.extensions.add().value.CopyFrom(other)
    params.extensions.add().value.CopyFrom(runc_options())
    options, bootstrap = parse_stdin(params.SerializeToString(), FLAGS)
    assert options == runc_options()
    assert bootstrap is not None and bootstrap.socket_dir == "/run/containerd/s"
    assert bootstrap.log_level == bootstrap_pb2.LOG_LEVEL_TRACE


def test_bootstrap_params_for_another_instance_is_not_ours() -> None:
    """Not our id: read as an Any (field 1, the instance id, is its type URL)."""
    params = bootstrap_pb2.BootstrapParams(instance_id="c2", namespace="testns")
    options, bootstrap = parse_stdin(params.SerializeToString(), FLAGS)
    assert bootstrap is None and options is not None and options.type_url == "c2"
    # Without an instance id it is neither: refused.
    with pytest.raises(StartError, match="no type URL"):
        parse_stdin(bootstrap_pb2.BootstrapParams(namespace="testns").SerializeToString(), FLAGS)


def test_unreadable_stdin_is_an_error() -> None:
    with pytest.raises(StartError, match="unreadable options"):
        parse_stdin(b"\xff\xff\xff\xff", FLAGS)
