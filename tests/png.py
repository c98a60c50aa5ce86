"""Hand-made PNG files for the tests: a header that declares any size (a decompression bomb) over any data."""

from __future__ import annotations

import struct
import zlib


def png(width: int, height: int, pixels: bytes = bytes(64)) -> bytes:
    """A grayscale 8-bit PNG of that declared size whose image data is ``pixels`` (filter bytes included)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels, 9)) + chunk(
        b"IEND", b"")
