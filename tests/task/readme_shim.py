"""The "Write your own shim" code block of README.md, extracted as it is written."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_shim_source() -> str:
    """The first ``python`` block of the section."""
    section = README.read_text().split("## Write your own shim\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no python block under 'Write your own shim'"
    return match.group(1)


def load_readme_shim() -> ModuleType:
    module = ModuleType("readme_shim")
    exec(compile(readme_shim_source(), "README.md:Write your own shim", "exec"), module.__dict__)
    return module
