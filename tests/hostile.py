"""Generated hostile files shared by the hostile-input tests (no fixtures on disk).

Each entry of `hostile_images()` is (file name, bytes, why it is hostile). None of them may
reach a decoder outside the allow-list, and none may end in anything but a one-line error.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

POSTSCRIPT = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
              b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


def rgb_image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def encode(rgb: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _mutated_jpeg(rgb: np.ndarray) -> bytes:
    data = bytearray(encode(rgb, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = b"\0\0\0\0"  # frame height and width 0
    return bytes(data)


def _mutated_png(rgb: np.ndarray) -> bytes:
    data = bytearray(encode(rgb, "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # one flipped byte inside the compressed pixels (CRC no longer matches)
    return bytes(data)


def hostile_images() -> list[tuple[str, bytes, str]]:
    rgb = rgb_image()
    png, jpeg = encode(rgb, "PNG"), encode(rgb, "JPEG")
    return [
        ("postscript.png", POSTSCRIPT, "PostScript named .png (Pillow would run Ghostscript)"),
        ("texture.dds", encode(rgb, "DDS"), "DDS (NotImplementedError in some variants)"),
        ("sprite.blp", b"BLP1" + bytes(range(256)) * 2, "BLP (BLPFormatError)"),
        ("anim.gif", encode(rgb, "GIF"), "GIF (not on the allow-list)"),
        ("icon.ico", encode(rgb, "ICO"), "ICO (not on the allow-list)"),
        ("truncated.png", png[: len(png) // 2], "truncated PNG"),
        ("mutated.png", _mutated_png(rgb), "PNG with a flipped byte"),
        ("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated JPEG"),
        ("mutated.jpg", _mutated_jpeg(rgb), "JPEG with a zero-sized frame header"),
    ]


def fake_ghostscript(folder: Path) -> Path:
    """A `gs` executable in `folder` that appends its arguments to folder/gs_calls and fails."""
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "gs_calls"
    script = folder / "gs"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return record


def path_with(folder: Path) -> str:
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
