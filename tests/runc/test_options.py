"""Runtime options: both type families (containerd.runc.v1 and the legacy containerd.linux.runc
that containerd's client sends to runtimes not named io.containerd.runc*), bundle files."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from trioshim.api.containerd.runtime.linux.runctypes import runc_pb2 as legacy
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.runc import options as o
from trioshim.runc.runc_args import CheckpointOpts
from trioshim.task.errors import TaskError
from trioshim.ttrpc.errors import Code

FULL_CREATE = legacy.CreateOptions(
    no_pivot_root=True,
    open_tcp=True,
    external_unix_sockets=True,
    terminal=True,
    file_locks=True,
    empty_namespaces=["network", "ipc"],
    cgroups_mode="strict",
    no_new_keyring=True,
    shim_cgroup="/pods/shim",
    io_uid=1000,
    io_gid=1001,
    criu_work_path="/criu/work",
    criu_image_path="/criu/image",
)
FULL_CHECKPOINT = legacy.CheckpointOptions(
    exit=True,
    open_tcp=True,
    external_unix_sockets=True,
    terminal=True,
    file_locks=True,
    empty_namespaces=["network"],
    cgroups_mode="soft",
    work_path="/w",
    image_path="/i",
)


def pack(message: Message, prefix: str = "") -> any_pb2.Any:
    return any_pb2.Any(
        type_url=prefix + message.DESCRIPTOR.full_name, value=message.SerializeToString()
    )


def test_options_json_like_go(tmp_path: Path) -> None:
    assert o.options_json(oci_pb2.Options()) == "{}"
    opts = oci_pb2.Options(binary_name="runc", systemd_cgroup=True, io_uid=1000)
    assert json.loads(o.options_json(opts)) == {
        "binary_name": "runc",
        "systemd_cgroup": True,
        "io_uid": 1000,
    }
    o.write_bundle_files(str(tmp_path), opts)
    assert (tmp_path / "runtime").read_text() == "runc"
    assert (tmp_path / "options.json").stat().st_mode & 0o777 == 0o600
    assert o.read_options(str(tmp_path)) == opts
    assert o.read_runtime(str(tmp_path)) == "runc"
    assert o.read_options(str(tmp_path / "nope")) is None


def test_decode_options() -> None:
    opts = oci_pb2.Options(root="/r", no_pivot_root=True)
    assert o.decode_options(pack(opts)) == opts
    assert o.decode_options(pack(opts, "type.googleapis.com/")) == opts
    assert o.decode_options(None) == oci_pb2.Options()
    assert o.decode_options(any_pb2.Any()) == oci_pb2.Options()
    assert o.decode_options(any_pb2.Any(type_url="runtimeoptions.v1.Options")) == oci_pb2.Options()
    with pytest.raises(TaskError, match=r"^type with url foo\.Bar: not found$"):
        o.decode_options(any_pb2.Any(type_url="foo.Bar"))


def test_legacy_create_options_mean_the_same_options() -> None:
    expected = oci_pb2.Options(
        no_pivot_root=True,
        no_new_keyring=True,
        shim_cgroup="/pods/shim",
        io_uid=1000,
        io_gid=1001,
        criu_work_path="/criu/work",
        criu_image_path="/criu/image",
    )
    assert o.decode_options(pack(FULL_CREATE)) == expected
    assert o.decode_options(pack(FULL_CREATE, "type.googleapis.com/")) == expected
    assert o.decode_options(pack(legacy.CreateOptions())) == oci_pb2.Options()


def test_legacy_create_restore_fields_become_restore_flags() -> None:
    assert o.restore_from_legacy_create(FULL_CREATE) == CheckpointOpts(
        tcp_established=True,
        ext_unix_sk=True,
        shell_job=True,
        file_locks=True,
        empty_namespaces=("network", "ipc"),
        cgroups_mode="strict",
    )


@pytest.mark.parametrize("field", [f.name for f in legacy.CreateOptions.DESCRIPTOR.fields])
def test_no_legacy_create_field_is_dropped(field: str) -> None:
    """Each field of CreateOptions, set alone, shows in the Options or in the restore flags."""
    alone = legacy.CreateOptions()
    value = getattr(FULL_CREATE, field)
    if isinstance(value, str | bool | int):
        setattr(alone, field, value)
    else:
        getattr(alone, field).extend(value)
    assert (
        o.from_legacy_create(alone) != oci_pb2.Options()
        or o.restore_from_legacy_create(alone) != CheckpointOpts()
    )


def test_restore_flags_only_from_legacy_create_options() -> None:
    assert o.decode_restore_options(pack(FULL_CREATE)).cgroups_mode == "strict"
    assert o.decode_restore_options(pack(oci_pb2.Options(root="/r"))) == CheckpointOpts()
    assert o.decode_restore_options(None) == CheckpointOpts()


def test_runc_options_at_start() -> None:
    """The start action reads shim_cgroup from either family; other types are not its business."""
    assert o.runc_options(pack(oci_pb2.Options(shim_cgroup="/a"))) == oci_pb2.Options(
        shim_cgroup="/a"
    )
    legacy_opts = o.runc_options(pack(legacy.CreateOptions(shim_cgroup="/b", io_uid=7)))
    assert legacy_opts == oci_pb2.Options(shim_cgroup="/b", io_uid=7)
    assert o.runc_options(any_pb2.Any(type_url="runtimeoptions.v1.Options")) is None
    assert o.runc_options(None) is None


def test_decode_checkpoint_options_of_both_families() -> None:
    decoded = o.decode_checkpoint_options(pack(FULL_CHECKPOINT))
    # same names, same values: every legacy field arrives
    as_dict = functools.partial(json_format.MessageToDict, preserving_proto_field_name=True)
    assert as_dict(decoded) == as_dict(FULL_CHECKPOINT)
    assert len(as_dict(decoded)) == len(legacy.CheckpointOptions.DESCRIPTOR.fields)
    assert o.decode_checkpoint_options(pack(decoded)) == decoded
    assert o.decode_checkpoint_options(None) == oci_pb2.CheckpointOptions()
    with pytest.raises(TaskError, match=r"^type with url containerd.runc.v1.Options: not found$"):
        o.decode_checkpoint_options(pack(oci_pb2.Options()))


@pytest.mark.parametrize(
    "type_url",
    [
        "containerd.runc.v1.Options",
        "containerd.linux.runc.CreateOptions",
        "containerd.linux.runc.CheckpointOptions",
    ],
)
def test_garbage_is_a_clear_error(type_url: str) -> None:
    garbage = any_pb2.Any(type_url=type_url, value=b"\xff\xff\xff")
    decode = o.decode_checkpoint_options if "Checkpoint" in type_url else o.decode_options
    with pytest.raises(TaskError) as info:
        decode(garbage)
    assert info.value.code == Code.UNKNOWN
    assert str(info.value).startswith(f"failed to unmarshal {type_url}: ")
