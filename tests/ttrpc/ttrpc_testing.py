"""Helpers shared by the ttrpc tests (imported by module name from the test files)."""

from __future__ import annotations


def _dump(text: str) -> bytes:
    """Bytes from a hex dump in the layout of spec section 7 (offset, then hex bytes)."""
    out = bytearray()
    for line in text.strip().splitlines():
        out += bytes.fromhex(" ".join(line.split()[1:]))
    return bytes(out)


# Spec section 7, copied from the dumps there.
KILL_REQUEST_FRAME = _dump(
    """
0000  00 00 00 54 00 00 00 01 01 00 0a 17 63 6f 6e 74
0010  61 69 6e 65 72 64 2e 74 61 73 6b 2e 76 32 2e 54
0020  61 73 6b 12 04 4b 69 6c 6c 1a 06 0a 02 63 31 18
0030  09 20 80 c8 af a0 25 2a 25 0a 1a 63 6f 6e 74 61
0040  69 6e 65 72 64 2d 6e 61 6d 65 73 70 61 63 65 2d
0050  74 74 72 70 63 12 07 64 65 66 61 75 6c 74
"""
)
KILL_PAYLOAD = bytes.fromhex("0a0263311809")  # KillRequest{id: "c1", signal: 9}

NOT_FOUND_RESPONSE_FRAME = _dump(
    """
0000  00 00 00 29 00 00 00 01 02 00 0a 27 08 05 12 23
0010  70 72 6f 63 65 73 73 20 61 6c 72 65 61 64 79 20
0020  66 69 6e 69 73 68 65 64 3a 20 6e 6f 74 20 66 6f
0030  75 6e 64
"""
)
EMPTY_RESPONSE_FRAME = bytes.fromhex("00 00 00 00 00 00 00 01 02 00")
RUST_EMPTY_RESPONSE_FRAME = bytes.fromhex("00 00 00 02 00 00 00 01 02 00 0a 00")

UNKNOWN_SERVICE_FRAME = _dump(
    """
0000  00 00 00 25 00 00 00 03 02 00 0a 23 08 0c 12 1f
0010  73 65 72 76 69 63 65 20 63 6f 6e 74 61 69 6e 65
0020  72 64 2e 74 61 73 6b 2e 76 33 2e 54 61 73 6b
"""
)
