"""containerd-shim-triowasm-v2: the task kit over the wasm Engine."""

import trioshim.task as task
from trioshim.wasm import WasmEngine


def main() -> None:
    task.main("io.containerd.triowasm.v2", WasmEngine())


if __name__ == "__main__":
    main()
