"""A raster canvas and a PNG writer in the standard library (zlib + struct).

The image carries no matplotlib (with numpy and its fonts, tens of MB) for a
few line charts; lines, boxes and a 3x5 pixel font for the labels are enough.
PNG: RFC 2083 / ISO 15948 (8-bit truecolour, filter type 0 on every row).
"""
from __future__ import annotations

import struct
import zlib

RGB = tuple[int, int, int]

SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: 3x5 glyphs: five rows, top first, each an octal digit (4 = left pixel, 1 = right).
GLYPHS = {
    "0": "75557", "1": "26227", "2": "71747", "3": "71717", "4": "55711", "5": "74717",
    "6": "74757", "7": "71222", "8": "75757", "9": "75717",
    "A": "25755", "B": "65656", "C": "34443", "D": "65556", "E": "74647", "F": "74644",
    "G": "34553", "H": "55755", "I": "72227", "J": "11152", "K": "55655", "L": "44447",
    "M": "57755", "N": "65555", "O": "25552", "P": "65644", "Q": "25563", "R": "65655",
    "S": "34216", "T": "72222", "U": "55557", "V": "55552", "W": "55775", "X": "55255",
    "Y": "55222", "Z": "71247",
    ".": "00002", ",": "00024", "-": "00700", "_": "00007", "/": "11244", ":": "02020",
    "%": "51245", "(": "12221", ")": "42224", "=": "07070", "+": "02720", " ": "00000",
    ">": "42124", "<": "12421",
}
#: What a character with no glyph is drawn as.
UNKNOWN = "77777"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))


class Canvas:
    """An RGB image, white to start with; (0, 0) is the top left corner."""

    def __init__(self, width: int, height: int, background: RGB = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i:i + 3] = bytes(color)

    def get(self, x: int, y: int) -> RGB:
        i = 3 * (y * self.width + x)
        r, g, b = self.pixels[i:i + 3]
        return (r, g, b)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        """Fill the box with corners (x0, y0) and (x1, y1), both included."""
        for y in range(max(0, min(y0, y1)), min(self.height, max(y0, y1) + 1)):
            for x in range(max(0, min(x0, x1)), min(self.width, max(x0, x1) + 1)):
                self.set(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: RGB, width: int = 1,
             dash: int = 0, phase: int = 0) -> int:
        """Bresenham's line, *width* pixels thick; *dash* > 0 draws that many on, that many off.

        Returns the dash phase at the end, to continue a dashed polyline with.
        """
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, step = dx + dy, phase
        while True:
            if not dash or (step // dash) % 2 == 0:
                for o in range(width):
                    self.set(x0 + (o if dx < -dy else 0), y0 + (0 if dx < -dy else o), color)
            if x0 == x1 and y0 == y1:
                return step
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy
            step += 1

    def text(self, x: int, y: int, s: str, color: RGB = (0, 0, 0), scale: int = 2) -> None:
        """Draw *s* (upper-cased) with its top left corner at (x, y)."""
        for ch in s.upper():
            rows = GLYPHS.get(ch, UNKNOWN)
            for r, bits in enumerate(rows):
                for c in range(3):
                    if int(bits) >> (2 - c) & 1:
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale - 1,
                                  y + (r + 1) * scale - 1, color)
            x += 4 * scale

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return max(0, len(s) * 4 * scale - scale)

    def png(self) -> bytes:
        """The image as a PNG file."""
        stride = 3 * self.width
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride]) for y in range(self.height))
        header = struct.pack("!IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9))
                + _chunk(b"IEND", b""))
