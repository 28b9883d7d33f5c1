"""Registering a service checks the implementation's handler names against the service."""

from __future__ import annotations

import pytest

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.ttrpc import Server

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]


class Misspelled:
    async def Creat(self, ctx: object, req: object) -> None: ...


class Fine:
    NAME = "a constant, not a handler"

    async def Create(self, ctx: object, req: object) -> None: ...

    async def helper(self) -> None: ...  # lower case: not a handler

    def Describe(self) -> str:  # not async: not a handler
        return "fine"


def test_a_handler_named_like_no_rpc_is_refused_with_a_suggestion() -> None:
    with pytest.raises(
        TypeError, match=r"Misspelled.Creat is not an rpc of .*Task \(did you mean Create\?\)"
    ):
        Server().register(TASK, Misspelled())


def test_rpc_handlers_helpers_and_constants_are_accepted() -> None:
    server = Server()
    server.register(TASK, Fine())
    assert server.services == [TASK.full_name]
