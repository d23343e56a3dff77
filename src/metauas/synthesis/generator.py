"""Seeded generator of synthetic (prompt, query, change-mask) pairs.

Why: MetaUAS (Gao, NeurIPS 2024, arXiv 2505.09265) learns anomaly segmentation purely as
change segmentation on synthetic pairs: object-level changes (disappearance, appearance,
exchange) and local-region changes, plus unchanged pairs, with the prompt misaligned. This
module builds those pairs from real images, deterministically: all randomness comes from one
`numpy.random.Generator`, so a seed gives bit-identical pairs on any machine / worker count.

Construction (so that the mask is exactly aligned with the query):
  1. a square crop of a real image is resized to an enlarged canvas (size · (1 + 2·margin));
  2. the change is made on the canvas inside the central size×size window -> canvas prompt,
     canvas query, canvas mask (pixels outside the mask are identical in both);
  3. query and mask = central window; prompt = affine resampling of the canvas prompt
     (rotation / shift / scale / mirror) followed by a global photometric jitter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from metauas.errors import InputError, MetaUASError
from metauas.synthesis import defects, geometry, local, nuisance, objects
from metauas.synthesis.defects import DEFECT_TYPES
from metauas.synthesis.io import ImageRecord, ImageSources, Instance, load_rgb, load_rgba
from metauas.synthesis.perlin import perlin_mask

LOCAL_TYPES = ("local_texture", "local_patch", "local_color")
OBJECT_TYPES = ("object_disappear", "object_appear", "object_exchange")
CHANGE_TYPES = LOCAL_TYPES + OBJECT_TYPES + DEFECT_TYPES  # DEFECT_TYPES: see defects.py
NO_CHANGE = "none"
ALL_TYPES = CHANGE_TYPES + (NO_CHANGE,)


OPT_IN_TYPES = ("defect_finish",)  # newer types: off by default, so seeded pair sets made before stay identical


def _default_weights() -> dict[str, float]:
    return {t: 1.0 for t in CHANGE_TYPES if t not in OPT_IN_TYPES}


@dataclass
class SynthesisConfig:
    """All knobs of the pair generator (defaults follow the MetaUAS recipe where it gives one)."""

    size: int = 256
    no_change_rate: float = 0.1  # share of pairs with an empty mask
    change_weights: dict[str, float] = field(default_factory=_default_weights)
    # prompt misalignment (applied to the prompt only; the mask follows the query)
    misalign_prob: float = 0.8
    max_rotation: float = 30.0  # degrees, uniform in ±max_rotation
    max_translation: float = 0.05  # fraction of size, uniform in ±
    scale_range: tuple[float, float] = (0.95, 1.05)
    prompt_flip_prob: float = 0.0  # mirror the prompt only (hard; off by default)
    pair_flip_prob: float = 0.5  # mirror the whole pair (augmentation, always valid)
    photometric_jitter: float = 0.1  # 0 disables; see geometry.sample_photometric
    context_margin: float = 0.15  # canvas margin around the query window, fraction of size
    crop_scale: tuple[float, float] = (0.3, 1.0)  # canvas crop side / short image side
    texture_background_prob: float = 0.15  # use a texture image as the scene
    # local-region changes
    texture_blend_range: tuple[float, float] = (0.0, 0.6)  # beta of DRAEM blending
    perlin_scale_exp: tuple[int, int] = (0, 4)
    perlin_threshold: float = 0.5
    local_area_range: tuple[float, float] = (0.005, 0.3)
    min_visible_change: float = 6.0  # mean |Δ| (grey levels) a local change must reach
    # object-level changes
    object_size_range: tuple[float, float] = (0.15, 0.5)  # longest object side / size
    object_rotation: float = 25.0
    instance_prob: float = 0.7  # prefer annotated instances when the photo has some
    inpainter: str = "telea"  # telea | ns | module:factory
    inpaint_radius: float = 5.0
    inpaint_dilation: int = 4  # pixels added around a removed object
    sprite_inpaint_prob: float = 0.5  # removal of a pasted object by inpainting vs. clean bg
    min_mask_fraction: float = 0.002  # smaller changes are redrawn
    # how images are drawn: "image" (uniform over files), "sqrt" (a source with n files gets
    # weight sqrt(n), so 3000 emoji do not drown 200 photo cut-outs), "source" (uniform)
    source_weighting: str = "sqrt"
    # comparison training: nuisances that are NOT changes (see nuisance.py)
    nuisance_prob: float = 0.0  # per image (prompt, query independently): JPEG/noise/blur/gain
    identical_prob: float = 0.0  # share of no-change pairs returned with prompt == query exactly
    grayscale_prob: float = 0.0  # both images of the pair converted to grey (3 equal channels)
    object_scene_prob: float = 0.0  # scene = one centred cut-out on a plain background
    # texture scenes only: share of pairs whose prompt is ANOTHER crop of the same texture image
    # (same scale, another place), as two instances of one surface are in inspection: what is
    # normal must be judged by appearance, not by position (never with identical pairs)
    texture_recrop_prob: float = 0.0
    return_aligned: bool = False  # also return the un-warped prompt (tests, previews)

    def validate(self) -> "SynthesisConfig":
        """Raise InputError for values a user could pass that make no sense.

        Raises:
            InputError: a value outside its range, unknown change types, negative change weights,
                or all weights 0 while pairs with a change are requested.
        """
        def unit(name: str, v: float) -> None:
            if not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {v}")

        if not isinstance(self.size, int) or self.size < 32:
            raise InputError(f"size must be an integer >= 32, got {self.size}")
        for name in ("no_change_rate", "misalign_prob", "prompt_flip_prob", "pair_flip_prob",
                     "texture_background_prob", "instance_prob", "sprite_inpaint_prob",
                     "nuisance_prob", "identical_prob", "grayscale_prob", "object_scene_prob",
                     "texture_recrop_prob"):
            unit(name, getattr(self, name))
        if not 0.0 <= self.max_rotation <= 180.0:
            raise InputError(f"max_rotation must be in [0, 180] degrees, got {self.max_rotation}")
        if not 0.0 <= self.max_translation <= 0.5:
            raise InputError(f"max_translation must be in [0, 0.5], got {self.max_translation}")
        lo, hi = self.scale_range
        if not 0.2 <= lo <= hi <= 5.0:
            raise InputError(f"scale_range must satisfy 0.2 <= lo <= hi <= 5, got {self.scale_range}")
        if self.photometric_jitter < 0 or self.photometric_jitter > 0.9:
            raise InputError(f"photometric_jitter must be in [0, 0.9], got {self.photometric_jitter}")
        if not 0.0 <= self.context_margin <= 1.0:
            raise InputError(f"context_margin must be in [0, 1], got {self.context_margin}")
        a, b = self.crop_scale
        if not 0.0 < a <= b <= 1.0:
            raise InputError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.source_weighting not in ("image", "sqrt", "source"):
            raise InputError(f"source_weighting must be image, sqrt or source, got {self.source_weighting!r}")
        unknown = set(self.change_weights) - set(CHANGE_TYPES)
        if unknown:
            raise InputError(f"unknown change types {sorted(unknown)}; known: {', '.join(CHANGE_TYPES)}")
        if any(w < 0 for w in self.change_weights.values()):
            raise InputError("change weights must be >= 0")
        if self.no_change_rate < 1.0 and not any(w > 0 for w in self.change_weights.values()):
            raise InputError("all change weights are 0 but no_change_rate < 1")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthesisConfig":
        """Build from a (YAML/JSON) dict; unknown keys are an error, lists become tuples.

        Raises:
            InputError: unknown keys.
        """
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise InputError(f"unknown synthesis options: {', '.join(sorted(bad))}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw).validate()

    def to_dict(self) -> dict[str, Any]:
        """All options as a JSON-ready dict (written to config.json)."""
        return asdict(self)


@dataclass
class ChangePair:
    """One training pair. prompt/query: HxWx3 uint8 RGB; mask: HxW uint8 {0,1} on the query."""

    prompt: np.ndarray
    query: np.ndarray
    mask: np.ndarray
    change_type: str
    meta: dict[str, Any] = field(default_factory=dict)
    prompt_aligned: np.ndarray | None = None  # query-registered prompt (return_aligned=True)


def as_rng(seed_or_rng: int | np.random.Generator | np.random.SeedSequence | None
           ) -> np.random.Generator:
    """An independent numpy Generator (never the global RNG).

    Raises:
        InputError: None instead of a seed or generator.
    """
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if seed_or_rng is None:
        raise InputError("a seed (int) or numpy Generator is required for reproducible pairs")
    return np.random.default_rng(seed_or_rng)


class _Retry(Exception):
    """Internal: the drawn configuration produced no usable change; draw again."""


class PairGenerator:
    """Makes `ChangePair`s from `ImageSources` according to a `SynthesisConfig`.

    Picklable (holds only paths and config), so it can live in DataLoader workers.
    """

    def __init__(self, sources: ImageSources, config: SynthesisConfig | None = None,
                 inpainter: objects.Inpainter | str | None = None) -> None:
        self.sources = sources
        self.config = (config or SynthesisConfig()).validate()
        spec = inpainter if inpainter is not None else self.config.inpainter
        if isinstance(spec, str) and spec in ("telea", "ns"):
            self.inpainter: objects.Inpainter = objects.OpenCVInpainter(
                method=spec, radius=self.config.inpaint_radius)
        else:
            self.inpainter = objects.get_inpainter(spec)
        self._cdfs: dict[int, np.ndarray] = {}
        self._instance_photos = [r for r in sources.photos
                                 if str(r.path.resolve()) in sources.instances]
        self._has_objects = bool(sources.objects) or bool(self._instance_photos)
        self.available_types = tuple(
            t for t in CHANGE_TYPES
            if self.config.change_weights.get(t, 0.0) > 0
            and (t in LOCAL_TYPES or t in DEFECT_TYPES or self._has_objects))
        if not self.available_types and self.config.no_change_rate < 1.0:
            raise InputError(
                "none of the requested change types can be made: object changes need an objects "
                "folder (RGBA cut-outs) or COCO instance masks")
        w = np.array([self.config.change_weights[t] for t in self.available_types], dtype=np.float64)
        self._type_p = w / w.sum() if len(w) else w

    # ------------------------------------------------------------------ public
    def generate(self, seed_or_rng: int | np.random.Generator | np.random.SeedSequence,
                 change_type: str | None = None, max_tries: int = 8) -> ChangePair:
        """One pair. `change_type` forces a type (one of ALL_TYPES); otherwise it is drawn.

        Raises:
            InputError: an unknown `change_type`, or an object change without object sources.
            MetaUASError: no usable pair after `max_tries` attempts.
        """
        rng = as_rng(seed_or_rng)
        if change_type is not None and change_type not in ALL_TYPES:
            raise InputError(f"unknown change type {change_type!r}; known: {', '.join(ALL_TYPES)}")
        if change_type in OBJECT_TYPES and not self._has_objects:
            raise InputError(f"{change_type} needs object cut-outs or COCO instance masks")
        last: Exception | None = None
        for _ in range(max_tries):
            ctype = change_type or self._draw_type(rng)
            try:
                return self._make(rng, ctype)
            except _Retry as exc:
                last = exc
        raise MetaUASError(f"could not synthesise a usable {change_type or 'pair'} in {max_tries} "
                           f"tries ({last}); are the images large and varied enough?")

    # ------------------------------------------------------------------ internals
    def _draw_type(self, rng: np.random.Generator) -> str:
        u = rng.random()
        if u < self.config.no_change_rate or not self.available_types:
            return NO_CHANGE
        return str(self.available_types[int(rng.choice(len(self.available_types), p=self._type_p))])

    @property
    def canvas_size(self) -> int:
        """Side in px of the canvas pairs are synthesised on: the output size plus the context margin
        on each side (cropped away after misalignment).
        """
        s = self.config.size
        return s + 2 * int(round(self.config.context_margin * s))

    def _load_canvas(self, rec: ImageRecord, rng: np.random.Generator, out: int,
                     exact: bool = False) -> tuple[np.ndarray, tuple]:
        """Random square crop of `rec` resized to out x out, plus the crop box (x, y, side, W, H)."""
        lo, hi = self.config.crop_scale
        frac = float(rng.uniform(lo, hi))
        u = rng.random(2)
        # exact: full-resolution decode, needed when COCO masks refer to original pixels
        img = load_rgb(rec.path, min_side=None if exact else int(math.ceil(out / frac)))
        h, w = img.shape[:2]
        return _square_crop(img, max(2, int(round(frac * min(h, w)))), u, out)

    def _recrop(self, rng: np.random.Generator, rec: ImageRecord, box: tuple,
                prompt_c: np.ndarray) -> tuple[np.ndarray, bool]:
        """Another crop of `rec` (same side as `box`) that looks like the same surface, else `prompt_c`.

        A texture image is often not stationary (a wall above a floor, one emblem): a crop of
        another place is kept only when `local.same_surface` finds its local statistics close to
        the original crop's (3 tries, one decode); otherwise the pair keeps its same-place prompt.
        """
        side, w, h = box[2], box[3], box[4]
        out = prompt_c.shape[0]
        img = load_rgb(rec.path, min_side=int(math.ceil(out / (side / min(w, h)))))
        for _ in range(3):
            other = _square_crop(img, side, rng.random(2), out)[0]
            if local.same_surface(prompt_c, other):
                return other, True
        return prompt_c, False

    def _pick(self, rng: np.random.Generator, recs: list[ImageRecord]) -> ImageRecord:
        """Draw one record; per-source weights follow `config.source_weighting`."""
        key = id(recs)
        cdf = self._cdfs.get(key)
        if cdf is None:
            cdf = self._cdfs[key] = _source_cdf(recs, self.config.source_weighting)
        idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return recs[min(idx, len(recs) - 1)]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cdfs"] = {}  # keyed by id(): rebuilt in the receiving process
        return state

    def _make(self, rng: np.random.Generator, ctype: str) -> ChangePair:
        cfg = self.config
        S, C = cfg.size, self.canvas_size
        m = (C - S) // 2
        meta: dict[str, Any] = {"change_type": ctype}

        use_instance = (ctype in OBJECT_TYPES and self._instance_photos
                        and (not self.sources.objects or rng.random() < cfg.instance_prob))
        obj_c: np.ndarray | None = None  # object alpha on the canvas (object scenes only)
        plate: np.ndarray | None = None  # the object-free plain background
        if (not use_instance and cfg.object_scene_prob > 0 and self.sources.objects
                and rng.random() < cfg.object_scene_prob):
            canvas, obj_c, plate = self._object_scene(rng, C, meta)
            texture_bg = False
        else:
            texture_bg = (not use_instance and bool(self.sources.textures)
                          and rng.random() < cfg.texture_background_prob)
        meta["object_scene"] = obj_c is not None
        if obj_c is None:
            if use_instance:
                rec = self._pick(rng, self._instance_photos)
            elif texture_bg:
                rec = self._pick(rng, self.sources.textures)
            else:
                rec = self._pick(rng, self.sources.photos)
            canvas, box = self._load_canvas(rec, rng, C, exact=bool(use_instance))
            meta.update(background=str(rec.path), background_source=rec.source)

        if ctype == NO_CHANGE:
            prompt_c, query_c, mask_c = canvas, canvas, np.zeros((C, C), np.uint8)
        elif ctype in LOCAL_TYPES:
            prompt_c, query_c, mask_c = self._local(rng, ctype, canvas, m, meta)
        elif ctype in DEFECT_TYPES:
            prompt_c, query_c, mask_c = self._defect(rng, ctype, canvas, m, meta, obj_c, plate)
        elif use_instance:
            prompt_c, query_c, mask_c = self._instance_change(rng, ctype, canvas, rec, box, m, meta)
        else:
            prompt_c, query_c, mask_c = self._sprite_change(rng, ctype, canvas, m, meta)

        mask = mask_c[m:m + S, m:m + S]
        if ctype != NO_CHANGE and mask.mean() < cfg.min_mask_fraction:
            raise _Retry(f"{ctype}: change too small inside the query window")

        # whole-pair mirror (augmentation), then prompt-only misalignment and jitter
        flip_pair = rng.random() < cfg.pair_flip_prob
        vflip_pair = texture_bg and rng.random() < 0.5
        mis = geometry.sample_misalignment(rng, S, cfg.max_rotation, cfg.max_translation,
                                           cfg.scale_range, cfg.misalign_prob, cfg.prompt_flip_prob)
        photo = geometry.sample_photometric(rng, cfg.photometric_jitter)
        identical = (ctype == NO_CHANGE and cfg.identical_prob > 0
                     and rng.random() < cfg.identical_prob)
        if identical:  # exactly equal pair: no misalignment, no jitter, no nuisance
            mis, photo = geometry.Misalignment(), geometry.Photometric()
        recrop = (texture_bg and not identical and cfg.texture_recrop_prob > 0
                  and rng.random() < cfg.texture_recrop_prob)
        if recrop:  # the prompt: another place of the same surface, at the same scale
            prompt_c, recrop = self._recrop(rng, rec, box, prompt_c)
        if flip_pair:
            prompt_c, query_c, mask_c = prompt_c[:, ::-1], query_c[:, ::-1], mask_c[:, ::-1]
        if vflip_pair:
            prompt_c, query_c, mask_c = prompt_c[::-1], query_c[::-1], mask_c[::-1]
        prompt_c = np.ascontiguousarray(prompt_c)
        prompt = geometry.apply_photometric(geometry.warp_prompt(prompt_c, mis, S), photo)
        query = np.ascontiguousarray(query_c[m:m + S, m:m + S])
        mask = np.ascontiguousarray(mask_c[m:m + S, m:m + S]).astype(np.uint8)
        aligned = prompt_c[m:m + S, m:m + S].copy() if cfg.return_aligned and not recrop else None
        prompt, query, aligned, applied, gray = self._nuisances(rng, prompt, query, aligned, identical)
        meta.update(identical=bool(identical), nuisance=applied, grayscale=bool(gray),
                    prompt_recrop=bool(recrop))
        meta.update(
            pair_hflip=bool(flip_pair), pair_vflip=bool(vflip_pair),
            misalignment=asdict(mis), photometric=asdict(photo),
            prompt_to_query=geometry.prompt_to_query_matrix(mis, S, C).tolist(),
        )
        return ChangePair(prompt=prompt, query=query, mask=mask, change_type=ctype, meta=meta,
                          prompt_aligned=aligned)

    def _nuisances(self, rng: np.random.Generator, prompt: np.ndarray, query: np.ndarray,
                   aligned: np.ndarray | None, identical: bool) -> tuple:
        """Nuisances (per image, never for identical pairs), then grey for the whole pair.

        Returns (prompt, query, aligned, applied {"prompt", "query"}, grey flag).
        """
        cfg = self.config
        applied: dict[str, Any] = {"prompt": None, "query": None}
        if cfg.nuisance_prob > 0 and not identical:
            if rng.random() < cfg.nuisance_prob:
                prompt, applied["prompt"] = nuisance.apply_nuisance(prompt, rng)
            if rng.random() < cfg.nuisance_prob:
                query, applied["query"] = nuisance.apply_nuisance(query, rng)
        gray = cfg.grayscale_prob > 0 and rng.random() < cfg.grayscale_prob
        if gray:
            prompt, query = nuisance.to_gray3(prompt), nuisance.to_gray3(query)
            aligned = nuisance.to_gray3(aligned) if aligned is not None else None
        return prompt, query, aligned, applied, gray

    # -------------------------------------------------------------- local changes
    def _local(self, rng: np.random.Generator, ctype: str, canvas: np.ndarray, m: int,
               meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        S, C = cfg.size, canvas.shape[0]
        mask_q = perlin_mask((S, S), rng, cfg.perlin_scale_exp, cfg.perlin_threshold,
                             cfg.local_area_range)
        mask_c = np.zeros((C, C), np.uint8)
        mask_c[m:m + S, m:m + S] = mask_q
        if ctype == "local_texture":
            pool = self.sources.textures or self.sources.photos
            rec = self._pick(rng, pool)
            foreign = load_rgb(rec.path, min_side=C)
            changed = local.texture_change(canvas, foreign, rng, cfg.texture_blend_range)
            meta.update(foreign=str(rec.path), foreign_source=rec.source)
        elif ctype == "local_patch":
            changed = local.patch_change(canvas, rng)
        else:
            changed = local.color_change(canvas, mask_c, rng)
        query_c = local.composite(canvas, changed, mask_c)
        if ctype != "local_color" and local.mean_change(canvas, query_c, mask_c) < cfg.min_visible_change:
            # the foreign content looks like the original here: make it a colour change instead
            changed = local.color_change(canvas, mask_c, rng)
            query_c = local.composite(canvas, changed, mask_c)
            meta["fallback"] = "local_color"
        return canvas, query_c, mask_c

    # -------------------------------------------------------------- defects, object scenes
    def _foreign(self, rng: np.random.Generator):
        """A callable side -> (side, side, 3) uint8 random crop of a texture (or photo)."""
        def get(side: int) -> np.ndarray:
            pool = self.sources.textures or self.sources.photos
            rec = self._pick(rng, pool)
            return local.random_resized_crop(load_rgb(rec.path, min_side=side), side, rng)
        return get

    def _object_scene(self, rng: np.random.Generator, C: int, meta: dict[str, Any],
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One cut-out (40-80 % of the window side) centred on a plain background.

        Returns (canvas (C, C, 3) uint8, object mask (C, C) {0,1}, plain background plate).
        """
        S = self.config.size
        plate = nuisance.plain_background(rng, C)
        side = max(8, int(round(float(rng.uniform(0.4, 0.8)) * S)))
        rec = self._pick(rng, self.sources.objects)
        sprite = objects.prepare_sprite(load_rgba(rec.path), side, rng, self.config.object_rotation)
        canvas, obj = objects.paste(plate, sprite, (C - 1) / 2.0, (C - 1) / 2.0)
        meta.update(background="plain", background_source="plain", scene_object=str(rec.path))
        return canvas, obj.astype(np.uint8), plate

    def _defect(self, rng: np.random.Generator, ctype: str, canvas: np.ndarray, m: int,
                meta: dict[str, Any], obj_c: np.ndarray | None, plate: np.ndarray | None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inspection defects (defects.py) made inside the central query window."""
        S, C = self.config.size, canvas.shape[0]
        win = canvas[m:m + S, m:m + S]
        obj = None
        if obj_c is not None:
            obj = np.ascontiguousarray(obj_c[m:m + S, m:m + S])
            obj = obj if obj.sum() >= 16 else None
        if ctype == "defect_crack":
            changed, mq = defects.make_crack(win, rng, obj)
        elif ctype == "defect_pit":
            changed, mq = defects.make_pits(win, rng, obj)
        elif ctype == "defect_stain":
            changed, mq = defects.make_stain(win, rng, obj)
        elif ctype == "defect_missing":
            bg = plate[m:m + S, m:m + S] if plate is not None and obj is not None else None
            changed, mq, kind = defects.make_missing(win, rng, obj, self._foreign(rng), bg)
            meta["variant"] = kind
        elif ctype == "defect_finish":
            changed, mq, kind = defects.make_finish(win, rng)
            meta["variant"] = kind
        else:
            changed, mq, kind = defects.make_global(win, rng, self._foreign(rng))
            meta["variant"] = kind
        if local.mean_change(win, changed, mq) < 3.0:
            raise _Retry(f"{ctype}: change not visible")
        query_c = canvas.copy()
        query_c[m:m + S, m:m + S] = changed
        mask_c = np.zeros((C, C), np.uint8)
        mask_c[m:m + S, m:m + S] = mq
        return canvas, query_c, mask_c

    # -------------------------------------------------------------- object changes
    def _sprite(self, rng: np.random.Generator, target_side: int, exclude: str | None = None,
                ) -> tuple[np.ndarray, str]:
        """A prepared RGBA object from the objects folder or from another photo's instance."""
        for _ in range(4):
            if self.sources.objects and (not self._instance_photos or rng.random() < 0.7):
                rec = self._pick(rng, self.sources.objects)
                if str(rec.path) == exclude and len(self.sources.objects) > 1:
                    continue
                rgba = load_rgba(rec.path)
                name = str(rec.path)
            else:
                rec = self._pick(rng, self._instance_photos)
                insts = self.sources.instances[str(rec.path.resolve())]
                inst = insts[int(rng.integers(0, len(insts)))]
                img = load_rgb(rec.path)
                full = inst.decode()
                if full.shape != img.shape[:2]:
                    raise InputError(f"COCO mask size {full.shape} does not match image {rec.path} "
                                     f"{img.shape[:2]}")
                rgba = objects.sprite_from_instance(img, full)
                if rgba is None:
                    continue
                name = f"{rec.path}#{insts.index(inst)}"
            if name == exclude:
                continue
            sp = objects.prepare_sprite(rgba, target_side, rng, self.config.object_rotation)
            if (sp[..., 3] > 0).sum() >= 16:
                return sp, name
        raise _Retry("no usable object cut-out drawn")

    def _place(self, rng: np.random.Generator, m: int) -> tuple[float, float]:
        S = self.config.size
        u = rng.uniform(0.2, 0.8, size=2)
        return m + float(u[0]) * S, m + float(u[1]) * S

    def _object_side(self, rng: np.random.Generator) -> int:
        lo, hi = self.config.object_size_range
        return max(8, int(round(float(rng.uniform(lo, hi)) * self.config.size)))

    def _sprite_change(self, rng: np.random.Generator, ctype: str, canvas: np.ndarray, m: int,
                       meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        side = self._object_side(rng)
        sprite_a, name_a = self._sprite(rng, side)
        cx, cy = self._place(rng, m)
        with_a, mask_a = objects.paste(canvas, sprite_a, cx, cy)
        meta["object"] = name_a
        if ctype == "object_exchange":
            side_b = max(8, int(round(side * float(rng.uniform(0.8, 1.25)))))
            sprite_b, name_b = self._sprite(rng, side_b, exclude=name_a)
            with_b, mask_b = objects.paste(canvas, sprite_b, cx, cy)
            meta["object_new"] = name_b
            return with_a, with_b, (mask_a | mask_b).astype(np.uint8)
        if rng.random() < cfg.sprite_inpaint_prob:
            hole = objects.dilate(mask_a, cfg.inpaint_dilation)
            without = self.inpainter(with_a, hole)
            without = _keep_outside(with_a, without, hole)
            meta["removal"] = "inpaint"
        else:
            hole, without = mask_a, canvas
            meta["removal"] = "background"
        if ctype == "object_disappear":
            return with_a, without, hole
        return without, with_a, hole  # object_appear: the same pair reversed

    def _instance_change(self, rng: np.random.Generator, ctype: str, canvas: np.ndarray,
                         rec: ImageRecord, box: tuple, m: int, meta: dict[str, Any],
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import cv2

        cfg = self.config
        S, C = cfg.size, canvas.shape[0]
        insts: list[Instance] = self.sources.instances[str(rec.path.resolve())]
        inst = insts[int(rng.integers(0, len(insts)))]
        x, y, side, w, h = box
        full = inst.decode()
        if full.shape != (h, w):
            raise InputError(f"COCO mask size {full.shape} does not match image {rec.path} ({h}, {w})")
        crop = full[y:y + side, x:x + side].astype(np.float32)
        inst_c = (cv2.resize(crop, (C, C), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)
        if inst_c[m:m + S, m:m + S].mean() < cfg.min_mask_fraction:
            raise _Retry("annotated object not inside the crop")
        hole = objects.dilate(inst_c, cfg.inpaint_dilation)
        removed = _keep_outside(canvas, self.inpainter(canvas, hole), hole)
        meta.update(object=f"{rec.path}#{insts.index(inst)}", removal="inpaint")
        if ctype == "object_disappear":
            return canvas, removed, hole
        if ctype == "object_appear":
            return removed, canvas, hole
        ys, xs = np.nonzero(inst_c)
        obj_side = max(8, int(max(ys.max() - ys.min(), xs.max() - xs.min()) * rng.uniform(0.8, 1.2)))
        sprite_b, name_b = self._sprite(rng, obj_side, exclude=meta["object"])
        cy, cx = float(ys.mean()), float(xs.mean())
        with_b, mask_b = objects.paste(removed, sprite_b, cx, cy)
        meta["object_new"] = name_b
        return canvas, with_b, (hole | mask_b).astype(np.uint8)


def _square_crop(img: np.ndarray, side: int, u: np.ndarray, out: int) -> tuple[np.ndarray, tuple]:
    """The side x side crop of `img` at relative position `u` (2 numbers in [0, 1)), resized to
    out x out, plus its box (x, y, side, W, H)."""
    import cv2  # local: keep module import cheap for CLI help

    h, w = img.shape[:2]
    x = int(u[0] * (w - side + 1))
    y = int(u[1] * (h - side + 1))
    interp = cv2.INTER_AREA if side > out else cv2.INTER_LINEAR
    return cv2.resize(img[y:y + side, x:x + side], (out, out), interpolation=interp), (x, y, side, w, h)


def _source_cdf(recs: list[ImageRecord], mode: str) -> np.ndarray:
    """Cumulative per-record weights: source weight (1, sqrt n or n) shared by its n files."""
    counts: dict[str, int] = {}
    for r in recs:
        counts[r.source] = counts.get(r.source, 0) + 1
    per_source = {s: (float(n) if mode == "image" else math.sqrt(n) if mode == "sqrt" else 1.0)
                  for s, n in counts.items()}
    w = np.array([per_source[r.source] / counts[r.source] for r in recs], dtype=np.float64)
    return np.cumsum(w)


def _keep_outside(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Guarantee that a (possibly third-party) inpainter changed nothing outside `mask`."""
    if after.shape != before.shape or after.dtype != np.uint8:
        raise MetaUASError(f"inpainter returned {after.shape} {after.dtype}, expected "
                           f"{before.shape} uint8")
    out = after.copy()
    outside = mask == 0
    out[outside] = before[outside]
    return out
