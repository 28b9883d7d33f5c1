"""WASI test modules, written in WebAssembly text and compiled with ``wasmtime.wat2wasm``.

Each is a tiny command module (``_start`` plus the WASI imports it needs), small enough to read:
what a test asserts about output, exit codes or files follows from the text below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import wasmtime

_WASI: Final = '"wasi_snapshot_preview1"'

# fd_write(1, iovec at 0 -> "hello, wasm\n" at 16)
HELLO: Final = f"""(module
  (import {_WASI} "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello, wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 12))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""

# args (NUL-separated, as args_get lays them out) to stdout, environment to stderr
ARGS_ENV: Final = f"""(module
  (import {_WASI} "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import {_WASI} "args_get" (func $args_get (param i32 i32) (result i32)))
  (import {_WASI} "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import {_WASI} "environ_get" (func $env_get (param i32 i32) (result i32)))
  (import {_WASI} "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func $dump (param $fd i32) (param $buf i32)
    ;; iovec at 8: the buffer and the size the *_sizes_get call stored at 4
    (i32.store (i32.const 8) (local.get $buf))
    (i32.store (i32.const 12) (i32.load (i32.const 4)))
    (drop (call $fd_write (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 16))))
  (func (export "_start")
    (drop (call $args_sizes (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 8192)))
    (call $dump (i32.const 1) (i32.const 8192))
    (drop (call $env_sizes (i32.const 0) (i32.const 4)))
    (drop (call $env_get (i32.const 1024) (i32.const 8192)))
    (call $dump (i32.const 2) (i32.const 8192))))"""


def write_file(dirfd: int = 3) -> str:
    """Creates "written.txt" in the preopen at ``dirfd`` (3 is the first: the rootfs as "/") and
    writes "from wasm\\n"; exits with the WASI errno of path_open if that fails."""
    return f"""(module
  (import {_WASI} "path_open" (func $path_open
    (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import {_WASI} "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import {_WASI} "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "written.txt")
  (data (i32.const 96) "from wasm\\n")
  (func (export "_start") (local $err i32)
    ;; dirfd, no symlink follow, path at 64 (11 bytes), O_CREAT|O_TRUNC, right fd_write, fd -> 0
    (local.set $err (call $path_open (i32.const {dirfd}) (i32.const 0) (i32.const 64)
      (i32.const 11) (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 0)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (i32.store (i32.const 8) (i32.const 96))
    (i32.store (i32.const 12) (i32.const 10))
    (drop (call $fd_write (i32.load (i32.const 0)) (i32.const 8) (i32.const 1) (i32.const 16)))))"""


WRITE_FILE: Final = write_file()

# never returns (reports "running" first, like every module)
LOOP: Final = """(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))"""

EXIT_7: Final = f"""(module
  (import {_WASI} "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.const 7))))"""

TRAP: Final = """(module
  (memory (export "memory") 1)
  (func $deep (unreachable))
  (func (export "_start") (call $deep)))"""

# grows its memory to 1 GiB and touches every page; exits 0 only if all of it was granted
HOG: Final = f"""(module
  (import {_WASI} "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $p i32)
    (if (i32.eq (memory.grow (i32.const 4095)) (i32.const -1))
      (then (call $proc_exit (i32.const 3))))
    (local.set $p (i32.const 0))
    (loop $touch
      (i32.store8 (local.get $p) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $touch (i32.lt_u (local.get $p) (i32.const 268435456))))))"""

# no _start: a library ("reactor"), not a command
NO_START: Final = """(module (memory (export "memory") 1) (func (export "other")))"""

# imports something no WASI host provides: fails at instantiation
BAD_IMPORT: Final = """(module
  (import "env" "missing" (func $missing))
  (func (export "_start") (call $missing)))"""


def install(root: Path, name: str, wat: str) -> str:
    """Compile ``wat`` into ``root/name`` and return the guest path (``/name``)."""
    (root / name).write_bytes(wasmtime.wat2wasm(wat))
    return "/" + name


# recurses until the stack is exhausted: a trap whose backtrace is as deep as it gets
RECURSE: Final = """(module
  (memory (export "memory") 1)
  (func $down (param i32) (call $down (i32.add (local.get 0) (i32.const 1))))
  (func (export "_start") (call $down (i32.const 0))))"""


def long_import(length: int) -> str:
    """Imports a function whose name is ``length`` characters: the load error quotes it."""
    return f"""(module
  (import "env" "{"x" * length}" (func $missing))
  (func (export "_start") (call $missing)))"""


# "abc" (no newline) to stdout, then 16 x 256 KiB of the bytes 0..255 repeated to stderr,
# then proc_exit(0): output is written through, not buffered until a newline or lost at exit
BULK_OUTPUT: Final = f"""(module
  (import {_WASI} "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import {_WASI} "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 8)
  (data (i32.const 16) "abc")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $i (i32.const 0))
    (loop $fill  ;; bytes 65536 .. 65536+262144 hold i mod 256
      (i32.store8 (i32.add (i32.const 65536) (local.get $i)) (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 262144))))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 262144))
    (local.set $i (i32.const 0))
    (loop $write
      (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $write (i32.lt_u (local.get $i) (i32.const 16))))
    (call $proc_exit (i32.const 0))))"""
