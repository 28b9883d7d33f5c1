"""Encodings checked byte for byte against what containerd's Go code puts on the wire."""

from __future__ import annotations

from google.protobuf import any_pb2, timestamp_pb2

from trioshim.api.containerd.events import task_pb2 as events
from trioshim.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as v2
from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as v3
from trioshim.api.containerd.services.ttrpc.events.v1 import events_pb2
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.api.ttrpc import request_pb2


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# DeleteResponse as Go's shim encodes it: pid 1234, exit 137, exited at 1700000000.123456789 s.
DELETE_RESPONSE = h("08 d2 09 10 89 01 1a 0b 08 80 e2 cf aa 06 10 95 9a ef 3a")
# KillRequest{id: "c1", signal: 9} as Go's client encodes it.
KILL_REQUEST = h("0a 02 63 31 18 09")


def test_delete_response_matches_go_bytes() -> None:
    for mod in (v2, v3):
        msg = mod.DeleteResponse(
            pid=1234,
            exit_status=137,
            exited_at=timestamp_pb2.Timestamp(seconds=1700000000, nanos=123456789),
        )
        assert msg.SerializeToString() == DELETE_RESPONSE
        back = mod.DeleteResponse.FromString(DELETE_RESPONSE)
        assert (back.pid, back.exit_status) == (1234, 137)
        assert (back.exited_at.seconds, back.exited_at.nanos) == (1700000000, 123456789)


def test_kill_request_matches_go_bytes() -> None:
    for mod in (v2, v3):
        assert mod.KillRequest(id="c1", signal=9).SerializeToString() == KILL_REQUEST
        back = mod.KillRequest.FromString(KILL_REQUEST)
        assert (back.id, back.exec_id, back.signal, back.all) == ("c1", "", 9, False)


def test_ttrpc_request_envelope_matches_go_bytes() -> None:
    # The 84-byte payload of Go's request frame for that Kill (after the 10-byte header).
    expected = (
        h("0a 17") + b"containerd.task.v2.Task" + h("12 04") + b"Kill"
        + h("1a 06") + KILL_REQUEST + h("20 80 c8 af a0 25")
        + h("2a 25 0a 1a") + b"containerd-namespace-ttrpc" + h("12 07") + b"default"
    )  # fmt: skip
    assert len(expected) == 0x54
    req = request_pb2.Request(
        service=v2.DESCRIPTOR.services_by_name["Task"].full_name,
        method="Kill",
        payload=v2.KillRequest(id="c1", signal=9).SerializeToString(),
        timeout_nano=10_000_000_000,
        metadata=[request_pb2.KeyValue(key="containerd-namespace-ttrpc", value="default")],
    )
    assert req.SerializeToString() == expected


def test_ttrpc_error_response_matches_go_bytes() -> None:
    text = b"process already finished: not found"
    expected = h("0a 27 08 05 12 23") + text
    resp = request_pb2.Response()
    resp.status.code = 5
    resp.status.message = text.decode()
    assert resp.SerializeToString() == expected
    # A Go success reply to an Empty-returning call is a zero-length payload.
    assert request_pb2.Response().SerializeToString() == b""


def test_go_zero_time_encoding() -> None:
    # Go's zero time.Time (year 1, what an unset exited_at carries): seconds -62135596800, nanos 0.
    zero = timestamp_pb2.Timestamp(seconds=-62135596800)
    assert zero.SerializeToString() == h("08 80 92 b8 c3 98 fe ff ff ff 01")


def test_negative_log_level_is_a_ten_byte_varint() -> None:
    params = bootstrap_pb2.BootstrapParams(log_level=bootstrap_pb2.LOG_LEVEL_TRACE)
    assert params.SerializeToString() == h("18 f8 ff ff ff ff ff ff ff ff 01")
    assert not params.HasField("socket_dir")
    params.socket_dir = ""
    assert params.HasField("socket_dir")  # proto3 optional: presence is tracked


def test_event_roundtrip_through_envelope_with_bare_type_url() -> None:
    exit_event = events.TaskExit(container_id="c1", id="c1", pid=42, exit_status=137)
    exit_event.exited_at.FromSeconds(1700000000)
    payload = any_pb2.Any(
        type_url=exit_event.DESCRIPTOR.full_name, value=exit_event.SerializeToString()
    )
    assert payload.type_url == "containerd.events.TaskExit"
    req = events_pb2.ForwardRequest(
        envelope=events_pb2.Envelope(namespace="default", topic="/tasks/exit", event=payload)
    )
    req.envelope.timestamp.FromSeconds(1700000001)
    back = events_pb2.ForwardRequest.FromString(req.SerializeToString())
    decoded = events.TaskExit.FromString(back.envelope.event.value)
    assert decoded == exit_event
    assert back.envelope.topic == "/tasks/exit"


def test_runc_options_roundtrip_with_2x_fields() -> None:
    opts = oci_pb2.Options(
        binary_name="runc",
        root="/run/containerd/runc",
        systemd_cgroup=True,
        task_api_address="ttrpc+unix:///run/x.sock",
        task_api_version=3,
    )
    wire = opts.SerializeToString()
    assert h("48 01") in wire  # systemd_cgroup = field 9, varint
    assert h("68 03") in wire  # task_api_version = field 13, varint
    assert oci_pb2.Options.FromString(wire) == opts
