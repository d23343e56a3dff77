"""THE image and mask reader: every path (inference, web upload, evaluation, calibration,
synthesis) turns what a user hands over into pixels here, with the same rules and errors.

Accepted: paths, bytes, PIL images, numpy arrays (H,W), (H,W,1|3|4) and torch tensors
(C,H,W) / (H,W,C) with C in 1, 3, 4 (4 = RGBA), of type bool, uint8, wider integers or
float in [0, 1]. The result is an (H, W, 3) uint8 RGB array.

Rules (one for every input type):

* **Alpha**: transparent pixels are composited on white (as viewers show them), whether the
  image came as a file, a PIL image, an (H,W,4) array or a (4,H,W) tensor.
* **Bit depth**: integer pixels are divided by ``2**bits - 1`` of their *real* bit depth:
  8 for uint8; for wider data the PNG ``sBIT`` chunk where a file has one; otherwise a depth
  decided once from the prompt images (`prompt_depth`: the smallest of 10/12/14/16 bits that
  holds their largest value) and applied to every query, so a query's scaling does not change
  with its own maximum (values above the prompt's range saturate, and the scaling says so).
  Without such a prompt (8-bit, float or sBIT prompts; or a single `load_image` call) there is
  no prompt depth and each wide image's own maximum decides.
  16-bit colour PNG/TIFF files are decoded with OpenCV (Pillow keeps only their high byte).
  `LoadedImage.scaling` says which scaling was used.
* Floats must lie in [0, 1]; EXIF rotation is applied; files and bytes pass the allow-listed
  decoder (`decode_image`): only ALLOWED_FORMATS, pixel count checked from the header.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from metauas.constants import IMAGE_SUFFIXES
from metauas.errors import ImageTooLargeError, InputError, UnsupportedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor, "LoadedImage"]

# Pillow format names tried when decoding files or uploads; nothing that runs an external program.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
ALLOWED_DESCRIPTION = "PNG, JPEG, BMP, TIFF or WebP"
MAX_PIXELS = 100_000_000  # about 10k x 10k; larger files are refused (decompression bombs)
MIN_SIDE = 8  # smallest image decoded at all (masks and maps may be small)
MIN_SEGMENT_SIDE = 32  # smallest prompt or query segmented: below it the encoder sees ~1 feature cell
DEPTHS = (8, 10, 12, 14, 16, 24, 32)  # candidate bit depths of integer data without metadata


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and how its pixels were scaled.

    Attributes:
        rgb: (H, W, 3) uint8 RGB (alpha already composited on white).
        bits: significant bits of integer input (8 for uint8, 1 for bool); None for floats.
        scaling: human-readable rule used, e.g. "8-bit", "10-bit (PNG sBIT)",
            "12-bit (depth of the prompt)", "float [0, 1]".
        inferred: True when `bits` was guessed from pixel values (no metadata, no prompt).
        alpha: True when an alpha channel was composited.
    """

    rgb: np.ndarray
    bits: int | None = 8
    scaling: str = "8-bit"
    inferred: bool = False
    alpha: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """(H, W, 3) shape of the RGB array."""
        return self.rgb.shape


@dataclass
class _Raw:
    """Undecided pixels: (H, W, C) numeric array, C in 1, 3, 4, plus what the file declared."""

    array: np.ndarray
    declared_bits: int | None = None  # sBIT / 8-bit modes
    source: str = "array"


# ============================================================================ scaling
def _needed_bits(top: int) -> int:
    for bits in DEPTHS:
        if top < 2 ** bits:
            return bits
    return 64


def _choose_bits(raw: _Raw, depth: int | None) -> tuple[int, str, bool]:
    array = raw.array
    if array.dtype == np.bool_:
        return 1, "1-bit", False
    if array.dtype == np.uint8:
        return 8, "8-bit", False
    if raw.declared_bits:
        return raw.declared_bits, f"{raw.declared_bits}-bit (PNG sBIT)", False
    needed = _needed_bits(int(array.max(initial=0)))
    if depth is None:
        return needed, f"{needed}-bit (from this image's largest value)", True
    if needed > depth:  # never re-scale with the query's own maximum: saturate, and say so
        return depth, f"{depth}-bit (depth of the prompt; brighter values clipped)", False
    return depth, f"{depth}-bit (depth of the prompt)", False


def _scale(raw: _Raw, what: str, depth: int | None) -> tuple[np.ndarray, int | None, str, bool]:
    """-> (float32 (H,W,C) in [0,1] or uint8 (H,W,C) when already 8-bit, bits, scaling, inferred)."""
    array = raw.array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{what}: image contains NaN or infinite values")
        if array.min(initial=0) < -1e-6 or array.max(initial=0) > 1 + 1e-6:
            raise InputError(f"{what}: float images must have values in [0, 1]")
        return np.clip(array, 0, 1).astype(np.float32), None, "float [0, 1]", False
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise InputError(f"{what}: unsupported pixel type {array.dtype}")
    bits, scaling, inferred = _choose_bits(raw, depth)
    if bits == 8 and array.dtype == np.uint8:
        return array, 8, scaling, inferred
    if array.dtype == np.bool_:
        return array.astype(np.float32), 1, scaling, False
    top = float(2 ** bits - 1)
    return np.clip(array.astype(np.float64) / top, 0.0, 1.0).astype(np.float32), bits, scaling, inferred


def _composite(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H,W,C) uint8 or float [0,1] -> (H,W,3) uint8; alpha (C = 4) composited on white."""
    channels = pixels.shape[2]
    has_alpha = channels == 4
    if pixels.dtype == np.uint8 and not has_alpha:
        out = pixels if channels == 3 else np.repeat(pixels, 3, axis=2)
        return np.ascontiguousarray(out), False
    values = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
    colour = values[:, :, :-1] if has_alpha else values
    if has_alpha:
        alpha = values[:, :, -1:]
        colour = colour * alpha + (1.0 - alpha)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return np.ascontiguousarray(np.round(np.clip(colour, 0, 1) * 255.0).astype(np.uint8)), has_alpha


def _finish(raw: _Raw, what: str, depth: int | None) -> LoadedImage:
    array = raw.array
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"{what}: expected an image of shape (H,W), (H,W,1), (H,W,3) or (H,W,4), or a tensor "
                         f"(C,H,W) with C 1, 3 or 4, got {array.shape}")
    raw.array = array
    pixels, bits, scaling, inferred = _scale(raw, what, depth)
    rgb, alpha = _composite(pixels)
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise InputError(f"{what}: image too small ({rgb.shape[1]}x{rgb.shape[0]}); "
                         f"at least {MIN_SIDE} pixels per side")
    return LoadedImage(rgb, bits, scaling, inferred, alpha)


# ============================================================================ decoding
def _png_sbit(data: bytes) -> int | None:
    """Largest significant-bit count of the colour channels from a PNG's sBIT chunk (None: absent)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    pos, colour_type = 8, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and len(body) >= 10:
            colour_type = body[9]
        elif kind == b"sBIT" and body:
            colour = body[:-1] if colour_type in (4, 6) and len(body) > 1 else body
            return max(colour) or None
        elif kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def _orient(array: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, C) array."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
           7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1], 8: lambda a: np.swapaxes(a, 0, 1)[::-1]}
    op = ops.get(int(orientation or 1))
    return np.ascontiguousarray(op(array)) if op else array


def _decode_deep_colour(data: bytes, image: Image.Image, what: str) -> np.ndarray:
    """16-bit colour PNG/TIFF (Pillow keeps only the high byte) through OpenCV, as RGB(A) uint16."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise InputError(f"{what}: corrupt or truncated 16-bit image")
    if array.ndim == 3 and array.shape[2] >= 3:
        order = [2, 1, 0, 3][:array.shape[2]]
        array = array[:, :, order]
    orientation = image.getexif().get(0x0112) if hasattr(image, "getexif") else None
    return _orient(array if array.ndim == 3 else array[:, :, None], orientation)


def _pil_to_raw(image: Image.Image) -> _Raw:
    """A PIL image -> its pixels, keeping alpha and the full depth of 16/32-bit grey modes."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _Raw(np.asarray(image).astype(np.uint16), source="pil")
    if image.mode in ("I", "F"):
        return _Raw(np.asarray(image), source="pil")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _Raw(np.asarray(image.convert("RGBA")).copy(), 8, "pil")
    return _Raw(np.asarray(image.convert("RGB")).copy(), 8, "pil")


def pil_to_rgb(image: Image.Image, what: str = "image") -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) uint8 RGB with the rules of this module (EXIF rotation,
    alpha on white, 16-bit grey by its depth) but without the minimum-size check.

    Raises:
        InputError: unsupported pixel data.
    """
    raw = _pil_to_raw(image)
    pixels, _, _, _ = _scale(raw, what, None)
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return _composite(pixels)[0]


def _is_deep_colour(image: Image.Image) -> bool:
    tile = getattr(image, "tile", None) or []
    args = tile[0][3] if tile else None
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return image.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode


def _decode_raw(source: Path | bytes, what: str, max_pixels: int | None) -> _Raw:
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
    fp = io.BytesIO(data) if data is not None else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoder chatter about odd metadata of untrusted files
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=list(ALLOWED_FORMATS)) as image:
                if image.width * image.height > max_pixels:
                    raise ImageTooLargeError(f"{what}: image too large ({image.width}x{image.height} pixels; "
                                             f"limit {max_pixels:,})")
                deep = _is_deep_colour(image)
                if data is None and (deep or image.mode.startswith("I;16")):
                    data = Path(source).read_bytes()  # type: ignore[arg-type]
                if deep:
                    raw = _Raw(_decode_deep_colour(data, image, what), source="file")  # type: ignore[arg-type]
                else:
                    image.load()
                    raw = _pil_to_raw(image)
                if raw.array.dtype != np.uint8 and image.format == "PNG":
                    raw.declared_bits = _png_sbit(data)  # type: ignore[arg-type]
                raw.source = "file"
                return raw
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


def decode_image(source: Path | bytes, what: str, max_pixels: int | None = None,
                 depth: int | None = None) -> np.ndarray:
    """Decode an untrusted image file or byte string into an (H, W, 3) uint8 RGB array.

    Only ALLOWED_FORMATS are tried; the pixel count is checked from the header before the
    pixels are decoded (limit `max_pixels`, default MAX_PIXELS). `depth`: see `read_image`.

    Raises:
        UnsupportedImageError: not one of the allowed formats (or not an image at all).
        ImageTooLargeError: more than `max_pixels` pixels (possible decompression bomb).
        InputError: corrupt or truncated data, too small, or any other decoder failure (one line).
    """
    return decode_loaded(source, what, max_pixels, depth).rgb


def decode_loaded(source: Path | bytes, what: str, max_pixels: int | None = None,
                  depth: int | None = None) -> LoadedImage:
    """Like `decode_image`, returning the `LoadedImage` (pixels plus the scaling used).

    Raises:
        UnsupportedImageError, ImageTooLargeError, InputError: as `decode_image`.
    """
    return _finish(_decode_raw(source, what, max_pixels), what, depth)


def probe_image(source: Path | bytes, what: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an untrusted image from its header, without decoding the pixels.

    Raises:
        UnsupportedImageError, ImageTooLargeError, InputError: as `decode_image` (a corrupt
        body is only found when decoding).
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


def _open_path(path: Path, depth: int | None) -> LoadedImage:
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"image file is empty: {path}")
    return decode_loaded(path, str(path), depth=depth)


def _tensor_to_raw(tensor: torch.Tensor, what: str) -> _Raw:
    t = tensor.detach().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        raise InputError(f"{what}: got a batch tensor {tuple(t.shape)}; pass one image as (C,H,W) or (H,W,C) "
                         f"(e.g. tensor[0], shape {tuple(t.shape[1:])}), or a list of them")
    if t.dim() == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
        t = t.permute(1, 2, 0)
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        t = t.float()
    return _Raw(t.numpy(), source="tensor")


def read_image(source: ImageLike, name: str | None = None, depth: int | None = None) -> LoadedImage:
    """Any supported image -> `LoadedImage` ((H, W, 3) uint8 RGB + the scaling used).

    Args:
        source: path, PIL image, numpy array (H,W) / (H,W,1..4), tensor (C,H,W) / (H,W,C),
            or an already loaded `LoadedImage` (returned as is).
        name: how error messages call the image (default: the path or the type name).
        depth: bit depth decided from the prompt (`prompt_depth`) for integer data wider
            than 8 bits that carries no sBIT; None: the image's own largest value decides.
    Raises:
        InputError: unreadable, unsupported type or shape, floats outside [0, 1], NaN, or
            smaller than MIN_SIDE px per side (subclasses for format and size limits).
    """
    if isinstance(source, LoadedImage):
        return source
    what = name or (str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source).expanduser(), depth)
    if isinstance(source, Image.Image):
        raw = _pil_to_raw(source)
    elif isinstance(source, torch.Tensor):
        raw = _tensor_to_raw(source, what)
    elif isinstance(source, np.ndarray):
        raw = _Raw(source)
    else:
        raise InputError(f"unsupported image type {type(source).__name__} (use a path, PIL image, "
                         "numpy array or torch tensor)")
    return _finish(raw, what, depth)


def check_segment_side(image: LoadedImage, what: str) -> LoadedImage:
    """``image`` when both sides are at least MIN_SEGMENT_SIDE px (smaller prompts or queries give
    meaningless scores: the encoder's coarsest features are 32 px apart).

    Raises:
        InputError: an image side is below MIN_SEGMENT_SIDE.
    """
    h, w = image.rgb.shape[:2]
    if min(h, w) < MIN_SEGMENT_SIDE:
        raise InputError(f"{what}: image too small to segment ({w}x{h}); at least {MIN_SEGMENT_SIDE} pixels "
                         "per side")
    return image


def load_image(source: ImageLike, name: str | None = None, depth: int | None = None) -> np.ndarray:
    """Any supported image -> (H, W, 3) uint8 RGB array (`read_image(...).rgb`).

    Raises:
        InputError: as `read_image`.
    """
    return read_image(source, name, depth).rgb


def prompt_depth(prompts: Sequence[LoadedImage]) -> int | None:
    """The bit depth queries are read with: the largest depth among prompts whose depth was
    inferred from their values (wide integer data without sBIT); None when there is none."""
    inferred = [p.bits for p in prompts if p.inferred and p.bits]
    return max(inferred) if inferred else None


def to_model_tensor(rgb: np.ndarray | LoadedImage, size: int) -> torch.Tensor:
    """(H,W,3) uint8 -> (1,3,size,size) float32 in [0,1], bilinear with antialiasing."""
    if isinstance(rgb, LoadedImage):
        rgb = rgb.rgb
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        tensor = tensor.clamp_(0.0, 1.0)
    return tensor


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files (IMAGE_SUFFIXES, any case) directly in `folder`, sorted by name.

    Raises:
        InputError: not a folder, or no image in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a directory: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_mask(source: str | os.PathLike | np.ndarray, shape: tuple[int, int] | None = None,
              level: float = 0.0, what: str | None = None) -> np.ndarray:
    """A ground-truth mask file or array -> (H, W) bool.

    A pixel is anomalous when the largest of its colour channels exceeds `level` times the
    full scale of its bit depth (0.0: any non-zero value, the benchmark convention; 0.5: the
    brighter half). With `shape` (H, W) the mask is resized with nearest neighbour.

    Raises:
        InputError: unreadable or unsupported file (one line naming `what` or the path).
    """
    what = what or str(source)
    if isinstance(source, np.ndarray):
        raw = _Raw(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"mask not found: {path}")
        raw = _decode_raw(path, what, None)
    array = raw.array if raw.array.ndim == 3 else raw.array[:, :, None]
    colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        full = 1.0
    else:
        full = float(2 ** _choose_bits(raw, None)[0] - 1)
    mask = colour.max(axis=2).astype(np.float64) > level * full
    if shape is not None and mask.shape != tuple(shape):
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask
