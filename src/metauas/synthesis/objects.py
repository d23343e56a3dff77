"""Object-level changes: an object disappears, appears or is exchanged.

Why: MetaUAS (Gao, NeurIPS 2024) gets its "semantic" change pairs from object removal by
inpainting of instance-annotated images, the reverse (appearance) and object exchange. Here
objects come from COCO-format instance masks of the photos or from RGBA cut-outs (sprites,
icons, clip art) pasted onto photos. Removal uses a pluggable `Inpainter`; the built-in one
is OpenCV's Telea (fast marching, Telea 2004) or Navier-Stokes (Bertalmio et al. 2001)
method, and a learned inpainter (e.g. a LaMa-class model) can be passed in where available.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from metauas.errors import InputError

ALPHA_CUTOFF = 26  # alpha below ~10 % is dropped, so the mask covers every pixel we change


@runtime_checkable
class Inpainter(Protocol):
    """Fills the masked pixels of an image.

    image: HxWx3 uint8 RGB; mask: HxW uint8, nonzero = fill. Returns HxWx3 uint8. Pixels
    outside the mask must be returned unchanged (the generator enforces it anyway).
    Must be deterministic for bit-identical pairs from the same seed.
    """

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class OpenCVInpainter:
    """cv2.inpaint (Telea or Navier-Stokes), run only on the mask's bounding box for speed.

    Masks larger than `max_pixels` are inpainted at a reduced scale and the result upsampled
    inside the mask: smooth fills look the same and the cost stays bounded.
    """

    method: str = "telea"
    radius: float = 5.0
    max_pixels: int = 6000

    def __post_init__(self) -> None:
        if self.method not in ("telea", "ns"):
            raise InputError(f"unknown OpenCV inpainting method {self.method!r} (telea or ns)")

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = (mask > 0).astype(np.uint8)
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            return image.copy()
        pad = int(self.radius) + 3
        h, w = m.shape
        y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
        sub, sub_m = image[y0:y1, x0:x1], m[y0:y1, x0:x1]
        flag = cv2.INPAINT_TELEA if self.method == "telea" else cv2.INPAINT_NS
        area = int(sub_m.sum())
        factor = 1
        while area / (factor * factor) > self.max_pixels:
            factor *= 2
        if factor == 1:
            filled = cv2.inpaint(sub, sub_m, self.radius, flag)
        else:
            sh, sw = sub.shape[:2]
            small = cv2.resize(sub, (max(1, sw // factor), max(1, sh // factor)),
                               interpolation=cv2.INTER_AREA)
            small_m = cv2.resize(sub_m, (small.shape[1], small.shape[0]),
                                 interpolation=cv2.INTER_AREA)
            small_m = (small_m > 0).astype(np.uint8)
            small = cv2.inpaint(small, small_m, max(1.0, self.radius / factor), flag)
            filled = cv2.resize(small, (sw, sh), interpolation=cv2.INTER_LINEAR)
        out = image.copy()
        region = out[y0:y1, x0:x1]
        region[sub_m > 0] = filled[sub_m > 0]
        return out


def get_inpainter(spec: str | Inpainter | None) -> Inpainter:
    """"telea" / "ns" / None -> OpenCVInpainter; "package.module:factory" -> factory().

    The plug-in form lets a user with a learned inpainter installed use it without code
    changes here (the factory must return an `Inpainter`).
    Raises:
        InputError: an unknown name, a factory that cannot be imported or does not return a
            callable, or a spec that is not callable.
    """
    if spec is None:
        return OpenCVInpainter()
    if not isinstance(spec, str):
        if not callable(spec):
            raise InputError("inpainter must be callable(image, mask) -> image")
        return spec
    if spec in ("telea", "ns"):
        return OpenCVInpainter(method=spec)
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory: Callable[[], Inpainter] = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise InputError(f"cannot load inpainter {spec!r}: {exc}") from exc
        inp = factory()
        if not callable(inp):
            raise InputError(f"inpainter factory {spec!r} did not return a callable")
        return inp
    raise InputError(f"unknown inpainter {spec!r}: use telea, ns or module:factory")


# ------------------------------------------------------------------------------ sprites
def sprite_from_instance(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """RGBA cut-out of an annotated instance (None when the mask is empty)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.dstack([image[y0:y1, x0:x1], (mask[y0:y1, x0:x1] > 0).astype(np.uint8) * 255])
    return np.ascontiguousarray(rgba)


def prepare_sprite(rgba: np.ndarray, target_side: int, rng: np.random.Generator,
                   max_rotation: float = 25.0, color_jitter: float = 0.15) -> np.ndarray:
    """Resize (longest side = target_side), rotate, mirror and recolour a cut-out.

    Faint alpha (< ~10 %) is zeroed, so `alpha > 0` is exactly the set of changed pixels.
    """
    h, w = rgba.shape[:2]
    scale = target_side / float(max(h, w))
    nw, nh = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    # premultiply so that transparent pixels' colours do not bleed into the edge
    rgb = rgba[..., :3].astype(np.float32) * (rgba[..., 3:4].astype(np.float32) / 255.0)
    a = rgba[..., 3].astype(np.float32)
    rgb = cv2.resize(rgb, (nw, nh), interpolation=interp)
    a = cv2.resize(a, (nw, nh), interpolation=interp)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    flip = bool(rng.random() < 0.5)
    gains = (1.0 + color_jitter * (2 * rng.random(3) - 1)).astype(np.float32)
    if angle != 0.0:
        diag = int(np.ceil(np.hypot(nw, nh))) + 2
        mat = cv2.getRotationMatrix2D((nw / 2.0, nh / 2.0), angle, 1.0)
        mat[:, 2] += ((diag - nw) / 2.0, (diag - nh) / 2.0)
        rgb = cv2.warpAffine(rgb, mat, (diag, diag), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        a = cv2.warpAffine(a, mat, (diag, diag), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if flip:
        rgb, a = rgb[:, ::-1], a[:, ::-1]
    safe = np.maximum(a, 1e-3)[..., None] / 255.0
    rgb = np.clip(rgb / safe * gains, 0, 255)
    a = np.where(a < ALPHA_CUTOFF, 0, np.clip(np.round(a), 0, 255))
    out = np.dstack([np.round(rgb), a]).astype(np.uint8)
    ys, xs = np.nonzero(out[..., 3])
    if len(ys) == 0:
        return out
    return np.ascontiguousarray(out[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def paste(canvas: np.ndarray, sprite: np.ndarray, cx: float, cy: float,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-composite `sprite` centred at (cx, cy). Returns (image, mask {0,1}).

    The mask is exactly the set of pixels with alpha > 0 that land inside the canvas, so no
    pixel outside it changes.
    """
    H, W = canvas.shape[:2]
    h, w = sprite.shape[:2]
    x0, y0 = int(round(cx - w / 2.0)), int(round(cy - h / 2.0))
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    dx1, dy1 = min(W, x0 + w), min(H, y0 + h)
    out = canvas.copy()
    mask = np.zeros((H, W), np.uint8)
    if dx1 <= dx0 or dy1 <= dy0:
        return out, mask
    sp = sprite[sy0:sy0 + (dy1 - dy0), sx0:sx0 + (dx1 - dx0)]
    alpha = sp[..., 3:4].astype(np.float32) / 255.0
    region = out[dy0:dy1, dx0:dx1].astype(np.float32)
    blended = np.round(sp[..., :3].astype(np.float32) * alpha + region * (1.0 - alpha))
    inside = sp[..., 3] > 0
    reg = out[dy0:dy1, dx0:dx1]
    reg[inside] = np.clip(blended, 0, 255).astype(np.uint8)[inside]
    mask[dy0:dy1, dx0:dx1] = inside.astype(np.uint8)
    return out, mask


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a disc (inpainting needs a margin around the object's edge)."""
    if radius <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, k)
