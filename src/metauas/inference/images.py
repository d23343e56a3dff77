"""Turning whatever a user hands us into an RGB uint8 array, with clear errors.

Accepts paths, PIL images, numpy arrays (H,W), (H,W,1|3|4) of uint8/uint16/float in [0,1],
and torch tensors (3,H,W) / (H,W,3). Handles 16-bit, grey, palette, RGBA, CMYK and EXIF
rotation; guards against decompression bombs and truncated files.

Files and uploaded bytes are untrusted: `decode_image` is the one boundary they pass. Only the
formats in ALLOWED_FORMATS are tried (Pillow's `Image.open(..., formats=...)`), so no other
decoder ever sees the bytes (PostScript/EPS would run Ghostscript; DDS, BLP, ICO, GIF, ... are
refused), and every decoder failure becomes an InputError with one line of text.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from metauas.errors import ImageTooLargeError, InputError, UnsupportedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Pillow format names tried when decoding files or uploads; nothing that runs an external program.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
ALLOWED_DESCRIPTION = "PNG, JPEG, BMP, TIFF or WebP"
MAX_PIXELS = 100_000_000  # about 10k x 10k; larger files are refused (decompression bombs)
MIN_SIDE = 8


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        top = 65535.0 if array.max(initial=0) > 255 or array.dtype == np.uint16 else 255.0
        return np.clip(np.round(array.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{what}: image contains NaN or infinite values")
        if array.min(initial=0) < -1e-6 or array.max(initial=0) > 1 + 1e-6:
            raise InputError(f"{what}: float images must have values in [0, 1]")
        return np.round(np.clip(array, 0, 1) * 255.0).astype(np.uint8)
    raise InputError(f"{what}: unsupported pixel type {array.dtype}")


def _array_to_rgb(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"{what}: expected an image of shape (H,W), (H,W,1), (H,W,3) or (H,W,4), "
                         f"got {array.shape}")
    array = _to_uint8(array, what)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def _pil_to_rgb(image: Image.Image, what: str) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(image), what)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become white, as most viewers show them
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB")).copy()


def decode_image(source: Path | bytes, what: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an untrusted image file or byte string into an (H, W, 3) uint8 RGB array.

    Only ALLOWED_FORMATS are tried; the pixel count is checked from the header before the
    pixels are decoded (limit `max_pixels`, default MAX_PIXELS).

    Raises:
        UnsupportedImageError: not one of the allowed formats (or not an image at all).
        ImageTooLargeError: more than `max_pixels` pixels (possible decompression bomb).
        InputError: corrupt or truncated data, or any other decoder failure (one line).
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoder chatter about odd metadata of untrusted files
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=list(ALLOWED_FORMATS)) as image:
                if image.width * image.height > max_pixels:
                    raise ImageTooLargeError(f"{what}: image too large ({image.width}x{image.height} pixels; "
                                             f"limit {max_pixels:,})")
                image.load()
                return _pil_to_rgb(image, what)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{what}: image too large (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"{what}: not a readable image file (supported: {ALLOWED_DESCRIPTION})") \
            from None
    except MemoryError:
        raise InputError(f"{what}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - untrusted data: any decoder failure is a bad file
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise InputError(f"{what}: corrupt or truncated image ({detail})") from None


def probe_image(source: Path | bytes, what: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an untrusted image from its header, without decoding the pixels.

    Raises the same errors as `decode_image` for unsupported formats and oversized images
    (a corrupt body is only found when decoding).
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp, formats=list(ALLOWED_FORMATS)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{what}: image too large (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"{what}: not a readable image file (supported: {ALLOWED_DESCRIPTION})") \
            from None
    except Exception as exc:  # noqa: BLE001 - untrusted data: any parser failure is a bad file
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise InputError(f"{what}: corrupt or truncated image ({detail})") from None
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{what}: image too large ({width}x{height} pixels; limit {max_pixels:,})")
    return width, height


def _open_path(path: Path) -> np.ndarray:
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"image file is empty: {path}")
    return decode_image(path, str(path))


def load_image(source: ImageLike, name: str | None = None) -> np.ndarray:
    """Any supported image -> (H, W, 3) uint8 RGB array."""
    what = name or (str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__)
    if isinstance(source, (str, os.PathLike)):
        rgb = _open_path(Path(source).expanduser())
    elif isinstance(source, Image.Image):
        rgb = _pil_to_rgb(source, what)
    elif isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        rgb = _array_to_rgb(t.numpy(), what)
    elif isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source, what)
    else:
        raise InputError(f"unsupported image type {type(source).__name__} (use a path, PIL image, "
                         "numpy array or torch tensor)")
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise InputError(f"{what}: image too small ({rgb.shape[1]}x{rgb.shape[0]}); "
                         f"at least {MIN_SIDE} pixels per side")
    return rgb


def to_model_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H,W,3) uint8 -> (1,3,size,size) float in [0,1], bilinear with antialiasing."""
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        tensor = tensor.clamp_(0.0, 1.0)
    return tensor


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a directory: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files
