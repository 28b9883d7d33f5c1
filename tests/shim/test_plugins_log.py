from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import pytest
import trio

from trioshim.shim.log import (
    FdHandler,
    LogrusFormatter,
    go_quote,
    open_log_fifo,
    rfc3339_nano,
    setup_logger,
)
from trioshim.shim.plugin import (
    ALL_TYPES,
    PLUGIN_CONFIG_FILE,
    InitContext,
    PluginError,
    PluginNotFound,
    Registration,
    Registry,
    SkipPlugin,
    init_plugins,
)
from trioshim.shim.shutdown import ShutdownService


def reg(kind: str, id: str, *requires: str, log: list[str] | None = None) -> Registration:
    async def init(ctx: InitContext) -> object:
        if log is not None:
            log.append(ctx.registration.uri)
        return f"{kind}.{id}"

    return Registration(type=kind, id=id, init=init, requires=requires)


def test_graph_orders_by_requirements_stably() -> None:
    registry = Registry(
        [
            reg("ttrpc", "task", "events", "internal"),
            reg("debug", "pprof", ALL_TYPES),
            reg("internal", "shutdown"),
            reg("events", "publisher", "internal"),
            reg("ttrpc", "extra"),
        ]
    )
    order = [r.uri for r in registry.graph()]
    assert order == [
        "internal.shutdown",
        "events.publisher",
        "ttrpc.task",
        "ttrpc.extra",
        "debug.pprof",
    ]


def test_graph_cycle_missing_and_duplicate() -> None:
    with pytest.raises(PluginError, match=r"cycle: a\.1 -> b\.1 -> a\.1"):
        Registry([reg("a", "1", "b"), reg("b", "1", "a")]).graph()
    with pytest.raises(PluginError, match=r"'a\.1' requires plugin type 'nope'"):
        Registry([reg("a", "1", "nope")]).graph()
    with pytest.raises(PluginError, match="registered twice"):
        Registry([reg("a", "1"), reg("a", "1")])


async def test_init_skip_config_get_and_failure(tmp_path: Any) -> None:
    seen: dict[str, Any] = {}

    async def skipped(ctx: InitContext) -> object:
        raise SkipPlugin("not on this kernel")

    async def user(ctx: InitContext) -> object:
        seen["config"] = dict(ctx.config)
        seen["base"] = ctx.get("base")
        seen["state_dir"] = ctx.state_dir
        with pytest.raises(PluginNotFound):
            ctx.get("optional")
        return "user"

    registry = Registry(
        [
            reg("base", "b"),
            Registration("optional", "o", skipped),
            Registration("svc", "u", user, requires=("base", "optional"), config={"a": 1, "b": 2}),
        ]
    )
    (tmp_path / PLUGIN_CONFIG_FILE).write_text(json.dumps({"svc.u": {"b": 3, "c": [4]}}))
    records: list[str] = []
    log = logging.getLogger("test.plugins")
    log.addHandler(_ListHandler(records))
    log.setLevel(logging.INFO)
    async with trio.open_nursery() as nursery:
        loaded = await init_plugins(
            registry,
            namespace="ns",
            id="c1",
            address="/a",
            ttrpc_address="/a.ttrpc",
            bundle=str(tmp_path),
            debug=False,
            nursery=nursery,
            log=log,
        )
    assert seen == {
        "config": {"a": 1, "b": 3, "c": [4]},
        "base": "base.b",
        "state_dir": os.path.join(tmp_path, "svc.u"),
    }
    assert [r.uri for r, _ in loaded.instances] == ["base.b", "svc.u"]
    assert [(r.uri, why) for r, why in loaded.skipped] == [("optional.o", "not on this kernel")]
    assert any('skip loading plugin "optional.o"' in r for r in records)

    async def broken(ctx: InitContext) -> object:
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        with pytest.raises(PluginError, match=r"failed to load plugin x\.y: boom"):
            await init_plugins(
                Registry([Registration("x", "y", broken)]),
                namespace="ns",
                id="c1",
                address="",
                ttrpc_address="",
                bundle=str(tmp_path),
                debug=False,
                nursery=nursery,
                log=log,
                config={},
            )

    (tmp_path / PLUGIN_CONFIG_FILE).write_text("[1, 2")
    async with trio.open_nursery() as nursery:
        with pytest.raises(PluginError, match="cannot read plugin configuration"):
            await init_plugins(
                registry,
                namespace="ns",
                id="c1",
                address="",
                ttrpc_address="",
                bundle=str(tmp_path),
                debug=False,
                nursery=nursery,
                log=log,
            )


class _ListHandler(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(record.getMessage())


async def test_shutdown_service_callbacks_in_order_errors_recorded() -> None:
    service = ShutdownService()
    calls: list[str] = []

    async def ok(name: str) -> None:
        calls.append(name)

    async def bad() -> None:
        calls.append("bad")
        raise ValueError("nope")

    service.register_callback(lambda: ok("first"))
    service.register_callback(bad)
    service.register_callback(lambda: ok("last"))
    assert not service.is_shutdown
    service.shutdown("test")
    service.shutdown("second call ignored")
    assert service.is_shutdown and service.reason == "test"
    await service.wait()
    await service.run_callbacks()
    await service.run_callbacks()
    assert calls == ["first", "bad", "last"]
    assert [str(e) for e in service.errors] == ["nope"] and service.done


LOGRUS = re.compile(
    r'^time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d)" level=(\w+) msg=(.*)$'
)


def test_logrus_format() -> None:
    fmt = LogrusFormatter({"runtime": "io.containerd.trioshim.v2"})
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, 'say "hi"\n', None, None)
    record.fields = {"pid": 12, "path": "/run/a b"}
    line = fmt.format(record)
    m = LOGRUS.match(line)
    assert m is not None and m.group(2) == "warning"
    assert m.group(3) == (
        r'"say \"hi\"\n" path="/run/a b" pid=12 runtime=io.containerd.trioshim.v2'
    )
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "done", None, None)
    assert fmt.format(record).endswith("level=info msg=done runtime=io.containerd.trioshim.v2")
    assert go_quote("a\tb\x01é") == '"a\\tb\\x01é"'
    assert rfc3339_nano(1_700_000_000_123_456_789).split(".")[1][:9] == "123456789"


def test_log_fifo_epipe_tolerated_and_reusable(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "log")
    assert open_log_fifo(path, stderr=False) is None  # missing: fall back
    os.mkfifo(path, 0o700)
    assert open_log_fifo(path, stderr=False) is None  # no reader: fall back, never block
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    fd = open_log_fifo(path, stderr=False)
    assert fd is not None
    log = setup_logger(fd, debug=True, name="test.fifo")
    log.debug("one")
    assert b"level=debug msg=one" in os.read(reader, 4096)
    os.close(reader)  # containerd goes away: EPIPE, swallowed
    log.info("lost")
    handler = log.handlers[0]
    assert isinstance(handler, FdHandler) and handler.dropped == 1
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # containerd is back: same fd works
    log.info("two")
    assert b"msg=two" in os.read(reader, 4096)
    os.close(reader)
    os.close(fd)
    log.info("closed fd")
    assert handler.dropped == 2
