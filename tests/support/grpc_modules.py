"""Python gRPC modules generated at test time with grpcio-tools (never committed).

`generated_modules(module, proto_text)` compiles one self-contained proto file (it may import
the well-known `google/protobuf/*.proto`) as `<module>.proto` into the cache dir, once per
proto text x grpcio-tools x protobuf version, and imports `<module>_pb2` / `<module>_pb2_grpc`.
Layout: `<cache>/grpc-py/<module>-<hash>/`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from tests.support.debian_cache import cache_dir, locked


def generated_modules(module: str, proto_text: bytes) -> tuple[ModuleType, ModuleType]:
    """(pb2, pb2_grpc) of `proto_text` compiled as `<module>.proto`."""
    import google.protobuf
    import grpc_tools
    from grpc_tools import protoc

    if f"{module}_pb2_grpc" in sys.modules:
        return sys.modules[f"{module}_pb2"], sys.modules[f"{module}_pb2_grpc"]
    tools_version = getattr(grpc_tools, "__version__", "") or _dist_version("grpcio-tools")
    key = hashlib.sha256(
        proto_text + tools_version.encode() + google.protobuf.__version__.encode()
    ).hexdigest()[:16]
    out = cache_dir() / "grpc-py" / f"{module}-{key}"
    with locked(f"grpc-py-{module}"):
        if not (out / f"{module}_pb2_grpc.py").is_file():
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "src").mkdir(parents=True)
            (tmp / "src" / f"{module}.proto").write_bytes(proto_text)
            include = Path(protoc.__file__).parent / "_proto"
            rc = protoc.main(
                [
                    "grpc_tools.protoc",
                    f"-I{tmp / 'src'}",
                    f"-I{include}",
                    f"--python_out={tmp}",
                    f"--grpc_python_out={tmp}",
                    f"{module}.proto",
                ]
            )
            if rc != 0:
                raise RuntimeError(f"protoc failed ({rc}) on {module}.proto")
            shutil.rmtree(tmp / "src")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)
