"""The shim command line, parsed like Go's ``flag`` package into a frozen value.

containerd runs ``SHIM -namespace NS -address GRPC -publish-binary CTRD -id ID [-bundle B]
[-debug] ACTION`` (``start``, ``delete``, or none for the daemon). Go's rules are kept:
one or two leading dashes, ``-flag value`` or ``-flag=value``, a boolean flag takes no separate
value (``-debug=false`` works), parsing stops at ``--`` or at the first word that is not a
flag, and that word is the action. Nothing here exits the process: errors are :class:`FlagError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from trioshim.shim import identifiers

__all__ = [
    "USAGE",
    "FlagError",
    "Flags",
    "parse_flags",
    "validate_bundle_flag",
    "validate_identifier",
]


class FlagError(ValueError):
    """A bad command line or flag value (the CLI prints it and exits 1, or 2 for usage)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True, slots=True)
class Flags:
    """Everything the command line says; passed down, never stored in a global."""

    namespace: str = ""
    id: str = ""
    address: str = ""
    publish_binary: str = "containerd"
    bundle: str = ""
    socket: str = ""
    debug: bool = False
    version: bool = False
    info: bool = False
    help: bool = False
    action: str = ""
    args: tuple[str, ...] = ()

    def daemon_argv(self) -> list[str]:
        """The flags the runc shim gives its daemon (no action, no -publish-binary/-bundle)."""
        argv = ["-namespace", self.namespace, "-id", self.id, "-address", self.address]
        if self.debug:
            argv.append("-debug")
        return argv


# flag name -> (field, is_bool)
_FLAGS: dict[str, tuple[str, bool]] = {
    "namespace": ("namespace", False),
    "id": ("id", False),
    "address": ("address", False),
    "publish-binary": ("publish_binary", False),
    "bundle": ("bundle", False),
    "socket": ("socket", False),
    "debug": ("debug", True),
    "v": ("version", True),
    "version": ("version", True),
    "info": ("info", True),
}

USAGE = """\
Usage of the shim:
  -address string        grpc address back to main containerd
  -bundle string         path to the bundle if not workdir
  -debug                 enable debug output in logs
  -id string             id of the task
  -info                  print the runtime info (containerd.types.RuntimeInfo) and exit
  -namespace string      namespace that owns the shim
  -publish-binary string path to publish binary (used for publishing events) (default "containerd")
  -socket string         socket path to serve
  -v                     show the shim version and exit
actions: start, delete (no action: serve as the daemon)
"""

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_flags(argv: Sequence[str]) -> Flags:
    """Parse ``argv`` (without the program name)."""
    values: dict[str, object] = {}
    i = 0
    args = list(argv)
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or arg[0] != "-":
            break
        if arg == "--":
            i += 1
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}", usage=True)
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        i += 1
        if name in ("h", "help"):
            values["help"] = True
            continue
        spec = _FLAGS.get(name)
        if spec is None:
            raise FlagError(f"flag provided but not defined: -{name}", usage=True)
        field, is_bool = spec
        if is_bool:
            if value is None or value in _TRUE:
                values[field] = True
            elif value in _FALSE:
                values[field] = False
            else:
                raise FlagError(
                    f'invalid boolean value "{value}" for -{name}: parse error', usage=True
                )
        else:
            if value is None:
                if i >= len(args):
                    raise FlagError(f"flag needs an argument: -{name}", usage=True)
                value = args[i]
                i += 1
            values[field] = value
    rest = tuple(args[i:])
    values["action"] = rest[0] if rest else ""
    values["args"] = rest[1:]
    known = {f.name for f in fields(Flags)}
    assert set(values) <= known
    return Flags(**values)  # type: ignore[arg-type]


def validate_identifier(kind: str, value: str) -> None:
    """Reject what containerd would never send and what could escape a directory."""
    try:
        identifiers.validate_identifier(value, f"shim {kind}")
    except identifiers.InvalidIdentifier as exc:
        raise FlagError(str(exc)) from None


def validate_bundle_flag(flags: Flags) -> None:
    """``-bundle``, when given, must be an absolute clean path named after ``-id``."""
    if not flags.bundle:
        return
    try:
        identifiers.validate_bundle(flags.bundle, flags.id)
    except identifiers.InvalidBundle as exc:
        raise FlagError(f"shim {exc}") from None
