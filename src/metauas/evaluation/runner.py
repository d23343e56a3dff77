"""`metauas eval`: run a model (or the patch-matching baseline) over a benchmark and report.

Pipeline per category: load test images at ``size`` x ``size`` and their masks, pick prompts
(`metauas.prompts`), predict anomaly maps in batches, compute the seven metrics with
`metauas.metrics.evaluate`, and save the per-seed results of the category atomically, so an
interrupted run resumes where it stopped.  Finally ``metrics.json`` and ``metrics.md`` are
written (mean +- std over seeds of the category-averaged metrics, as the paper's tables).

Resolution: metrics are computed at the model resolution (``size`` x ``size``), as the paper
does.  Masks are resized with nearest neighbour in the exact protocol; in the ``metauas``
protocol they are resized bilinearly and every pixel > 0 counts as anomalous, as the official
evaluation pipeline does (this slightly enlarges defects).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from metauas.atomic import atomic_write_text as _atomic_write_text
from metauas.data import BenchmarkData, CategoryData, Sample, load_mask, open_dataset
from metauas.constants import STRIDE
from metauas.errors import InputError
from metauas.io.images import load_image
from metauas.evaluation.patchmatch import patchmatch_map
from metauas.metrics import METRIC_NAMES, PROTOCOLS, evaluate
from metauas.scoring import image_scores
from metauas.prompts import PROMPT_STRATEGIES, DescriptorCache, global_descriptor, random_prompts, rank_by_similarity

__all__ = ["EvalConfig", "METHODS", "run_evaluation", "aggregate", "write_reports", "predict_maps"]

METHODS = ("metauas", "network", "patchmatch")  # network: the model without its patch-matching fusion
RESULT_VERSION = 2  # 2: product image score (top-k mean), k-shot as pixel-wise minimum


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run (also stored in metrics.json)."""

    dataset: str
    root: Path
    out: Path
    categories: list[str] | None = None
    prompt: str = "random"
    k: int = 1
    seeds: tuple[int, ...] = (1, 3, 5, 7, 9)
    model: str | None = None
    size: int = 256
    method: str = "metauas"
    protocol: str = "exact"
    save_maps: bool = False
    batch_size: int = 8
    meta_dir: Path | None = None
    fusion_weight: float = 0.5  # best+: weight of the patch-matching map
    tile: str | int = "off"  # tiled maps for large test images (metauas.runtime.predictor.check_tile)
    resume: bool = True
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the options before any work is done.

        Raises:
            InputError: unknown prompt strategy, method or protocol; a size that is not a positive
                multiple of 32; k < 1 or k > 1 with random prompts; no seeds; batch size < 1; a
                fusion weight outside [0, 1]; or ``best+`` with a method other than metauas.
        """
        if self.prompt not in PROMPT_STRATEGIES:
            raise InputError(f"unknown prompt strategy {self.prompt!r}; choose from {', '.join(PROMPT_STRATEGIES)}")
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}")
        if self.size < STRIDE or self.size % STRIDE:
            raise InputError(f"--size must be a positive multiple of 32, got {self.size}")
        if self.k < 1:
            raise InputError("--k must be >= 1")
        if self.prompt == "random" and self.k != 1:
            raise InputError("--k > 1 needs --prompt kshot (k random prompts) or best/best+ (k most similar)")
        if not self.seeds:
            raise InputError("at least one seed is needed")
        if self.batch_size < 1:
            raise InputError("--batch-size must be >= 1")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise InputError("fusion weight must be in [0, 1]")
        if self.method != "metauas" and self.prompt == "best+":
            raise InputError("--prompt best+ fuses the model with patch matching; use --method metauas")
        if self.tile != "off" and (self.method != "metauas" or self.prompt == "best+"):
            raise InputError("--tile needs --method metauas and a prompt strategy other than best+")

    def run_seeds(self) -> list[int]:
        """Seeds that change the outcome: none for the deterministic 'best' strategies."""
        return [0] if self.prompt in ("best", "best+") else [int(s) for s in self.seeds]

    def key(self, model_id: str) -> str:
        """Hash of what determines per-category results (resume only reuses matching ones)."""
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()
             if k not in ("out", "save_maps", "batch_size", "resume", "progress", "categories", "seeds", "extra")}
        d["model_id"] = model_id
        d["version"] = RESULT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- I/O helpers


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else x
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    return x


def _load_rgb(path: Path) -> np.ndarray:
    """The one image reader of `metauas.io` (same rules as `metauas segment`)."""
    return load_image(path)


def _to_tensor_u8(rgb: np.ndarray, size: int, antialias: bool) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,size,size) uint8, bilinear (antialiased in the exact protocol)."""
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return t.round_().clamp_(0, 255).to(torch.uint8)[0]


def _resize_mask(mask: np.ndarray, size: int, protocol: str) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    if protocol == "metauas":
        m = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        return m > 0
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


# --------------------------------------------------------------------------- model adapter


class _ModelAdapter:
    """Uniform access to encode / predict for MetaUAS and for simple stand-ins.

    Uses the model's feature-level API when present (prompt encoded once, query features shared
    with the patch-matching map), else falls back to ``model(query=, prompt=)``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.fast = hasattr(model, "predict") and hasattr(model, "prompt_from_features")

    def encode(self, images01: torch.Tensor) -> list[torch.Tensor]:
        return self.model.encode(images01)

    def predict(self, q: torch.Tensor, qf: list[torch.Tensor] | None, p: torch.Tensor,
                pf: list[torch.Tensor] | None) -> torch.Tensor:
        if self.fast and qf is not None and pf is not None:  # MetaUAS.predict: the model's one entry point
            return self.model.predict(qf, self.model.prompt_from_features(pf)).anomaly_map
        if p.shape[0] == 1 and q.shape[0] > 1:
            p = p.expand(q.shape[0], *p.shape[1:])
        return self.model(query=q, prompt=p)


@contextlib.contextmanager
def _without_patchmatch(model: torch.nn.Module):
    """Temporarily set ``config.patchmatch_weight`` to 0 (the network's own map)."""
    config = getattr(model, "config", None)
    weight = getattr(config, "patchmatch_weight", 0.0)
    try:
        if config is not None and weight:
            config.patchmatch_weight = 0.0
        yield
    finally:
        if config is not None and weight:
            config.patchmatch_weight = weight


@torch.inference_mode()
def predict_maps(
    model: torch.nn.Module,
    queries_u8: torch.Tensor,
    prompts_u8: torch.Tensor,
    method: str = "metauas",
    fusion_weight: float = 0.0,
    kshot: str = "min",
) -> torch.Tensor:
    """Anomaly maps (B, H, W) for uint8 query images and their prompts.

    ``prompts_u8``: (1,3,H,W) shared, (B,3,H,W) per query, or (B,K,3,H,W) / (1,K,3,H,W) k-shot.
    ``method``: "metauas" (the model's anomaly map, as `Segmenter` computes it), "network"
    (the same without the model's own patch-matching fusion, ``config.patchmatch_weight``),
    "patchmatch" (training-free baseline); with ``fusion_weight``
    > 0 and method "metauas" the model map is fused with the patch-matching map:
    ``(1 - w) * model + w * patchmatch`` (MetaUAS*+). ``kshot``: with K prompts, "min" keeps
    the pixel-wise minimum of one map per prompt (what `Segmenter` does by default), "mean" uses
    the model's averaged k-shot path.
    """
    adapter = _ModelAdapter(model)
    q = queries_u8.float().div_(255.0)
    p = prompts_u8.float().div_(255.0)
    size = q.shape[-2:]
    need_feats = method == "patchmatch" or fusion_weight > 0 or adapter.fast
    qf = adapter.encode(q) if need_feats else None
    pf = adapter.encode(p) if need_feats else None
    if method == "patchmatch":
        return patchmatch_map(qf, pf, tuple(size))[:, 0]
    if method == "network":
        with _without_patchmatch(model):
            return predict_maps(model, queries_u8, prompts_u8, "metauas", fusion_weight, kshot)
    if p.dim() == 5 and kshot == "min":
        per_prompt = [adapter.predict(q, qf, p[:, k], None if pf is None else [f[:, k] for f in pf])
                      for k in range(p.shape[1])]
        out = torch.stack(per_prompt).amin(dim=0)[:, 0].float()
    else:
        out = adapter.predict(q, qf, p, pf)[:, 0].float()
    if fusion_weight > 0:
        pm = patchmatch_map(qf, pf, tuple(size))[:, 0]
        out = (1.0 - fusion_weight) * out + fusion_weight * pm
    return out


# --------------------------------------------------------------------------- one category


@dataclass
class _LoadedCategory:
    samples: list[Sample]
    images: torch.Tensor  # (N,3,S,S) uint8
    masks: list[np.ndarray | None]
    labels: np.ndarray


def _load_category(cat: CategoryData, size: int, protocol: str) -> _LoadedCategory:
    images, masks = [], []
    for s in cat.test:
        rgb = _load_rgb(s.path)
        images.append(_to_tensor_u8(rgb, size, antialias=protocol == "exact"))
        m = load_mask(s, rgb.shape[:2])
        if m is not None and m.shape != rgb.shape[:2]:
            raise InputError(f"mask {s.mask} is {m.shape[1]}x{m.shape[0]} but image {s.path} is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
        masks.append(None if m is None else _resize_mask(m, size, protocol))
    labels = np.array([s.label for s in cat.test], dtype=int)
    return _LoadedCategory(list(cat.test), torch.stack(images), masks, labels)


class _PromptImages:
    """Prompt images at model size, loaded once per path."""

    def __init__(self, size: int, antialias: bool) -> None:
        self.size, self.antialias, self.cache = size, antialias, {}

    def get(self, path: Path) -> torch.Tensor:
        key = str(path)
        if key not in self.cache:
            self.cache[key] = _to_tensor_u8(_load_rgb(Path(path)), self.size, self.antialias)
        return self.cache[key]

    def stack(self, paths: Sequence[Path]) -> torch.Tensor:
        return torch.stack([self.get(p) for p in paths])


def _save_overlays(out_dir: Path, loaded: _LoadedCategory, maps: np.ndarray) -> None:
    try:
        from metauas.runtime.visualize import save_overlay
    except ImportError:  # visualisation not available: skip silently rather than fail the run
        return
    for s, img, amap in zip(loaded.samples, loaded.images, maps):
        name = f"{s.defect}_{Path(s.path).stem}.png"
        save_overlay(img.permute(1, 2, 0).numpy(), np.clip(amap, 0, 1), out_dir / name,
                     title=f"{s.defect} {Path(s.path).name} score={float(amap.max()):.3f}")


def _tile_and_score(cfg: EvalConfig, model: torch.nn.Module, loaded: _LoadedCategory, maps: np.ndarray,
                    prompt_images: "_PromptImages", shared: list[Path] | None,
                    ranked: list[list[Path]] | None) -> np.ndarray | None:
    """Image scores of ``maps`` (N, S, S); with ``cfg.tile`` on, the maps of large test images
    are first replaced (in place) by their tiled maps (pixel-wise minimum over the query's
    prompts, resized to S) and scored as `metauas segment --tile` scores them
    (`metauas.scoring.tiled_image_score` of the full-resolution map). The baseline keeps the
    map maximum (None)."""
    if cfg.method == "patchmatch":
        return None
    scores = image_scores(maps)
    if cfg.tile == "off":
        return scores
    from metauas.scoring import tiled_image_score
    from metauas.tiling import model_predictor, should_tile, tiled_anomaly_map

    predict = None
    for i, sample in enumerate(loaded.samples):
        rgb = _load_rgb(Path(sample.path))
        h, w = rgb.shape[:2]
        side = cfg.size if cfg.tile == "auto" else int(cfg.tile)
        if (cfg.tile == "auto" and not should_tile(h, w, cfg.size)) or max(h, w) <= side:
            continue
        if side != cfg.size:  # N-px tiles: the image at scale S / N, tiled at S
            t = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), antialias=True, mode="bilinear",
                              size=(round(h * cfg.size / side), round(w * cfg.size / side)), align_corners=False)
            rgb = t[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        predict = predict or model_predictor(model)
        full = None
        for path in (shared if shared is not None else ranked[i]):  # type: ignore[index]
            part = tiled_anomaly_map(rgb, _load_rgb(Path(path)), predict, tile_size=cfg.size)
            full = part if full is None else np.minimum(full, part)
        full_t = torch.from_numpy(full)[None, None]
        if full_t.shape[-2:] != (h, w):
            full_t = F.interpolate(full_t, size=(h, w), mode="bilinear", align_corners=False)
        scores[i] = tiled_image_score(full_t[0, 0], side)
        maps[i] = F.interpolate(full_t, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False,
                                antialias=True)[0, 0].numpy()
    return scores


def _run_category(cfg: EvalConfig, data: BenchmarkData, cat: CategoryData, model: torch.nn.Module,
                  model_id: str, state: dict, state_path: Path) -> dict:
    from tqdm import tqdm

    antialias = cfg.protocol == "exact"
    loaded = _load_category(cat, cfg.size, cfg.protocol)
    prompt_images = _PromptImages(cfg.size, antialias)
    adapter = _ModelAdapter(model)
    n = len(loaded.samples)
    fusion = cfg.fusion_weight if cfg.prompt == "best+" else 0.0

    # best / best+: rank training images per query (official ranking file if shipped).
    ranked: list[list[Path]] | None = None
    if cfg.prompt in ("best", "best+"):
        ranked = []
        missing = [s for s in loaded.samples if s.key not in data.ranked_prompts]
        if missing:
            cache = DescriptorCache(cfg.out / "cache", model_id, cfg.size)

            def describe(paths: Sequence[Path]) -> torch.Tensor:
                out = []
                for i in range(0, len(paths), cfg.batch_size):
                    x = prompt_images.stack(paths[i:i + cfg.batch_size]).float().div_(255.0)
                    out.append(global_descriptor(adapter.encode(x)))
                return torch.cat(out)

            with torch.inference_mode():
                train_desc = cache.get(cat.name, cat.train, describe)
                q_desc = torch.cat([global_descriptor(adapter.encode(loaded.images[i:i + cfg.batch_size].float() / 255.0))
                                    for i in range(0, n, cfg.batch_size)])
            idx = rank_by_similarity(q_desc, train_desc, cfg.k)
        for j, s in enumerate(loaded.samples):
            if s.key in data.ranked_prompts:
                ranked.append(data.ranked_prompts[s.key][:cfg.k])
            else:
                ranked.append([cat.train[int(i)] for i in idx[j]])

    for seed in cfg.run_seeds():
        if str(seed) in state["seeds"]:
            continue
        t0 = time.perf_counter()
        shared: list[Path] | None = None
        if cfg.prompt == "random":
            fixed = data.fixed_prompts.get(seed, {}).get(cat.name)
            shared = [fixed] if fixed is not None else random_prompts(cat.train, seed, 1)
        elif cfg.prompt == "kshot":
            shared = random_prompts(cat.train, seed, cfg.k)
        maps = np.zeros((n, cfg.size, cfg.size), np.float32)
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"{cat.name} seed {seed}" if ranked is None else cat.name,
                   leave=False, disable=not cfg.progress, unit="batch")
        for i in bar:
            q = loaded.images[i:i + cfg.batch_size]
            if shared is not None:
                p = prompt_images.stack(shared)  # (K,3,S,S)
                p = p[None] if cfg.prompt == "kshot" else p  # (1,K,3,S,S) | (1,3,S,S)
            else:
                per_query = ranked[i:i + cfg.batch_size]
                if len(per_query[0]) == 1:
                    p = prompt_images.stack([r[0] for r in per_query])
                else:
                    p = torch.stack([prompt_images.stack(r) for r in per_query])
            with torch.inference_mode():
                maps[i:i + q.shape[0]] = predict_maps(model, q, p, cfg.method, fusion).cpu().numpy()
        # the product's image score for the model (metauas.scoring); the baseline keeps the map maximum
        scores = _tile_and_score(cfg, model, loaded, maps, prompt_images, shared, ranked)
        metrics = evaluate(loaded.masks, list(maps), labels=loaded.labels, protocol=cfg.protocol,
                           image_scores=scores)
        state["seeds"][str(seed)] = {
            "metrics": metrics,
            "prompts": [str(x) for x in shared] if shared is not None else {
                str(s.path): [str(x) for x in r] for s, r in zip(loaded.samples, ranked or [])},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        _atomic_write_text(state_path, json.dumps(_json_safe(state), indent=1))
        if cfg.save_maps and seed == cfg.run_seeds()[0]:
            _save_overlays(cfg.out / "maps" / cat.name, loaded, maps)
    return state


# --------------------------------------------------------------------------- aggregation / reports


def _nanmean(values: Sequence[float | None]) -> float:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def aggregate(per_cat_seed: dict[str, dict[str, dict[str, float | None]]]) -> dict:
    """Category x seed metrics -> per-category means/stds and the category-averaged mean/std.

    ``mean``/``std`` = mean / population std over seeds of the per-seed average over categories
    (how the paper reports mean +- std over 5 prompt seeds).
    """
    cats = sorted(per_cat_seed)
    seeds = sorted({s for c in cats for s in per_cat_seed[c]}, key=lambda x: int(x))
    per_category, per_category_std = {}, {}
    for c in cats:
        per_category[c], per_category_std[c] = {}, {}
        for m in METRIC_NAMES:
            vals = [per_cat_seed[c][s].get(m) for s in per_cat_seed[c]]
            arr = np.array([np.nan if v is None else v for v in vals], float)
            per_category[c][m] = _nanmean(vals)
            per_category_std[c][m] = float(np.nanstd(arr)) if np.isfinite(arr).any() else float("nan")
    per_seed = {s: {m: _nanmean([per_cat_seed[c][s].get(m) for c in cats if s in per_cat_seed[c]])
                    for m in METRIC_NAMES} for s in seeds}
    mean, std = {}, {}
    for m in METRIC_NAMES:
        arr = np.array([per_seed[s][m] for s in seeds], float)
        ok = np.isfinite(arr)
        mean[m] = float(arr[ok].mean()) if ok.any() else float("nan")
        std[m] = float(arr[ok].std()) if ok.any() else float("nan")
    return {"per_category": per_category, "per_category_std": per_category_std, "per_seed": per_seed,
            "mean": mean, "std": std}


PROTOCOL_LABEL = {
    "exact": "exact (threshold-free AUROC/AP/F1max equal to scikit-learn; exact AUPRO to FPR 0.3, "
             "Bergmann et al.; masks resized nearest-neighbour)",
    "metauas": "metauas (official MetaUAS evaluator choices: per-category min-max normalised maps, "
               "AUROC flipped when < 0.5, 200-threshold PRO with rescaled FPR; masks resized "
               "bilinearly, > 0 = anomalous) - for comparison with published numbers only",
}


def _fmt(mean: float | None, std: float | None, with_std: bool) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if with_std and std is not None and math.isfinite(std):
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{100 * mean:.1f}"


def write_reports(out: Path, report: dict) -> None:
    """metrics.json (values in [0,1], NaN -> null) and metrics.md (percent, mean ± std)."""
    _atomic_write_text(out / "metrics.json", json.dumps(_json_safe(report), indent=2))
    cfg = report["config"]
    n_seeds = len(report["per_seed"])
    with_std = n_seeds > 1
    lines = [
        f"# MetaUAS evaluation: {cfg['dataset']} ({cfg['method']}, prompt={cfg['prompt']}"
        + (f", k={cfg['k']}" if cfg["prompt"] in ("kshot",) else "") + ")",
        "",
        f"- model: `{cfg['model_id']}`; input size {cfg['size']}x{cfg['size']}",
        f"- protocol: **{PROTOCOL_LABEL[cfg['protocol']]}**",
        f"- seeds: {', '.join(report['per_seed'])}" + (" (deterministic prompts: one run)"
                                                        if cfg["prompt"] in ("best", "best+") else ""),
        "- values in %; " + ("mean ± std over seeds (population std); " if with_std else "")
        + "Mean = average over categories",
        "",
        "| Category | " + " | ".join(METRIC_NAMES) + " |",
        "|---|" + "---|" * len(METRIC_NAMES),
    ]
    for c, vals in report["per_category"].items():
        sd = report["per_category_std"][c]
        lines.append(f"| {c} | " + " | ".join(_fmt(vals[m], sd[m], with_std) for m in METRIC_NAMES) + " |")
    lines.append("| **Mean** | " + " | ".join(_fmt(report["mean"][m], report["std"][m], with_std)
                                           for m in METRIC_NAMES) + " |")
    lines.append("")
    _atomic_write_text(out / "metrics.md", "\n".join(lines))


# --------------------------------------------------------------------------- entry point


def _model_id(cfg: EvalConfig, model: torch.nn.Module) -> str:
    if cfg.model:
        p = Path(cfg.model).expanduser()
        if p.is_file():
            st = p.stat()
            return f"{p.resolve()}@{st.st_size}:{int(st.st_mtime)}"
        return cfg.model
    mc = getattr(model, "config", None)
    n_params = sum(int(t.numel()) for t in model.parameters()) if hasattr(model, "parameters") else 0
    return f"{type(model).__name__}({getattr(mc, 'encoder', '')}, {n_params} params)"


def _load_model_for(cfg: EvalConfig) -> torch.nn.Module:
    """The requested model; the patch-matching baseline only needs an ImageNet encoder."""
    from metauas.errors import CheckpointError
    from metauas.models import DEFAULT_MODEL, available_models, build_model, load_model

    if cfg.model:
        return load_model(cfg.model)
    if DEFAULT_MODEL in available_models():
        cfg.model = DEFAULT_MODEL
        return load_model(DEFAULT_MODEL)
    if cfg.method == "patchmatch":
        cfg.model = "efficientnet-lite0-imagenet-encoder"
        return build_model("efficientnet-lite0", pretrained=True)  # decoder unused by patch matching
    raise CheckpointError(f"no trained model installed (default {DEFAULT_MODEL!r} missing); pass --model "
                          "NAME|CHECKPOINT, or use --method patchmatch (needs only the ImageNet encoder)")


def run_evaluation(cfg: EvalConfig, model: torch.nn.Module | None = None,
                   data: BenchmarkData | None = None) -> dict:
    """Evaluate and write ``cfg.out/metrics.json`` and ``metrics.md``; returns the report dict.

    Raises:
        InputError: invalid options (`EvalConfig.validate`), or a category with fewer training
            images than k prompts (and the data set readers' errors).
    """
    from tqdm import tqdm

    cfg.validate()
    cfg.out = Path(cfg.out).expanduser()
    if data is None:
        data = open_dataset(cfg.dataset, cfg.root, cfg.categories, cfg.meta_dir)
    elif cfg.categories:
        data = data.select(cfg.categories)
    if cfg.prompt == "kshot":
        for cat in data.categories.values():
            if len(cat.train) < cfg.k:
                raise InputError(f"category {cat.name}: k={cfg.k} prompts but only {len(cat.train)} training images")
    if model is None:
        model = _load_model_for(cfg)
    model.eval()
    model_id = _model_id(cfg, model)
    key = cfg.key(model_id)
    cat_dir = cfg.out / "categories"
    per_cat_seed: dict[str, dict[str, dict]] = {}
    times: dict[str, float] = {}
    for name in tqdm(list(data.categories), desc="categories", disable=not cfg.progress, unit="cat"):
        cat = data.categories[name]
        state_path = cat_dir / f"{name}.json"
        state = {"config_key": key, "category": name, "n_test": len(cat.test), "seeds": {}}
        if cfg.resume and state_path.is_file():
            try:
                old = json.loads(state_path.read_text(encoding="utf-8"))
                if old.get("config_key") == key and old.get("n_test") == len(cat.test):
                    state = old
            except (OSError, json.JSONDecodeError):
                pass  # damaged partial result: recompute the category
        wanted = [str(s) for s in cfg.run_seeds()]
        if not all(s in state["seeds"] for s in wanted) or (cfg.save_maps and not (cfg.out / "maps" / name).is_dir()):
            if cfg.save_maps:
                state["seeds"].pop(wanted[0], None)  # recompute the first seed to draw its maps
            state = _run_category(cfg, data, cat, model, model_id, state, state_path)
        per_cat_seed[name] = {s: state["seeds"][s]["metrics"] for s in wanted}
        times[name] = sum(float(state["seeds"][s].get("seconds", 0.0)) for s in wanted)
    report = aggregate(per_cat_seed)
    conf = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
            if k not in ("progress", "resume", "extra")}
    conf.update({"model_id": model_id, "config_key": key, "seeds_run": [int(s) for s in report["per_seed"]],
                 "n_test": {c: len(data.categories[c].test) for c in data.categories},
                 "protocol_label": PROTOCOL_LABEL[cfg.protocol], "seconds": times})
    conf.update(cfg.extra)
    report["config"] = conf
    write_reports(cfg.out, report)
    return _json_safe(report)
