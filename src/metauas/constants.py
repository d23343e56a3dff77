"""Constants shared by every layer (ground floor: imports nothing of metauas but `errors`).

* `STRIDE`: the encoder's total down-sampling (EfficientNet stages 1..5 halve the size five
  times, 2**5 = 32), so model input sizes must be positive multiples of 32.
* `IMAGE_SUFFIXES`: the file endings taken as images when a folder or glob is listed
  (compared case-insensitively: ``a.JPG`` counts).
"""

from __future__ import annotations

from metauas.errors import InputError

STRIDE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def check_size(size: int, what: str = "size") -> int:
    """Return `size` as int when it is a positive multiple of `STRIDE` (32).

    Raises:
        InputError: any other value (message names `what`, e.g. "--size").
    """
    if isinstance(size, bool) or int(size) != size or size < STRIDE or int(size) % STRIDE:
        raise InputError(f"{what} must be a positive multiple of {STRIDE}, got {size}")
    return int(size)


def is_image_file_name(name: str) -> bool:
    """True when `name` ends with one of IMAGE_SUFFIXES (case-insensitive)."""
    return name.lower().endswith(IMAGE_SUFFIXES)
