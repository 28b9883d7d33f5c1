"""Deferred standard-library modules: nothing runs at ``import``, everything works on use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trioshim.shim import deferimport


def run_fresh(code: str) -> list[str]:
    """Run ``code`` in a new interpreter (the deferral acts on its ``sys.modules``)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.split()


def test_trio_imported_after_the_deferral_loads_no_openssl() -> None:
    got = run_fresh(
        """
        import sys
        from trioshim.shim.deferimport import defer_unused_modules
        deferred = defer_unused_modules()
        import trio, trioshim.shim.address
        print(",".join(deferred))
        print(any(m in sys.modules for m in ("_ssl", "_hashlib", "_lzma", "_bz2")))
        print("libcrypto" in open("/proc/self/maps").read())
        """
    )
    assert got == [",".join(deferimport.UNUSED_MODULES), "False", "False"]


def test_a_deferred_module_used_late_is_the_real_one() -> None:
    got = run_fresh(
        """
        import sys
        from trioshim.shim.deferimport import defer_unused_modules
        defer_unused_modules()
        import trio
        import ssl                       # binds the placeholder: still nothing loaded
        print("_ssl" in sys.modules)
        context = ssl.create_default_context()   # the first use loads it
        print(type(context).__module__, sys.modules["ssl"] is not ssl)
        print(trio._ssl._stdlib_ssl.SSLContext is sys.modules["ssl"].SSLContext)
        from hmac import compare_digest
        print(compare_digest(b"a", b"a"))
        import idna.core
        print(idna.encode("b\\u00fccher.example").decode())
        """
    )
    assert got == ["False", "ssl", "True", "True", "True", "xn--bcher-kva.example"]


def test_already_imported_modules_are_left_alone() -> None:
    got = run_fresh(
        """
        import sys, hashlib
        from trioshim.shim.deferimport import DeferredModule, defer_unused_modules
        print(",".join(defer_unused_modules(("hashlib", "os.path", "lzma"))))
        print(isinstance(sys.modules["hashlib"], DeferredModule))
        """
    )
    assert got == ["lzma", "False"]


def test_a_module_that_cannot_be_imported_fails_on_use_and_stays_deferred() -> None:
    got = run_fresh(
        """
        import sys
        from trioshim.shim.deferimport import defer_unused_modules
        print(",".join(defer_unused_modules(["trioshim_no_such_module"])))
        import trioshim_no_such_module as placeholder
        try:
            placeholder.anything
        except ModuleNotFoundError as e:
            print(e.name)
        print(sys.modules["trioshim_no_such_module"] is placeholder)
        """
    )
    assert got == ["trioshim_no_such_module", "trioshim_no_such_module", "True"]


def test_a_placeholder_whose_module_left_sys_modules_imports_it_afresh() -> None:
    got = run_fresh(
        """
        import sys
        from trioshim.shim.deferimport import defer_unused_modules
        defer_unused_modules(["ipaddress"])
        import ipaddress as placeholder
        del sys.modules["ipaddress"]     # e.g. a test restoring a snapshot of sys.modules
        print(placeholder.ip_address("10.0.0.1").is_private)
        print(hasattr(placeholder, "no_such_name"))
        """
    )
    assert got == ["True", "False"]


@pytest.mark.xfail(
    strict=True,
    reason="`import pkg.sub` of a deferred package: the `__path__` look-up loads the package, "
    "whose __init__ imports pkg.sub, and the import system then runs pkg.sub a second time",
)
def test_importing_a_submodule_of_a_deferred_package_runs_it_once() -> None:
    got = run_fresh(
        """
        import sys
        from trioshim.shim.deferimport import defer_unused_modules
        defer_unused_modules(["idna"])
        import idna.core
        print(idna.core.IDNAError is sys.modules["idna"].IDNAError)
        """
    )
    assert got == ["True"]


def test_a_deferred_module_whose_body_uses_another_deferred_module_loads_both(
    tmp_path: Path,
) -> None:
    """A module of the list whose import reads a name of another one (as a future standard
    library may): the second load happens inside the first, in the same thread."""
    (tmp_path / "trioshim_outer.py").write_text("import trioshim_inner\nVALUE = trioshim_inner.X\n")
    (tmp_path / "trioshim_inner.py").write_text("X = 42\n")
    got = run_fresh(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from trioshim.shim.deferimport import defer_unused_modules
        defer_unused_modules(["trioshim_outer", "trioshim_inner"])
        import trioshim_outer
        print(trioshim_outer.VALUE)
        """
    )
    assert got == ["42"]
