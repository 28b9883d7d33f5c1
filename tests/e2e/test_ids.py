"""Ids and bundles containerd would never send, straight to the socket of a shim it launched.

containerd validates ids before they reach a shim, but anything that can reach the shim's
socket can send a Create whose bundle lies outside containerd's bundle directory, or an exec
id such as ``../../../../x``. containerd-shim-runc-v2 accepts both (it writes ``init.pid``,
``log.json`` and ``options.json`` into such a bundle); ours must answer InvalidArgument and
write nothing. The reference's answers are only recorded, so its cleanup is done here.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from trioshim.ttrpc.errors import Code, TTRPCError

from .helpers import E2E, TRIOSHIM

PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
BAD_EXEC_ID = "../../../../x"


def _answer(e2e: E2E, cid: str, method: str, request: object) -> TTRPCError | None:
    try:
        e2e.call_shim(cid, method, request)
    except TTRPCError as exc:
        return exc
    return None


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _outside_dir(e2e: E2E, cid: str, name: str) -> Path:
    """An existing directory next to containerd's namespace directories (not a bundle)."""
    outside = e2e.containerd.bundle(cid).parent.parent / name
    outside.mkdir()
    return outside


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_create_with_a_bundle_outside_containerds(e2e: E2E, form: str) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    target = e2e.new_id("outside")
    outside = _outside_dir(e2e, cid, target)
    try:
        # The shim's working directory is the bundle of `cid`: "../../<target>" is `outside`.
        bundle = f"../../{target}" if form == "relative" else str(outside)
        error = _answer(
            e2e, cid, "Create", e2e.task_api.CreateTaskRequest(id=target, bundle=bundle)
        )
        written = _tree(outside)
        if e2e.runtime == TRIOSHIM:
            assert error is not None and error.code == Code.INVALID_ARGUMENT, error
            assert f"bundle {bundle!r}" in error.message
            assert written == []
        elif written:
            warnings.warn(
                f"the reference shim wrote {written} into the bundle {bundle!r} "
                f"(answer: {error!r})",
                stacklevel=1,
            )
    finally:
        shutil.rmtree(outside)
    if e2e.runtime == TRIOSHIM:  # the refusal left the shim and its container unharmed
        r = e2e.exec(cid, "/bin/echo", "still here", exec_id="after-refusal")
        assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    assert e2e.kill_and_delete(cid) == 137


def test_exec_with_a_path_as_its_id(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    spec = {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}
    request = e2e.task_api.ExecProcessRequest(
        id=cid,
        exec_id=BAD_EXEC_ID,
        spec=any_pb2.Any(type_url=PROCESS_URL, value=json.dumps(spec).encode()),
    )
    error = _answer(e2e, cid, "Exec", request)
    if e2e.runtime == TRIOSHIM:
        assert error is not None and error.code == Code.INVALID_ARGUMENT, error
        assert error.message.startswith(f"exec id {BAD_EXEC_ID!r} must match")
        for method in ("Start", "State", "Kill", "Wait", "Delete"):
            request = getattr(e2e.task_api, f"{method}Request")(id=cid, exec_id=BAD_EXEC_ID)
            error = _answer(e2e, cid, method, request)
            assert error is not None and error.code == Code.INVALID_ARGUMENT, (method, error)
    elif error is None:
        warnings.warn(f"the reference shim accepted the exec id {BAD_EXEC_ID!r}", stacklevel=1)
        _answer(e2e, cid, "Delete", e2e.task_api.DeleteRequest(id=cid, exec_id=BAD_EXEC_ID))
    assert e2e.kill_and_delete(cid) == 137
