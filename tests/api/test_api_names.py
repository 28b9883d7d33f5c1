"""Full names, field numbers and types that go on the wire, as containerd's Go types have them."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from trioshim.api.cgroups.v1 import metrics_pb2 as cg1
from trioshim.api.cgroups.v2 import metrics_pb2 as cg2
from trioshim.api.containerd.events import task_pb2 as events
from trioshim.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from trioshim.api.containerd.runtime.linux.runctypes import runc_pb2 as runctypes
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as v2
from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as v3
from trioshim.api.containerd.services.ttrpc.events.v1 import events_pb2
from trioshim.api.containerd.types import introspection_pb2, metrics_pb2, mount_pb2
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.api.containerd.types.runtimeoptions.v1 import api_pb2 as runtimeoptions
from trioshim.api.containerd.types.task import task_pb2

T = FieldDescriptor
TASK_METHODS = [
    "State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint", "Kill",
    "Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect", "Shutdown",
]  # fmt: skip


def fields(desc: Descriptor) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in desc.fields}


def test_service_names() -> None:
    assert v2.DESCRIPTOR.services_by_name["Task"].full_name == "containerd.task.v2.Task"
    assert v3.DESCRIPTOR.services_by_name["Task"].full_name == "containerd.task.v3.Task"
    ev = events_pb2.DESCRIPTOR.services_by_name["Events"]
    assert ev.full_name == "containerd.services.events.ttrpc.v1.Events"
    forward = ev.methods_by_name["Forward"]
    assert forward.input_type.full_name == "containerd.services.events.ttrpc.v1.ForwardRequest"
    assert forward.output_type.full_name == "google.protobuf.Empty"


@pytest.mark.parametrize(
    ("message", "full_name"),
    [
        (v2.CreateTaskRequest, "containerd.task.v2.CreateTaskRequest"),
        (v3.CreateTaskRequest, "containerd.task.v3.CreateTaskRequest"),
        (mount_pb2.Mount, "containerd.types.Mount"),
        (metrics_pb2.Metric, "containerd.types.Metric"),
        (introspection_pb2.RuntimeInfo, "containerd.types.RuntimeInfo"),
        (introspection_pb2.RuntimeVersion, "containerd.types.RuntimeVersion"),
        (task_pb2.ProcessInfo, "containerd.v1.types.ProcessInfo"),
        (events.TaskCreate, "containerd.events.TaskCreate"),
        (events.TaskIO, "containerd.events.TaskIO"),
        (events.TaskStart, "containerd.events.TaskStart"),
        (events.TaskDelete, "containerd.events.TaskDelete"),
        (events.TaskExit, "containerd.events.TaskExit"),
        (events.TaskOOM, "containerd.events.TaskOOM"),
        (events.TaskExecAdded, "containerd.events.TaskExecAdded"),
        (events.TaskExecStarted, "containerd.events.TaskExecStarted"),
        (events.TaskPaused, "containerd.events.TaskPaused"),
        (events.TaskResumed, "containerd.events.TaskResumed"),
        (events.TaskCheckpointed, "containerd.events.TaskCheckpointed"),
        (events_pb2.Envelope, "containerd.services.events.ttrpc.v1.Envelope"),
        (oci_pb2.Options, "containerd.runc.v1.Options"),
        (oci_pb2.CheckpointOptions, "containerd.runc.v1.CheckpointOptions"),
        (oci_pb2.ProcessDetails, "containerd.runc.v1.ProcessDetails"),
        (runtimeoptions.Options, "runtimeoptions.v1.Options"),
        (bootstrap_pb2.BootstrapParams, "containerd.runtime.bootstrap.v1.BootstrapParams"),
        (bootstrap_pb2.BootstrapResult, "containerd.runtime.bootstrap.v1.BootstrapResult"),
        (cg1.Metrics, "io.containerd.cgroups.v1.Metrics"),
        (cg2.Metrics, "io.containerd.cgroups.v2.Metrics"),
    ],
)
def test_message_full_names(message: type, full_name: str) -> None:
    assert message.DESCRIPTOR.full_name == full_name  # type: ignore[attr-defined]


def test_task_v2_and_v3_have_the_same_17_methods_and_messages() -> None:
    s2 = v2.DESCRIPTOR.services_by_name["Task"]
    s3 = v3.DESCRIPTOR.services_by_name["Task"]
    assert [m.name for m in s2.methods] == TASK_METHODS
    assert [m.name for m in s3.methods] == TASK_METHODS
    for m2 in s2.methods:
        m3 = s3.methods_by_name[m2.name]
        assert m2.input_type.name == m3.input_type.name
        assert m2.output_type.name == m3.output_type.name
        assert not (m2.client_streaming or m2.server_streaming)
        assert not (m3.client_streaming or m3.server_streaming)
        for a, b in ((m2.input_type, m3.input_type), (m2.output_type, m3.output_type)):
            assert [(f.name, f.number, f.type, f.is_repeated) for f in a.fields] == [
                (f.name, f.number, f.type, f.is_repeated) for f in b.fields
            ]
    assert sorted(v2.DESCRIPTOR.message_types_by_name) == sorted(
        v3.DESCRIPTOR.message_types_by_name
    )


def test_state_response_fields() -> None:
    assert fields(v2.StateResponse.DESCRIPTOR) == {
        "id": (1, T.TYPE_STRING),
        "bundle": (2, T.TYPE_STRING),
        "pid": (3, T.TYPE_UINT32),
        "status": (4, T.TYPE_ENUM),
        "stdin": (5, T.TYPE_STRING),
        "stdout": (6, T.TYPE_STRING),
        "stderr": (7, T.TYPE_STRING),
        "terminal": (8, T.TYPE_BOOL),
        "exit_status": (9, T.TYPE_UINT32),
        "exited_at": (10, T.TYPE_MESSAGE),
        "exec_id": (11, T.TYPE_STRING),
    }
    desc = v2.StateResponse.DESCRIPTOR.fields_by_name
    assert desc["status"].enum_type.full_name == "containerd.v1.types.Status"
    assert desc["exited_at"].message_type.full_name == "google.protobuf.Timestamp"
    assert {v.name: v.number for v in task_pb2.Status.DESCRIPTOR.values} == {
        "UNKNOWN": 0, "CREATED": 1, "RUNNING": 2, "STOPPED": 3, "PAUSED": 4, "PAUSING": 5,
    }  # fmt: skip


def test_create_task_request_fields() -> None:
    assert fields(v2.CreateTaskRequest.DESCRIPTOR) == {
        "id": (1, T.TYPE_STRING),
        "bundle": (2, T.TYPE_STRING),
        "rootfs": (3, T.TYPE_MESSAGE),
        "terminal": (4, T.TYPE_BOOL),
        "stdin": (5, T.TYPE_STRING),
        "stdout": (6, T.TYPE_STRING),
        "stderr": (7, T.TYPE_STRING),
        "checkpoint": (8, T.TYPE_STRING),
        "parent_checkpoint": (9, T.TYPE_STRING),
        "options": (10, T.TYPE_MESSAGE),
    }
    rootfs = v2.CreateTaskRequest.DESCRIPTOR.fields_by_name["rootfs"]
    assert rootfs.is_repeated
    assert rootfs.message_type.full_name == "containerd.types.Mount"
    assert fields(mount_pb2.Mount.DESCRIPTOR) == {
        "type": (1, T.TYPE_STRING),
        "source": (2, T.TYPE_STRING),
        "target": (3, T.TYPE_STRING),
        "options": (4, T.TYPE_STRING),
    }


def test_other_task_messages() -> None:
    assert fields(v2.ConnectResponse.DESCRIPTOR) == {
        "shim_pid": (1, T.TYPE_UINT32),
        "task_pid": (2, T.TYPE_UINT32),
        "version": (3, T.TYPE_STRING),
    }
    assert fields(v2.WaitResponse.DESCRIPTOR) == {
        "exit_status": (1, T.TYPE_UINT32),
        "exited_at": (2, T.TYPE_MESSAGE),
    }
    annotations = v2.UpdateTaskRequest.DESCRIPTOR.fields_by_name["annotations"]
    assert annotations.number == 3
    assert annotations.message_type.GetOptions().map_entry
    assert fields(task_pb2.ProcessInfo.DESCRIPTOR) == {
        "pid": (1, T.TYPE_UINT32),
        "info": (2, T.TYPE_MESSAGE),
    }


def test_runc_options_fields() -> None:
    assert fields(oci_pb2.Options.DESCRIPTOR) == {
        "no_pivot_root": (1, T.TYPE_BOOL),
        "no_new_keyring": (2, T.TYPE_BOOL),
        "shim_cgroup": (3, T.TYPE_STRING),
        "io_uid": (4, T.TYPE_UINT32),
        "io_gid": (5, T.TYPE_UINT32),
        "binary_name": (6, T.TYPE_STRING),
        "root": (7, T.TYPE_STRING),
        "criu_path": (8, T.TYPE_STRING),
        "systemd_cgroup": (9, T.TYPE_BOOL),
        "criu_image_path": (10, T.TYPE_STRING),
        "criu_work_path": (11, T.TYPE_STRING),
        "task_api_address": (12, T.TYPE_STRING),
        "task_api_version": (13, T.TYPE_UINT32),
    }
    checkpoint = fields(oci_pb2.CheckpointOptions.DESCRIPTOR)
    assert checkpoint["empty_namespaces"] == (6, T.TYPE_STRING)
    assert checkpoint["work_path"] == (9, T.TYPE_STRING)
    assert fields(oci_pb2.ProcessDetails.DESCRIPTOR) == {"exec_id": (1, T.TYPE_STRING)}
    assert fields(runtimeoptions.Options.DESCRIPTOR)["config_path"] == (2, T.TYPE_STRING)


def test_legacy_runc_types() -> None:
    """containerd.linux.runc (Go runctypes): the full names are in the type URLs containerd's
    client sends to every runtime not named io.containerd.runc*."""
    assert runctypes.CreateOptions.DESCRIPTOR.full_name == "containerd.linux.runc.CreateOptions"
    assert (
        runctypes.CheckpointOptions.DESCRIPTOR.full_name
        == "containerd.linux.runc.CheckpointOptions"
    )
    criu_flags = {
        "open_tcp": (2, T.TYPE_BOOL),
        "external_unix_sockets": (3, T.TYPE_BOOL),
        "terminal": (4, T.TYPE_BOOL),
        "file_locks": (5, T.TYPE_BOOL),
        "empty_namespaces": (6, T.TYPE_STRING),
        "cgroups_mode": (7, T.TYPE_STRING),
    }
    assert fields(runctypes.CreateOptions.DESCRIPTOR) == {
        "no_pivot_root": (1, T.TYPE_BOOL),
        **criu_flags,
        "no_new_keyring": (8, T.TYPE_BOOL),
        "shim_cgroup": (9, T.TYPE_STRING),
        "io_uid": (10, T.TYPE_UINT32),
        "io_gid": (11, T.TYPE_UINT32),
        "criu_work_path": (12, T.TYPE_STRING),
        "criu_image_path": (13, T.TYPE_STRING),
    }
    assert fields(runctypes.CheckpointOptions.DESCRIPTOR) == {
        "exit": (1, T.TYPE_BOOL),
        **criu_flags,
        "work_path": (8, T.TYPE_STRING),
        "image_path": (9, T.TYPE_STRING),
    }
    assert fields(runctypes.RuncOptions.DESCRIPTOR) == {
        "runtime": (1, T.TYPE_STRING),
        "runtime_root": (2, T.TYPE_STRING),
        "criu_path": (3, T.TYPE_STRING),
        "systemd_cgroup": (4, T.TYPE_BOOL),
    }
    assert fields(runctypes.ProcessDetails.DESCRIPTOR) == {"exec_id": (1, T.TYPE_STRING)}


def test_bootstrap_fields_and_enums() -> None:
    assert fields(bootstrap_pb2.BootstrapParams.DESCRIPTOR) == {
        "instance_id": (1, T.TYPE_STRING),
        "namespace": (2, T.TYPE_STRING),
        "log_level": (3, T.TYPE_ENUM),
        "containerd_version": (4, T.TYPE_STRING),
        "containerd_ttrpc_address": (5, T.TYPE_STRING),
        "containerd_grpc_address": (6, T.TYPE_STRING),
        "containerd_binary": (7, T.TYPE_STRING),
        "extensions": (8, T.TYPE_MESSAGE),
        "socket_dir": (9, T.TYPE_STRING),
    }
    assert bootstrap_pb2.BootstrapParams.DESCRIPTOR.fields_by_name["socket_dir"].has_presence
    assert {v.name: v.number for v in bootstrap_pb2.LogLevel.DESCRIPTOR.values} == {
        "LOG_LEVEL_INFO": 0, "LOG_LEVEL_TRACE": -8, "LOG_LEVEL_DEBUG": -4, "LOG_LEVEL_WARN": 4,
        "LOG_LEVEL_ERROR": 8, "LOG_LEVEL_FATAL": 10, "LOG_LEVEL_PANIC": 12,
    }  # fmt: skip
    assert bootstrap_pb2.Capability.Value("CAPABILITY_UNSPECIFIED") == 0
    assert fields(bootstrap_pb2.BootstrapResult.DESCRIPTOR) == {
        "version": (1, T.TYPE_INT32),
        "address": (2, T.TYPE_STRING),
        "protocol": (3, T.TYPE_STRING),
        "capabilities": (4, T.TYPE_ENUM),
        "metadata": (5, T.TYPE_MESSAGE),
    }
    assert fields(bootstrap_pb2.Extension.DESCRIPTOR) == {"value": (1, T.TYPE_MESSAGE)}


def test_event_fields() -> None:
    assert fields(events.TaskExit.DESCRIPTOR) == {
        "container_id": (1, T.TYPE_STRING),
        "id": (2, T.TYPE_STRING),
        "pid": (3, T.TYPE_UINT32),
        "exit_status": (4, T.TYPE_UINT32),
        "exited_at": (5, T.TYPE_MESSAGE),
    }
    assert fields(events.TaskDelete.DESCRIPTOR)["id"] == (5, T.TYPE_STRING)
    assert fields(events.TaskCreate.DESCRIPTOR)["pid"] == (6, T.TYPE_UINT32)
    assert fields(events_pb2.Envelope.DESCRIPTOR) == {
        "timestamp": (1, T.TYPE_MESSAGE),
        "namespace": (2, T.TYPE_STRING),
        "topic": (3, T.TYPE_STRING),
        "event": (4, T.TYPE_MESSAGE),
    }
    assert introspection_pb2.RuntimeInfo.DESCRIPTOR.fields_by_name["annotations"].number == 5


def test_cgroup_metrics_fields() -> None:
    top2 = fields(cg2.Metrics.DESCRIPTOR)
    assert {k: n for k, (n, _) in top2.items()} == {
        "pids": 1, "cpu": 2, "memory": 4, "rdma": 5, "io": 6, "hugetlb": 7,
        "memory_events": 8, "network": 9,
    }  # fmt: skip
    mem2 = fields(cg2.MemoryStat.DESCRIPTOR)
    assert sorted(n for n, _ in mem2.values()) == list(range(1, 43))
    assert mem2["usage"] == (32, T.TYPE_UINT64)
    assert mem2["swap_limit"] == (35, T.TYPE_UINT64)
    assert fields(cg2.MemoryEvents.DESCRIPTOR)["oom_kill"] == (5, T.TYPE_UINT64)
    assert fields(cg2.IOEntry.DESCRIPTOR)["wios"] == (6, T.TYPE_UINT64)
    assert fields(cg2.CPUStat.DESCRIPTOR)["throttled_usec"] == (6, T.TYPE_UINT64)
    top1 = fields(cg1.Metrics.DESCRIPTOR)
    assert {k: n for k, (n, _) in top1.items()} == {
        "hugetlb": 1, "pids": 2, "cpu": 3, "memory": 4, "blkio": 5, "rdma": 6, "network": 7,
        "cgroup_stats": 8, "memory_oom_control": 9,
    }  # fmt: skip
    mem1 = fields(cg1.MemoryStat.DESCRIPTOR)
    assert sorted(n for n, _ in mem1.values()) == list(range(1, 37))
    assert mem1["kernel_tcp"] == (36, T.TYPE_MESSAGE)
    assert fields(cg1.BlkIOEntry.DESCRIPTOR)["value"] == (5, T.TYPE_UINT64)
    assert fields(cg1.CPUUsage.DESCRIPTOR)["per_cpu"] == (4, T.TYPE_UINT64)
