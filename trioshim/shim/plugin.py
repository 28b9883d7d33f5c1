"""Shim plugins: registrations with declared requirements, initialised in dependency order.

A feature of a shim (its task service, a debug service, the event publisher, ...) is a
:class:`Registration`: a ``type``, an ``id``, the plugin types it ``requires``, and an async
``init(ctx)`` returning the instance. :meth:`Registry.graph` orders registrations so that every
plugin comes after all registrations of every type it requires (registration order otherwise);
a cycle or a required type nobody registers is a :class:`PluginError` at start-up. An ``init``
raising :class:`SkipPlugin` is logged and left out; any other exception stops the daemon.

Instances that provide ``ttrpc_services() -> Iterable[(ServiceDescriptor, implementation)]``
are served by the daemon's ttrpc server (any plugin type may; ``TTRPC_PLUGIN`` is the usual).

Per-plugin configuration (the Go library leaves this as a TODO): ``ctx.config`` is the
registration's ``config`` defaults overlaid (shallow) by the entry for the plugin in
``<bundle>/trioshim-plugins.json``, a JSON object keyed by plugin URI ``"<type>.<id>"``, e.g.
``{"io.containerd.ttrpc.v1.task": {"verbose": true}}``. A missing file means no overrides; an
unreadable or malformed one is an error at start-up.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol, runtime_checkable

import trio
from google.protobuf.descriptor import ServiceDescriptor

__all__ = [
    "ALL_TYPES",
    "EVENT_PLUGIN",
    "INTERNAL_PLUGIN",
    "PLUGIN_CONFIG_FILE",
    "REAPER_PLUGIN",
    "TTRPC_PLUGIN",
    "InitContext",
    "PluginError",
    "PluginNotFound",
    "Registration",
    "Registry",
    "SkipPlugin",
    "TTRPCServiceProvider",
    "default_registry",
    "load_plugin_config",
    "register",
]

TTRPC_PLUGIN: Final = "io.containerd.ttrpc.v1"
EVENT_PLUGIN: Final = "io.containerd.event.v1"
INTERNAL_PLUGIN: Final = "io.containerd.internal.v1"
REAPER_PLUGIN: Final = "io.trioshim.reaper.v1"
ALL_TYPES: Final = "*"
"""In ``requires``: come after every other registration (Go's ``"*"``)."""
PLUGIN_CONFIG_FILE: Final = "trioshim-plugins.json"


class PluginError(Exception):
    """A registry that cannot be started: duplicate, cycle, missing requirement, bad config,
    or a plugin whose init failed."""


class PluginNotFound(LookupError):
    """``InitContext.get`` for a type with no initialised instance (skipped or not required)."""


class SkipPlugin(Exception):
    """Raised by ``init`` to leave the plugin out (logged at info level, not an error)."""


@runtime_checkable
class TTRPCServiceProvider(Protocol):
    def ttrpc_services(self) -> Iterable[tuple[ServiceDescriptor, object]]: ...


InitFn = Callable[["InitContext"], Awaitable[object]]


@dataclass(frozen=True)
class Registration:
    type: str
    id: str
    init: InitFn
    requires: Sequence[str] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    """Default configuration, overlaid by the plugin config file."""

    @property
    def uri(self) -> str:
        return f"{self.type}.{self.id}"


class Registry:
    """An ordered set of registrations. Build one per shim; :data:`default_registry` exists
    for convenience (nothing registers into it at import time)."""

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self._registrations: list[Registration] = []
        for reg in registrations:
            self.register(reg)

    def register(self, registration: Registration) -> Registration:
        if not registration.type or not registration.id:
            raise PluginError("a plugin registration needs a type and an id")
        if any(r.uri == registration.uri for r in self._registrations):
            raise PluginError(f"plugin {registration.uri!r} is registered twice")
        self._registrations.append(registration)
        return registration

    def copy(self) -> Registry:
        return Registry(self._registrations)

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._registrations))

    def __len__(self) -> int:
        return len(self._registrations)

    @property
    def registrations(self) -> tuple[Registration, ...]:
        return tuple(self._registrations)

    def graph(self) -> list[Registration]:
        """Registrations in initialisation order; :class:`PluginError` on a cycle or missing
        requirement."""
        regs = self._registrations
        by_type: dict[str, list[Registration]] = {}
        for reg in regs:
            by_type.setdefault(reg.type, []).append(reg)

        def deps(reg: Registration) -> list[Registration]:
            out: list[Registration] = []
            for required in reg.requires:
                if required == ALL_TYPES:
                    out.extend(r for r in regs if r is not reg and ALL_TYPES not in r.requires)
                    continue
                found = by_type.get(required)
                if not found:
                    raise PluginError(
                        f"plugin {reg.uri!r} requires plugin type {required!r}, "
                        "which no registration provides"
                    )
                out.extend(r for r in found if r is not reg)
            return out

        order: list[Registration] = []
        done: set[str] = set()
        visiting: list[str] = []

        def visit(reg: Registration) -> None:
            if reg.uri in done:
                return
            if reg.uri in visiting:
                cycle = [*visiting[visiting.index(reg.uri) :], reg.uri]
                raise PluginError("plugin dependency cycle: " + " -> ".join(cycle))
            visiting.append(reg.uri)
            for dep in deps(reg):
                visit(dep)
            visiting.pop()
            done.add(reg.uri)
            order.append(reg)

        for reg in regs:
            visit(reg)
        return order


default_registry = Registry()


def register(registration: Registration) -> Registration:
    """Add ``registration`` to :data:`default_registry`."""
    return default_registry.register(registration)


def load_plugin_config(bundle: str) -> dict[str, dict[str, Any]]:
    """Read ``<bundle>/trioshim-plugins.json`` (``{}`` when absent)."""
    path = os.path.join(bundle, PLUGIN_CONFIG_FILE)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PluginError(f"{path}: cannot read plugin configuration: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise PluginError(f"{path}: must be a JSON object of objects keyed by plugin URI")
    return data


@dataclass
class InitContext:
    """What a plugin's ``init`` gets."""

    registration: Registration
    namespace: str
    id: str
    address: str
    """containerd's gRPC address (``-address``)."""
    ttrpc_address: str
    """containerd's ttrpc address (``$TTRPC_ADDRESS``)."""
    bundle: str
    state_dir: str
    """``<bundle>/<type>.<id>``: not created for the plugin; it goes away with the bundle."""
    config: Mapping[str, Any]
    debug: bool
    nursery: trio.Nursery
    """Owned by the root nursery; tasks started here are cancelled at shutdown."""
    log: logging.Logger
    _instances: list[tuple[Registration, object]] = field(default_factory=list, repr=False)

    def get(self, plugin_type: str, id: str | None = None) -> Any:
        """The first initialised instance of ``plugin_type`` (and ``id`` if given)."""
        for reg, instance in self._instances:
            if reg.type == plugin_type and (id is None or reg.id == id):
                return instance
        which = plugin_type if id is None else f"{plugin_type}.{id}"
        raise PluginNotFound(f"no initialised plugin {which!r} (skipped or not registered)")

    def get_all(self, plugin_type: str) -> dict[str, Any]:
        """Every initialised instance of ``plugin_type``, by id."""
        return {reg.id: inst for reg, inst in self._instances if reg.type == plugin_type}


@dataclass(frozen=True)
class LoadedPlugins:
    instances: tuple[tuple[Registration, object], ...]
    skipped: tuple[tuple[Registration, str], ...]

    def ttrpc_services(self) -> list[tuple[ServiceDescriptor, object]]:
        services: list[tuple[ServiceDescriptor, object]] = []
        for _, instance in self.instances:
            if isinstance(instance, TTRPCServiceProvider):
                services.extend(instance.ttrpc_services())
        return services


async def init_plugins(
    registry: Registry,
    *,
    namespace: str,
    id: str,
    address: str,
    ttrpc_address: str,
    bundle: str,
    debug: bool,
    nursery: trio.Nursery,
    log: logging.Logger,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    on_init: Callable[[Registration], None] | None = None,
) -> LoadedPlugins:
    """Initialise every registration in graph order (the daemon's step; usable in tests)."""
    order = registry.graph()
    overrides = load_plugin_config(bundle) if config is None else config
    instances: list[tuple[Registration, object]] = []
    skipped: list[tuple[Registration, str]] = []
    for reg in order:
        log.info('loading plugin "%s"...', reg.uri, extra={"fields": {"type": reg.type}})
        merged = dict(reg.config)
        merged.update(overrides.get(reg.uri, {}))
        ctx = InitContext(
            registration=reg,
            namespace=namespace,
            id=id,
            address=address,
            ttrpc_address=ttrpc_address,
            bundle=bundle,
            state_dir=os.path.join(bundle, reg.uri),
            config=MappingProxyType(merged),
            debug=debug,
            nursery=nursery,
            log=log,
            _instances=instances,
        )
        if on_init is not None:
            on_init(reg)
        try:
            instance = await reg.init(ctx)
        except SkipPlugin as exc:
            log.info(
                'skip loading plugin "%s"...',
                reg.uri,
                extra={"fields": {"type": reg.type, "error": str(exc)}},
            )
            skipped.append((reg, str(exc)))
            continue
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"failed to load plugin {reg.uri}: {exc}") from exc
        instances.append((reg, instance))
    return LoadedPlugins(tuple(instances), tuple(skipped))
