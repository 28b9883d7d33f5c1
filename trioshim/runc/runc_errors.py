"""runc's failures as containerd users see them: go-runc's and Go's error texts.

- :class:`RuncError`: a runc invocation failed (``<binary> did not terminate successfully:
  exit status <N>[: <output>]``, or the spawn's own error);
- :func:`go_errno_text`, :func:`go_os_error`: Go's spelling of an OS error;
- :func:`runtime_error`: the text containerd's runc shim gives a failed create/start/exec,
  preferring the last ``error`` entry runc wrote to ``log.json`` (runc's own explanation,
  which the exit status alone does not carry).
"""

from __future__ import annotations

import json
import os


class RuncError(Exception):
    """A runc invocation failed; ``str(err)`` is the go-runc style text."""

    def __init__(self, message: str, *, status: int | None = None, output: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.output = output

    def __str__(self) -> str:
        return self.message


# --- go-style OS error text -----------------------------------------------------------------


def go_errno_text(err: int) -> str:
    """Go's spelling of an errno ("no such file or directory")."""
    text = os.strerror(err)
    return text[:1].lower() + text[1:]


def go_os_error(op: str, exc: OSError) -> str:
    """Go's ``*PathError`` text: ``open /x: no such file or directory``."""
    what = go_errno_text(exc.errno) if exc.errno is not None else str(exc)
    if exc.filename is not None:
        return f"{op} {os.fsdecode(exc.filename)}: {what}"
    return f"{op}: {what}"


# --- log.json ---------------------------------------------------------------------------------


def last_runtime_error(log_path: str) -> str:
    """The trimmed ``msg`` of the last ``"level": "error"`` entry of runc's JSON log.

    The whole file is one stream of JSON objects (it is appended to by every runc call of the
    container). Returns "" when there is no error entry. Raises :class:`OSError` when the file
    cannot be read and :class:`ValueError` when it is not a stream of JSON objects.
    """
    with open(log_path, encoding="utf-8", errors="replace") as f:
        data = f.read()
    decoder = json.JSONDecoder()
    message = ""
    level = ""
    pos = 0
    end = len(data)
    while True:
        while pos < end and data[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return message
        try:
            entry, pos = decoder.raw_decode(data, pos)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid character in log at offset {exc.pos}: {exc.msg}") from None
        if not isinstance(entry, dict):
            raise ValueError(f"json: cannot unmarshal {type(entry).__name__} into a log entry")
        # Go decodes every entry into the same struct, so a missing key keeps the previous value.
        if isinstance(entry.get("level"), str):
            level = entry["level"]
        if level == "error":
            msg = entry.get("msg", "")
            message = msg.strip() if isinstance(msg, str) else ""


def runtime_error(log_path: str | None, prefix: str, err: BaseException) -> str:
    """Text of a failed create/start/exec/... as containerd's runc shim words it."""
    if not log_path:
        return f"{prefix}: {err}"
    try:
        message = last_runtime_error(log_path)
    except OSError as exc:
        return f"{prefix}: unable to retrieve OCI runtime error ({go_os_error('open', exc)}): {err}"
    except ValueError as exc:
        return f"{prefix}: unable to retrieve OCI runtime error ({exc}): {err}"
    if not message:
        return f"{prefix}: {err}"
    return f"{prefix}: {message}"
