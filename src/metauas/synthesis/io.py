"""Image discovery, loading and COCO instance masks for the pair generator.

Why a module of its own: every user-caused problem (missing folder, no images, a corrupt
file, a malformed COCO JSON) must surface as one clear `InputError`, and loading must be
cheap (photos are decoded at reduced scale where the JPEG codec allows it) because the
generator loads one or two images per pair.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from metauas.constants import IMAGE_SUFFIXES as _SUFFIXES
from metauas.errors import InputError
from metauas.io.images import pil_to_rgb

IMAGE_SUFFIXES = frozenset(_SUFFIXES) | {".gif"}  # training images are trusted files: GIF frames too
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class ImageRecord:
    """One image file with the package/source it came from (used for held-out splits)."""

    path: Path
    source: str
    kind: str  # "photos" | "objects" | "textures"
    license: str = ""


# ---------------------------------------------------------------------------- discovery
def list_images(folder: str | Path, *, what: str = "images") -> list[Path]:
    """All image files below `folder`, sorted (sorted order makes sampling reproducible).

    Raises:
        InputError: the folder does not exist, is not a folder, or holds no images.
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{what} folder does not exist: {root}")
    if not root.is_dir():
        raise InputError(f"{what} path is not a folder: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"no {what} found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


def _read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """manifest.csv rows keyed by resolved path (written by scripts/fetch_training_images.py)."""
    rows: dict[str, dict[str, str]] = {}
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise InputError(f"{path}: manifest needs a 'path' column")
            for row in reader:
                rows[str((path.parent / row["path"]).resolve())] = row
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from exc
    return rows


def discover(folder: str | Path, kind: str, manifest: dict[str, dict[str, str]] | None = None,
             ) -> list[ImageRecord]:
    """Records for every image of `folder`.

    The source of an image is taken from the manifest when it lists the file, otherwise from
    the first sub-folder below `folder` (layout `<kind>/<source>/<file>`), otherwise from the
    folder name itself.
    """
    root = Path(folder)
    records = []
    for p in list_images(root, what=kind):
        row = (manifest or {}).get(str(p.resolve()))
        if row is not None and row.get("source"):
            source, lic = row["source"], row.get("license", "")
        else:
            rel = p.relative_to(root).parts
            source, lic = (rel[0] if len(rel) > 1 else root.name), ""
        records.append(ImageRecord(p, source, kind, lic))
    return records


# ---------------------------------------------------------------------------- loading
def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
    except FileNotFoundError as exc:
        raise InputError(f"image file does not exist: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: not a valid image file ({exc})") from exc
    return img


def load_rgb(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode an image to HxWx3 uint8 RGB.

    `min_side`: the caller needs at least this many pixels on the short side, so JPEGs may be
    decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling; several times faster for big photos).
    Raises:
        InputError: the file cannot be decoded, or the image is empty or too small.
    """
    path = Path(path)
    img = _open(path)
    try:
        if min_side is not None and img.format == "JPEG":
            w, h = img.size
            factor = max(1, min(w, h) // max(1, min_side))
            if factor >= 2:
                img.draft("RGB", (w // factor, h // factor))
        arr = pil_to_rgb(img, str(path))  # the rules of metauas.io (EXIF, alpha on white, 16-bit)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot decode image {path}: file is corrupt or truncated ({exc})") from exc
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"image {path} is empty or too small ({arr.shape})")
    return np.ascontiguousarray(arr)


def load_rgba(path: str | Path) -> np.ndarray:
    """Decode an object cut-out to HxWx4 uint8; the alpha channel is required (it is the mask).

    Raises:
        InputError: the file cannot be decoded, has no alpha channel, or is fully transparent.
    """
    path = Path(path)
    img = _open(path)
    try:
        if img.mode in ("P", "LA", "L") or "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode != "RGBA":
            raise InputError(
                f"object image {path} has no alpha channel; object cut-outs must be PNGs with "
                "transparency (the alpha channel is the object mask)"
            )
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot decode image {path}: file is corrupt or truncated ({exc})") from exc
    if not (arr[..., 3] > 127).any():
        raise InputError(f"object image {path} is fully transparent")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------- COCO masks
@dataclass(frozen=True)
class Instance:
    """One annotated object of a photo (COCO `segmentation` kept in its original form)."""

    segmentation: object
    bbox: tuple[float, float, float, float]
    category: int
    height: int
    width: int

    def decode(self) -> np.ndarray:
        """Full-resolution HxW uint8 {0,1} mask."""
        return decode_segmentation(self.segmentation, self.height, self.width)


def _rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (6-bit chunks, +48 offset, delta after index 2).

    Format as described in the COCO API documentation (maskApi.c `rleFrString`); this is an
    independent implementation of that published format.
    """
    counts: list[int] = []
    pos = 0
    while pos < len(s):
        value, shift, more = 0, 0, True
        while more:
            c = ord(s[pos]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_segmentation(seg: object, height: int, width: int) -> np.ndarray:
    """COCO polygon list, uncompressed RLE or compressed RLE -> HxW uint8 {0,1}.

    Raises:
        InputError: neither a polygon list nor an RLE dict.
    """
    if isinstance(seg, list):
        mask = np.zeros((height, width), np.uint8)
        polys = []
        for poly in seg:
            pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            if len(pts) >= 3:
                polys.append(np.round(pts).astype(np.int32))
        if polys:
            cv2.fillPoly(mask, polys, 1)
        return mask
    if isinstance(seg, dict) and "counts" in seg:
        counts = seg["counts"]
        h, w = seg.get("size", (height, width))
        if isinstance(counts, str):
            counts = _rle_counts_from_string(counts)
        flat = np.zeros(int(h) * int(w), np.uint8)
        pos, val = 0, 0
        for c in counts:
            c = int(c)
            if val:
                flat[pos:pos + c] = 1
            pos += c
            val ^= 1
        # COCO RLE runs over the image in column-major order
        return flat.reshape(int(w), int(h)).T.copy()
    raise InputError("unsupported COCO segmentation (expected polygon list or RLE dict)")


def load_coco_instances(json_path: str | Path, images_dir: str | Path,
                        min_area_frac: float = 0.002, max_area_frac: float = 0.5,
                        ) -> dict[str, list[Instance]]:
    """Map resolved image path -> usable instances from a COCO-format instances JSON.

    Raises InputError when the file is not JSON, lacks `images`/`annotations`, an annotation
    misses `image_id`/`segmentation`, or none of its images exist under `images_dir`.
    Raises:
        InputError: the file is missing, unreadable or not a COCO instances file, an image or
            annotation entry is malformed, or none of its images exist under `images_dir`.
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    try:
        data = json.loads(json_path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"mask file does not exist: {json_path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read COCO mask file {json_path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise InputError(
            f"{json_path} is not a COCO instances file: it needs top-level 'images' and "
            "'annotations' lists"
        )
    images: dict[int, tuple[Path, int, int]] = {}
    for i, im in enumerate(data["images"]):
        try:
            images[int(im["id"])] = (images_dir / str(im["file_name"]), int(im["height"]),
                                     int(im["width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{json_path}: images[{i}] needs 'id', 'file_name', 'height', 'width'") from exc
    out: dict[str, list[Instance]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "segmentation" not in ann:
            raise InputError(f"{json_path}: annotations[{i}] needs 'image_id' and 'segmentation'")
        if ann.get("iscrowd", 0):
            continue
        entry = images.get(int(ann["image_id"]))
        if entry is None:
            raise InputError(f"{json_path}: annotations[{i}] refers to unknown image_id "
                             f"{ann['image_id']}")
        path, h, w = entry
        area = float(ann.get("area", 0.0)) or 0.0
        if area and not (min_area_frac <= area / float(h * w) <= max_area_frac):
            continue
        bbox = tuple(float(v) for v in ann.get("bbox", (0, 0, w, h)))
        if len(bbox) != 4:
            raise InputError(f"{json_path}: annotations[{i}] bbox must have 4 numbers")
        out.setdefault(str(path.resolve()), []).append(
            Instance(ann["segmentation"], bbox, int(ann.get("category_id", 0)), h, w))
    existing = {k: v for k, v in out.items() if Path(k).is_file()}
    if out and not existing:
        raise InputError(f"none of the images named in {json_path} exist under {images_dir}")
    return existing


# ---------------------------------------------------------------------------- sources
def _hash_unit(text: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class ImageSources:
    """The real images the generator draws from.

    photos: backgrounds / prompt images (required);
    objects: RGBA cut-outs pasted for object-level changes (optional);
    textures: foreign content for local-region changes and texture backgrounds (optional);
    instances: COCO instance masks of photos, keyed by resolved photo path (optional).
    """

    photos: list[ImageRecord]
    objects: list[ImageRecord] = field(default_factory=list)
    textures: list[ImageRecord] = field(default_factory=list)
    instances: dict[str, list[Instance]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.photos:
            raise InputError("no photos: the generator needs at least one background image")

    @classmethod
    def from_dirs(cls, photos: str | Path, objects: str | Path | None = None,
                  textures: str | Path | None = None, masks: str | Path | None = None,
                  manifest: str | Path | None = None) -> "ImageSources":
        """Scan folders. A `manifest.csv` next to the folders (or given) supplies sources.

        Raises:
            InputError: a given manifest does not exist (and `list_images` errors).
        """
        photos = Path(photos)
        rows: dict[str, dict[str, str]] = {}
        candidates = [Path(manifest)] if manifest else [photos.parent / MANIFEST_NAME,
                                                        photos / MANIFEST_NAME]
        for cand in candidates:
            if cand.is_file():
                rows = _read_manifest(cand)
                break
            if manifest:
                raise InputError(f"manifest does not exist: {cand}")
        instances = load_coco_instances(masks, photos) if masks else {}
        return cls(
            photos=discover(photos, "photos", rows),
            objects=discover(objects, "objects", rows) if objects else [],
            textures=discover(textures, "textures", rows) if textures else [],
            instances=instances,
        )

    # ------------------------------------------------------------------ info
    def sources(self) -> dict[str, dict[str, int]]:
        """{kind: {source: count}} — for logs and reports."""
        out: dict[str, dict[str, int]] = {}
        for kind, recs in (("photos", self.photos), ("objects", self.objects),
                           ("textures", self.textures)):
            counts: dict[str, int] = {}
            for r in recs:
                counts[r.source] = counts.get(r.source, 0) + 1
            out[kind] = counts
        return out

    def __len__(self) -> int:
        return len(self.photos) + len(self.objects) + len(self.textures)

    # ------------------------------------------------------------------ splits
    def subset(self, keep: Iterable[str]) -> "ImageSources":
        """Only the images whose source is in `keep`.

        Raises:
            InputError: no photo comes from the kept sources.
        """
        keep = set(keep)
        photos = [r for r in self.photos if r.source in keep]
        if not photos:
            raise InputError(f"no photos from sources {sorted(keep)}")
        return replace(self, photos=photos,
                       objects=[r for r in self.objects if r.source in keep],
                       textures=[r for r in self.textures if r.source in keep],
                       instances={k: v for k, v in self.instances.items()
                                  if any(str(r.path.resolve()) == k for r in photos)})

    def split_by_source(self, val_sources: Sequence[str] | None = None,
                        val_fraction: float = 0.15, seed: int = 0,
                        ) -> tuple["ImageSources", "ImageSources"]:
        """Disjoint (train, val) sets for a held-out validation that uses unseen sources.

        With `val_sources`, those sources (of any kind) go to validation. Otherwise, per kind,
        whole sources are drawn (deterministically from `seed`) until about `val_fraction` of
        that kind's images are held out; a kind with a single source is split by file instead
        (hash of the file name), so no image is ever in both sets.
        Raises:
            InputError: `val_fraction` outside (0, 1), or a split that leaves one side empty.
        """
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")

        def split_kind(recs: list[ImageRecord]) -> tuple[list[ImageRecord], list[ImageRecord]]:
            if not recs:
                return [], []
            counts: dict[str, int] = {}
            for r in recs:
                counts[r.source] = counts.get(r.source, 0) + 1
            if val_sources is not None:
                held = set(val_sources)
            elif len(counts) == 1:
                val = [r for r in recs if _hash_unit(r.path.name, seed) < val_fraction]
                if not val and len(recs) > 1:
                    val = recs[-1:]
                ids = {id(r) for r in val}
                return [r for r in recs if id(r) not in ids], val
            else:
                order = sorted(counts, key=lambda s: _hash_unit(s, seed))
                held, total = set(), 0
                target = val_fraction * len(recs)
                for s in order:
                    if total >= target:
                        break
                    if total + counts[s] > 2 * target and total > 0:
                        continue  # do not let one huge source swallow the training set
                    if len(held) + 1 >= len(counts):
                        break  # always leave at least one source for training
                    held.add(s)
                    total += counts[s]
            return [r for r in recs if r.source not in held], [r for r in recs if r.source in held]

        p_tr, p_va = split_kind(self.photos)
        o_tr, o_va = split_kind(self.objects)
        t_tr, t_va = split_kind(self.textures)
        if not p_tr or not p_va:
            raise InputError("split_by_source left no photos on one side; give val_sources "
                             "explicitly or add photo sources")

        def inst(recs: list[ImageRecord]) -> dict[str, list[Instance]]:
            keys = {str(r.path.resolve()) for r in recs}
            return {k: v for k, v in self.instances.items() if k in keys}

        return (ImageSources(p_tr, o_tr, t_tr, inst(p_tr)),
                ImageSources(p_va, o_va, t_va, inst(p_va)))
