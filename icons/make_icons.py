"""Draws Commons' icons (app and tray states) as PNGs, and the Windows icon (icon.ico: PNG images at 16 to 256 pixels),
with the standard library only: `python3 icons/make_icons.py`."""
import math
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def png(path, size, pixel):
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            row += bytes(pixel(x + 0.5, y + 0.5, size))
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)))
        f.write(chunk(b"IDAT", raw))
        f.write(chunk(b"IEND", b""))


def coverage(d):
    """Anti-aliased inside-ness of a signed distance (negative inside), in [0, 1]."""
    return max(0.0, min(1.0, 0.5 - d))


def ring_mark(colour, background):
    """A ring (the pool) round a dot (a donated machine) on a rounded square or a disc."""

    def pixel(x, y, s):
        c = s / 2
        r = math.hypot(x - c, y - c)
        if background == "square":
            k = s * 0.2
            qx = max(abs(x - c) - (c - k), 0)
            qy = max(abs(y - c) - (c - k), 0)
            bg = coverage(math.hypot(qx, qy) - k)
        else:
            bg = coverage(r - c * 0.95)
        ring = coverage(abs(r - s * 0.27) - s * 0.07)
        dot = coverage(r - s * 0.1)
        white = max(ring, dot)
        a = bg
        rgb = [round(colour[i] * (1 - white) + 255 * white) for i in range(3)]
        return rgb + [round(255 * a)]

    return pixel


BLUE = (26, 115, 232)
for name, size in [("32x32.png", 32), ("128x128.png", 128), ("128x128@2x.png", 256), ("icon.png", 512)]:
    png(os.path.join(HERE, name), size, ring_mark(BLUE, "square"))
for state, colour in [("active", (24, 128, 56)), ("paused", (249, 171, 0)), ("error", (217, 48, 37))]:
    png(os.path.join(HERE, f"tray-{state}.png"), 64, ring_mark(colour, "disc"))


def ico(path, sizes, pixel):
    """An ICO whose entries are PNG images (Windows Vista on), one per size."""
    images = []
    for size in sizes:
        tmp = path + f".{size}.png"
        png(tmp, size, pixel)
        with open(tmp, "rb") as f:
            images.append((size, f.read()))
        os.remove(tmp)
    header = struct.pack("<HHH", 0, 1, len(images))
    offset = len(header) + 16 * len(images)
    entries, data = b"", b""
    for size, image in images:
        # Width and height 0 mean 256.
        entries += struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(image), offset)
        offset += len(image)
        data += image
    with open(path, "wb") as f:
        f.write(header + entries + data)


ico(os.path.join(HERE, "icon.ico"), [16, 24, 32, 48, 64, 256], ring_mark(BLUE, "square"))
