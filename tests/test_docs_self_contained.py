"""The repository stands on its own: no tracked file points a reader at a document outside it.

The design notes the project was built from live outside the repository, so a comment that
says "see <that file> section 4" sends a reader nowhere. What such a comment needs is the fact
itself, in the repository's own words; this test finds the citations that slipped through.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Built from parts so that this file does not match itself.
_MD = r"\.md"
OUTSIDE_REFERENCES = re.compile(
    "|".join(
        (
            r"\brunc-task" + _MD,
            r"\bshim-v2" + _MD,
            r"(?<![\w/.-])ttrpc" + _MD,
            r"\bARCHITECTURE" + _MD,
            r"\bSTYLE" + _MD,
            r"shared/" + "spec",
            r"/work/" + "shared",
        )
    )
)


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def citations(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE_REFERENCES.search(line)
    ]


def test_pattern_catches_each_outside_reference() -> None:
    samples = [
        "see runc-task" + ".md 2.11",
        "(shim-v2" + ".md 8.3)",
        "ttrpc" + ".md section 7",
        "the house plan, ARCHITECTURE" + ".md",
        "STYLE" + ".md",
        "/work/" + "shared/" + "spec/x",
    ]
    assert all(citations(sample) for sample in samples)
    # Our own docs may be named: docs/wasm.md is in the repository.
    assert not citations("see docs/wasm.md and docs/interfaces.md")


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    found: list[str] = []
    for name in tracked_files():
        path = REPO / name
        if not path.is_file():  # deleted in the work tree but still in the index
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary: nothing a reader follows
        found += [f"{name}:{number}: {line}" for number, line in citations(text)]
    assert not found, "files citing documents outside the repository:\n" + "\n".join(found)
