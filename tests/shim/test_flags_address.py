from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import stat
import tempfile
from collections.abc import Iterator

import pytest

from trioshim.shim.address import (
    SOCKET_PATH_LIMIT,
    AddressError,
    can_connect,
    go_clean,
    go_join,
    new_socket,
    read_address,
    remove_socket,
    socket_address,
    socket_path,
    write_address,
)
from trioshim.shim.flags import (
    FlagError,
    Flags,
    parse_flags,
    validate_bundle_flag,
    validate_identifier,
)
from trioshim.ttrpc import listen_backlog


def test_containerd_start_invocation() -> None:
    argv = "-namespace default -address /run/containerd/containerd.sock"
    argv += " -publish-binary /usr/bin/containerd -id c1 -debug start"
    flags = parse_flags(argv.split())
    assert flags == Flags(
        namespace="default",
        id="c1",
        address="/run/containerd/containerd.sock",
        publish_binary="/usr/bin/containerd",
        debug=True,
        action="start",
    )
    assert flags.daemon_argv() == [
        "-namespace",
        "default",
        "-id",
        "c1",
        "-address",
        "/run/containerd/containerd.sock",
        "-debug",
    ]


def test_go_flag_rules() -> None:
    f = parse_flags(["--namespace=ns", "-id", "-x-", "-debug=false", "-bundle", "/b", "delete"])
    assert (f.namespace, f.id, f.debug, f.bundle, f.action) == ("ns", "-x-", False, "/b", "delete")
    # Parsing stops at the first non-flag and at "--"; what follows is the action and args.
    f = parse_flags(["-id", "a", "start", "-debug"])
    assert (f.action, f.args, f.debug) == ("start", ("-debug",), False)
    assert parse_flags(["--", "-debug"]).action == "-debug"
    assert parse_flags(["-info"]).info and parse_flags(["-v"]).version
    assert parse_flags(["-version"]).version and parse_flags(["-h"]).help
    assert parse_flags([]).action == "" and parse_flags([]).publish_binary == "containerd"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-nope"], "flag provided but not defined: -nope"),
        (["-id"], "flag needs an argument: -id"),
        (["-debug=maybe"], 'invalid boolean value "maybe" for -debug'),
        (["---id", "x"], "bad flag syntax"),
    ],
)
def test_flag_errors(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message) as info:
        parse_flags(argv)
    assert info.value.usage


@pytest.mark.parametrize("bad", ["", "a/b", "..", "../x", "a..b", "-a", "a" * 77, "a b"])
def test_identifier_validation(bad: str) -> None:
    with pytest.raises(FlagError, match="namespace"):
        validate_identifier("namespace", bad)


def test_identifier_ok_and_empty_message() -> None:
    validate_identifier("id", "k8s.io_pod-1")
    with pytest.raises(FlagError, match=r"^shim namespace must not be empty$"):
        validate_identifier("namespace", "")


@pytest.mark.parametrize("bundle", ["../../x", "/state/ns/../../x", "/state/ns/other", "/a//c1"])
def test_bundle_flag_validation(bundle: str) -> None:
    with pytest.raises(FlagError, match=r"^shim bundle"):
        validate_bundle_flag(Flags(id="c1", bundle=bundle))
    validate_bundle_flag(Flags(id="c1", bundle="/state/ns/c1"))
    validate_bundle_flag(Flags(id="c1"))  # no -bundle: the working directory is the bundle


def test_go_path_semantics() -> None:
    assert go_clean("/a//b/./c/../d/") == "/a/b/d"
    assert go_clean("") == "." and go_clean("../../x") == "../../x" and go_clean("/..") == "/"
    assert go_join("/run/containerd/containerd.sock", "default", "test") == (
        "/run/containerd/containerd.sock/default/test"
    )
    assert go_join("", "a", "", "b/") == "a/b" and go_join("", "") == ""


def test_socket_address_matches_containerd() -> None:
    address = socket_address("/run/containerd/containerd.sock", "default", "test")
    assert address == (
        "unix:///run/containerd/s/cfa94b04d543b3f64f78eff8125c7a7cd0903173f673d87367be72ff09fc92c2"
    )
    # Cleaning makes equivalent spellings hash alike; the socket dir is configurable.
    assert socket_address("/run/containerd//containerd.sock/", "default", "test") == address
    assert socket_address("/x.sock", "ns", "k", socket_dir="/tmp/s/").startswith("unix:///tmp/s/")
    assert socket_path(address) == address[len("unix://") :]
    with pytest.raises(AddressError, match="abstract"):
        socket_path("/run/x")


def test_new_socket_modes_limit_and_removal() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        address = socket_address("/c.sock", "ns", "id", socket_dir=f"{tmp}/s")
        sock = new_socket(address)
        try:
            path = socket_path(address)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(f"{tmp}/s").st_mode) == 0o700
            assert can_connect(address)
            with pytest.raises(OSError, match="in use"):
                new_socket(address)
        finally:
            sock.close()
        assert not can_connect(address)  # stale: file exists, nobody listens
        assert remove_socket(address) and not remove_socket(address)
        assert not os.path.exists(path)
        long = "unix://" + tmp + "/" + "x" * (SOCKET_PATH_LIMIT - len(tmp))
        with pytest.raises(AddressError, match=r"too long \(> 106\)"):
            new_socket(long)
        assert not os.path.exists(socket_path(long))


BURST = 2000  # what containerd may open at once when it starts or recovers that many tasks


@contextlib.contextmanager
def _open_files_for(count: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"RLIMIT_NOFILE hard {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _refused_of_burst(path: str, count: int) -> int:
    """Open ``count`` non-blocking connections at once (nobody accepts): how many the
    listener's queue refused (``EAGAIN``, what a small backlog gives a unix socket)."""
    refused = 0
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            client.setblocking(False)
            err = client.connect_ex(path)
            if err == errno.EAGAIN:
                refused += 1
            else:
                assert err == 0, os.strerror(err)
    return refused


def test_listen_backlog_is_the_systems_maximum() -> None:
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    assert listen_backlog() == somaxconn
    assert somaxconn >= BURST, f"net.core.somaxconn={somaxconn}: too small for this test"
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp, _open_files_for(BURST):
        path = f"{tmp}/s/burst"
        with new_socket(path):
            assert _refused_of_burst(path, BURST) == 0
        # The measure itself: a backlog of 128 refuses most of the same burst.
        with new_socket(f"{tmp}/s/small", backlog=128):
            assert _refused_of_burst(f"{tmp}/s/small", BURST) > BURST // 2


def test_address_file_atomic_no_newline(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "address")
    open(os.path.join(tmp_path, ".address"), "w").close()  # left by a crashed writer
    write_address(path, "unix:///run/containerd/s/abc")
    with open(path, "rb") as f:
        assert f.read() == b"unix:///run/containerd/s/abc"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o600 == 0o600
    assert not os.path.exists(os.path.join(tmp_path, ".address"))
    assert read_address(path) == "unix:///run/containerd/s/abc"
    open(path, "w").close()
    with pytest.raises(AddressError, match="no shim address"):
        read_address(path)


def test_can_connect_false_for_missing() -> None:
    assert not can_connect("unix:///nonexistent/sock")
    assert not remove_socket("unix:///nonexistent/sock")
    with socket.socket(socket.AF_UNIX) as s, tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        s.bind(f"{tmp}/l")
        s.listen()
        assert can_connect(f"unix://{tmp}/l") and can_connect(f"{tmp}/l")
