"""containerd's own gRPC API, for what `ctr` cannot do: a task created with runtime options of
the test's choosing, as containerd's Go client sends them (`NewTask(ctx, ..., WithShimCgroup(p))`
becomes `Tasks.Create` with `options` = the runtime's options type, e.g.
`containerd.linux.runc.CreateOptions` for a runtime not named io.containerd.runc*).

The modules come from tests/support/containerd_tasks.proto (a subset of containerd's tasks
service), generated at test time (tests.support.grpc_modules) as `containerd_tasks_v1`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from tests.support.grpc_modules import generated_modules

PROTO = Path(__file__).with_name("containerd_tasks.proto")
NAMESPACE_HEADER = "containerd-namespace"  # how containerd's client names the namespace


def tasks_modules() -> tuple[ModuleType, ModuleType]:
    return generated_modules("containerd_tasks_v1", PROTO.read_bytes())


def go_any(message: Message) -> any_pb2.Any:
    """`typeurl.MarshalAny` of containerd's Go client: the bare message name as type URL."""
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


class TasksClient:
    """`containerd.services.tasks.v1.Tasks` of one containerd, in one namespace."""

    def __init__(self, address: str, namespace: str) -> None:
        import grpc

        self.pb, pb_grpc = tasks_modules()
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.stub = pb_grpc.TasksStub(self.channel)
        self.metadata = ((NAMESPACE_HEADER, namespace),)

    def __enter__(self) -> TasksClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def create(self, container_id: str, options: Message | None = None, *, stdout: str = "") -> Any:
        """A task with `stdout` (and stderr) going to that URI, else null stdio (as
        `ctr run --null-io`); the CreateTaskResponse."""
        request = self.pb.CreateTaskRequest(container_id=container_id, stdout=stdout, stderr=stdout)
        if options is not None:
            request.options.CopyFrom(go_any(options))
        return self.stub.Create(request, metadata=self.metadata, timeout=60)

    def start(self, container_id: str) -> Any:
        request = self.pb.StartRequest(container_id=container_id)
        return self.stub.Start(request, metadata=self.metadata, timeout=60)

    def delete(self, container_id: str) -> Any:
        request = self.pb.DeleteTaskRequest(container_id=container_id)
        return self.stub.Delete(request, metadata=self.metadata, timeout=60)
