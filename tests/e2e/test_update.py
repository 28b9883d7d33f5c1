"""Update (no ctr has `task update`): called on the shim's own socket with our ttrpc client."""

from __future__ import annotations

import json

from google.protobuf import any_pb2

from trioshim.ttrpc.errors import TTRPCError

from .helpers import E2E

# What containerd's typeurl puts in UpdateTaskRequest.resources for specs.LinuxResources.
LINUX_RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


def _memory_limit(e2e: E2E, cid: str) -> int:
    r = e2e.ctr("task", "metrics", "--format", "json", cid)
    assert r.returncode == 0, r.stderr
    memory = json.loads(r.stdout)["memory"]
    if "usage" in memory and isinstance(memory["usage"], dict):  # cgroup v1
        return int(memory["usage"]["limit"])
    return int(memory["usage_limit"])  # cgroup v2


def _resources(limit: int) -> any_pb2.Any:
    return any_pb2.Any(
        type_url=LINUX_RESOURCES_URL,
        value=json.dumps({"memory": {"limit": limit}}).encode(),
    )


def test_update_memory_limit(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000", opts=("--memory-limit", str(256 << 20)))
    assert _memory_limit(e2e, cid) == 256 << 20

    e2e.call_shim(
        cid, "Update", e2e.task_api.UpdateTaskRequest(id=cid, resources=_resources(64 << 20))
    )
    assert _memory_limit(e2e, cid) == 64 << 20

    # The container keeps running under the new limit and still answers.
    r = e2e.exec(cid, "/bin/echo", "alive", exec_id="after-update")
    assert (r.returncode, r.stdout) == (0, "alive\n"), r.stderr
    assert e2e.kill_and_delete(cid) == 137


def test_update_unknown_container(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    try:
        e2e.call_shim(
            cid,
            "Update",
            e2e.task_api.UpdateTaskRequest(id="nosuch", resources=_resources(1 << 26)),
        )
    except TTRPCError as e:
        assert e.code == 5, e  # NotFound
    else:
        raise AssertionError("Update of an unknown container succeeded")
    assert e2e.kill_and_delete(cid) == 137
