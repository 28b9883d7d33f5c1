"""Developer sessions. CI runs scripts/test, which calls the same tools directly."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, framework and in-process tests (no containerd needed)."""
    session.install("-e", ".[test]", "grpcio-tools")
    session.run("pytest", "-m", "not e2e", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """End-to-end tests against a private containerd, real runc and a busybox rootfs (root)."""
    session.install("-e", ".[test]", "grpcio-tools")
    session.run("pytest", "-m", "e2e", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    # trio-typing is deliberately absent: its stubs shadow trio's own inline types (see README).
    session.install("-e", ".", "mypy")
    session.run("mypy")


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate trioshim/api from proto/."""
    session.install("-e", ".", "grpcio-tools")
    session.run("python", "tools/genproto.py")


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("python", "-m", "bench", *session.posargs)
