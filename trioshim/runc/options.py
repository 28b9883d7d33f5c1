"""Runtime options: the ``Any`` types a runc shim understands, and their bundle files.

Two families of types mean the same thing. containerd's Go client picks one by the runtime's
name: ``containerd.runc.v1.Options`` / ``CheckpointOptions`` for names starting with
``io.containerd.runc``, the legacy ``containerd.linux.runc.CreateOptions`` /
``CheckpointOptions`` (Go package runctypes, made for containerd's first runtime) for every
other name, ours included. That is what ``WithShimCgroup``, the stdio owner of user-namespace
containers (``WithUIDOwner``-style io uid/gid), ``WithNoPivotRoot`` and checkpoints send, so
both are accepted wherever options arrive: the start action's stdin (``shim_cgroup``), Create
and Checkpoint.

``CreateOptions`` is turned into ``Options`` field by field (no_pivot_root, no_new_keyring,
shim_cgroup, io_uid, io_gid, criu_work_path, criu_image_path). Its remaining fields (open_tcp,
external_unix_sockets, terminal, file_locks, empty_namespaces, cgroups_mode) have no place in
``Options``: they describe how to restore, and become the flags of ``runc restore`` when the
Create carries a checkpoint (containerd's own v1 shim ignored them). ``CheckpointOptions`` of
either family carries the same fields under the same names.

Bundle files, written at Create so the ``delete`` action can work without the daemon:
``options.json`` (the ``Options`` in effect, snake_case,
zero fields omitted, mode 0600) and ``runtime`` (``binary_name`` verbatim, mode 0600); the
``delete`` action reads both back.
"""

from __future__ import annotations

import json
import os
from typing import Final, TypeVar

from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from trioshim.api.containerd.runtime.linux.runctypes import runc_pb2 as legacy
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.runc.runc_args import CheckpointOpts
from trioshim.runc.states import unknown

OPTIONS_FILE: Final = "options.json"
RUNTIME_FILE: Final = "runtime"
OPTIONS_TYPE: Final = "containerd.runc.v1.Options"
CHECKPOINT_OPTIONS_TYPE: Final = "containerd.runc.v1.CheckpointOptions"
LEGACY_CREATE_OPTIONS_TYPE: Final = "containerd.linux.runc.CreateOptions"
LEGACY_CHECKPOINT_OPTIONS_TYPE: Final = "containerd.linux.runc.CheckpointOptions"
RUNTIME_OPTIONS_TYPE: Final = "runtimeoptions.v1.Options"

M = TypeVar("M", bound=Message)


def type_name(type_url: str) -> str:
    """The message name of a type URL (containerd compares the part after the last ``/``)."""
    return type_url.rsplit("/", 1)[-1]


def _unpack(options: any_pb2.Any, message: M) -> M:
    try:
        message.ParseFromString(options.value)
    except Exception as exc:
        raise unknown(f"failed to unmarshal {type_name(options.type_url)}: {exc}") from exc
    return message


def _not_found(options: any_pb2.Any) -> Exception:
    return unknown(f"type with url {options.type_url}: not found")


# --- the legacy family, as the containerd.runc.v1 one -------------------------------------------


def _same_names(source: Message, target: M) -> M:
    """``target`` given every field of ``source`` it has a field of that name for: the two
    families name the same setting alike, and what has no counterpart is left behind."""
    data = json_format.MessageToDict(source, preserving_proto_field_name=True)
    return json_format.ParseDict(data, target, ignore_unknown_fields=True)


def from_legacy_create(opts: legacy.CreateOptions) -> oci_pb2.Options:
    """no_pivot_root, no_new_keyring, shim_cgroup, io_uid, io_gid, criu_work_path and
    criu_image_path; the rest is :func:`restore_from_legacy_create`'s."""
    return _same_names(opts, oci_pb2.Options())


def restore_from_legacy_create(opts: legacy.CreateOptions) -> CheckpointOpts:
    """The ``runc restore`` flags in a CreateOptions (paths are the Create's, set later)."""
    return CheckpointOpts(
        tcp_established=opts.open_tcp,
        ext_unix_sk=opts.external_unix_sockets,
        shell_job=opts.terminal,
        file_locks=opts.file_locks,
        empty_namespaces=tuple(opts.empty_namespaces),
        cgroups_mode=opts.cgroups_mode,
    )


def from_legacy_checkpoint(opts: legacy.CheckpointOptions) -> oci_pb2.CheckpointOptions:
    """Every field: both CheckpointOptions have the same ones (in another order)."""
    return _same_names(opts, oci_pb2.CheckpointOptions())


# --- decoding -----------------------------------------------------------------------------------


def runc_options(options: any_pb2.Any | None) -> oci_pb2.Options | None:
    """The runc options in an ``Any`` of either family (None: absent or another type)."""
    if options is None:
        return None
    name = type_name(options.type_url)
    if name == OPTIONS_TYPE:
        return _unpack(options, oci_pb2.Options())
    if name == LEGACY_CREATE_OPTIONS_TYPE:
        return from_legacy_create(_unpack(options, legacy.CreateOptions()))
    return None


def decode_options(options: any_pb2.Any | None) -> oci_pb2.Options:
    """``CreateTaskRequest.options`` as runc Options (empty when absent or another runtime's)."""
    if options is None or not options.type_url:
        return oci_pb2.Options()
    opts = runc_options(options)
    if opts is not None:
        return opts
    if type_name(options.type_url) == RUNTIME_OPTIONS_TYPE:
        # ctr --runtime-config-path / CRI for non-runc runtimes: nothing for runc in it.
        return oci_pb2.Options()
    raise _not_found(options)


def decode_restore_options(options: any_pb2.Any | None) -> CheckpointOpts:
    """The ``runc restore`` flags of ``CreateTaskRequest.options`` (only the legacy
    CreateOptions has any; none otherwise)."""
    if options is None or type_name(options.type_url) != LEGACY_CREATE_OPTIONS_TYPE:
        return CheckpointOpts()
    return restore_from_legacy_create(_unpack(options, legacy.CreateOptions()))


def decode_checkpoint_options(options: any_pb2.Any | None) -> oci_pb2.CheckpointOptions:
    """``CheckpointTaskRequest.options`` of either family (empty when absent)."""
    if options is None or not options.type_url:
        return oci_pb2.CheckpointOptions()
    name = type_name(options.type_url)
    if name == CHECKPOINT_OPTIONS_TYPE:
        return _unpack(options, oci_pb2.CheckpointOptions())
    if name == LEGACY_CHECKPOINT_OPTIONS_TYPE:
        return from_legacy_checkpoint(_unpack(options, legacy.CheckpointOptions()))
    raise _not_found(options)


def checkpoint_flags(opts: oci_pb2.CheckpointOptions) -> CheckpointOpts:
    """The flags of ``runc checkpoint`` for a Checkpoint's options (its path comes apart)."""
    return CheckpointOpts(
        work_path=opts.work_path,
        tcp_established=opts.open_tcp,
        ext_unix_sk=opts.external_unix_sockets,
        shell_job=opts.terminal,
        file_locks=opts.file_locks,
        empty_namespaces=tuple(opts.empty_namespaces),
    )


# --- bundle files -------------------------------------------------------------------------------


def options_json(opts: oci_pb2.Options) -> str:
    """Go's ``json.Marshal`` of the options: snake_case keys, zero fields omitted."""
    data = json_format.MessageToDict(opts, preserving_proto_field_name=True)
    return json.dumps(data, separators=(",", ":"))


def write_bundle_files(bundle: str, opts: oci_pb2.Options) -> None:
    _write_private(os.path.join(bundle, OPTIONS_FILE), options_json(opts))
    _write_private(os.path.join(bundle, RUNTIME_FILE), opts.binary_name)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def read_options(bundle: str) -> oci_pb2.Options | None:
    """``options.json`` of a bundle (None when missing). Raises on a broken file."""
    try:
        with open(os.path.join(bundle, OPTIONS_FILE), encoding="utf-8") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    opts = oci_pb2.Options()
    json_format.Parse(data, opts, ignore_unknown_fields=True)
    return opts


def read_runtime(bundle: str) -> str:
    """``runtime`` of a bundle: the runc binary name (may be empty). Raises when missing."""
    with open(os.path.join(bundle, RUNTIME_FILE), encoding="utf-8") as f:
        return f.read()
