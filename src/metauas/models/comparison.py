"""Explicit prompt-query comparison signals for the decoder ("compare, not saliency").

Why: the paper's decoder sees only [query features, aligned prompt features] and has to learn
the comparison itself. Trained on a small budget it learns saliency instead (a salient object
is flagged whatever the prompt shows). Here the decoder is also *given* the comparison, at every
level ``l`` of ``levels``:

* ``d_nn[l]``: the cosine distance of each query position to its nearest prompt position,
  ``d_nn(i) = min_j (1 - <q_i, p_j> / (|q_i| |p_j|))`` over all positions ``j`` of all K prompts
  (the one-shot patch-matching score of PatchCore, Roth et al., CVPR 2022);
* ``d_al[l]`` (levels that are aligned): the cosine distance between the query feature and the
  aligned prompt feature at the same position, ``1 - cos(q_i, a_i)`` (MetaUAS alignment,
  Gao 2024, Sec. 3.2).

Both lie in [0, 2] and are 0 for a query identical to the prompt. Each level's signals enter
the decoder through a 1x1 convolution added to the fused features of that level, and all
levels' signals, upsampled to the output size, add one more term to the logits. All these
convolutions start at zero, so a model initialised from weights without comparison computes
exactly what it computed before, and training decides how much to use them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["COMPARISON_TYPES", "COMPARISON_LEVELS", "PATCHMATCH_LEVELS", "PATCHMATCH_DISTANCES",
           "nearest_cosine_distance", "nearest_relative_l2_distance",
           "aligned_cosine_distance", "patchmatch_map", "neighbourhood_average", "Comparison"]

COMPARISON_TYPES: tuple[str, ...] = ("none", "cosine")
COMPARISON_LEVELS: tuple[int, ...] = (3, 4, 5)
# Distances between normal features are ~0.05-0.3; x10 puts the signals on the scale of unit
# activations, so the zero-initialised 1x1 convolutions reach useful weights in few steps.
SIGNAL_GAIN = 10.0


def _pooled_prompt(query: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Prompt features as (B, C, M): K prompts pooled, a leading batch of 1 shared by all B.

    Raises:
        ValueError: when prompt and query features have different channel counts or batch.
    """
    b, c = query.shape[:2]
    prompt = prompt.permute(0, 2, 1, 3, 4).flatten(2) if prompt.dim() == 5 else prompt.flatten(2)
    if prompt.shape[0] == 1 and b > 1:
        prompt = prompt.expand(b, -1, -1)
    if prompt.shape[0] != b or prompt.shape[1] != c:
        raise ValueError(f"prompt features {tuple(prompt.shape)} do not fit query features {tuple(query.shape)}")
    return prompt


def nearest_cosine_distance(query: torch.Tensor, prompt: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Min cosine distance of each query position to any prompt position.

    Args:
        query: (B, C, h, w) features.
        prompt: (B, C, h', w') or (B, K, C, h', w') features (K prompts pooled together); a
            leading batch of 1 is shared by all B queries.
        chunk: query positions per similarity block (bounds memory to chunk x K*h'*w' floats).
    Returns:
        (B, 1, h, w) distances in [0, 2] (float32).
    Raises:
        ValueError: when prompt and query features have different channel counts or batch.
    """
    b, _, h, w = query.shape
    q = F.normalize(query.flatten(2).float(), dim=1)  # (B, C, N)
    p = F.normalize(_pooled_prompt(query, prompt).float(), dim=1)  # (B, C, M)
    best = []
    for start in range(0, q.shape[2], chunk):
        sim = torch.einsum("bcn,bcm->bnm", q[:, :, start:start + chunk], p)
        best.append(sim.amax(dim=2))
    max_sim = torch.cat(best, dim=1).clamp(-1.0, 1.0)
    return (1.0 - max_sim).view(b, 1, h, w)


def nearest_relative_l2_distance(query: torch.Tensor, prompt: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance of each query position to its nearest prompt position (PatchCore's
    anomaly score, Roth et al., CVPR 2022), divided by the mean feature norm of the prompt(s).

    ``d(i) = min_j |q_i - p_j| / mean_j |p_j|``. Unlike the cosine distance it keeps the
    feature magnitude, which changes with local contrast and surface finish; the division makes
    it independent of the level's feature scale (a query feature of zero norm or twice the
    prompt's typical norm lies about 1 away).

    Args:
        query: (B, C, h, w) features.
        prompt: (B, C, h', w') or (B, K, C, h', w') features (K prompts pooled together); a
            leading batch of 1 is shared by all B queries.
        chunk: query positions per distance block (bounds memory to chunk x K*h'*w' floats).
    Returns:
        (B, 1, h, w) float32 distances >= 0; 0 where the query feature equals a prompt feature.
    Raises:
        ValueError: when prompt and query features have different channel counts or batch.
    """
    b, _, h, w = query.shape
    q = query.flatten(2).float()  # (B, C, N)
    p = _pooled_prompt(query, prompt).float()  # (B, C, M)
    p_sq = (p * p).sum(dim=1, keepdim=True)  # (B, 1, M)
    scale = p_sq.sqrt().mean(dim=2).clamp_min(1e-6)  # (B, 1)
    nearest = []
    for start in range(0, q.shape[2], chunk):
        block = q[:, :, start:start + chunk]
        # |q - p|^2 up to the constant |q|^2, which does not change the nearest prompt position:
        # |p|^2 - 2 <q, p> in one fused op, (B, n, M)
        nearest.append(torch.baddbmm(p_sq, block.transpose(1, 2), p, alpha=-2.0).argmin(dim=2))
    index = torch.cat(nearest, dim=1)  # (B, N)
    matched = torch.gather(p, 2, index.unsqueeze(1).expand(-1, p.shape[1], -1))  # (B, C, N)
    # the distance itself from the difference (exactly 0 for a query equal to a prompt position)
    dist = (q - matched).norm(dim=1) / scale
    return dist.view(b, 1, h, w)


PATCHMATCH_DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    "cosine": nearest_cosine_distance, "l2": nearest_relative_l2_distance}


PATCHMATCH_LEVELS: tuple[int, ...] = (3, 4)


def neighbourhood_average(features: torch.Tensor, size: int) -> torch.Tensor:
    """Local neighbourhood aggregation of patch features (PatchCore, Roth et al. CVPR 2022, Eq. 2).

    Every position becomes the mean of its ``size`` x ``size`` neighbourhood (stride 1, border
    positions average only the positions inside the map), which makes a patch feature describe
    its surroundings and so tolerate small shifts and texture noise.

    Args:
        features: (B, C, h, w) or (B, K, C, h, w) features.
        size: odd neighbourhood side in positions; 1 returns ``features`` unchanged.
    Returns:
        A tensor of the same shape as ``features``.
    Raises:
        ValueError: when ``size`` is not a positive odd integer.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"neighbourhood size must be a positive odd integer, got {size}")
    if size == 1:
        return features
    flat = features.flatten(0, 1) if features.dim() == 5 else features
    pooled = F.avg_pool2d(flat, size, stride=1, padding=size // 2, count_include_pad=False)
    return pooled.view(features.shape)


def patchmatch_map(query_features: Sequence[torch.Tensor], prompt_features: Sequence[torch.Tensor],
                   size: tuple[int, int], levels: Sequence[int] = PATCHMATCH_LEVELS,
                   neighbourhood: int = 1, distance: str = "cosine") -> torch.Tensor:
    """Training-free one-shot patch-matching anomaly map (PatchCore's score, Roth et al. 2022).

    Per level (and neighbourhood scale): the nearest-neighbour distance of every query position
    to the prompt(s) (`nearest_cosine_distance` or `nearest_relative_l2_distance`), upsampled
    bilinearly to ``size``; the map is half the mean over ``levels`` (default f3, f4) and scales.

    Args:
        query_features: encoder features f0..f5 of the queries, f_l (B, C, h, w).
        prompt_features: f0..f5 of the prompt(s): (B|1, C, h, w) or (B|1, K, C, h, w).
        size: output (H, W).
        levels: encoder levels compared (default f3, f4).
        neighbourhood: odd side k of a PatchCore neighbourhood (`neighbourhood_average`). 1: plain
            patch features only; k > 1: the mean of the plain distance and the distance of
            features averaged over k x k neighbourhoods (two scales: fine defects keep the plain
            term, texture noise and small shifts are absorbed by the averaged one).
        distance: "cosine" (`nearest_cosine_distance`) or "l2" (`nearest_relative_l2_distance`,
            PatchCore's Euclidean distance relative to the prompt's mean feature norm).
    Returns:
        (B, 1, H, W) float32 in [0, 1]; 0 where the query equals a prompt.
    Raises:
        ValueError: prompt and query features that do not fit, a bad ``neighbourhood`` or an
            unknown ``distance``.
    """
    if distance not in PATCHMATCH_DISTANCES:
        raise ValueError(f"unknown patch-matching distance {distance!r}; choose from {tuple(PATCHMATCH_DISTANCES)}")
    nearest = PATCHMATCH_DISTANCES[distance]
    sizes = (1,) if neighbourhood == 1 else (1, neighbourhood)
    maps = [F.interpolate(nearest(neighbourhood_average(query_features[level], k),
                                  neighbourhood_average(prompt_features[level], k)),
                          size=tuple(size), mode="bilinear", align_corners=False)
            for level in levels for k in sizes]
    return (0.5 * torch.stack(maps, dim=0).mean(dim=0)).clamp(0.0, 1.0)


def aligned_cosine_distance(query: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) x (B, C, h, w) -> (B, 1, h, w): 1 - cosine similarity per position, in [0, 2]."""
    return 1.0 - F.cosine_similarity(query.float(), aligned.float(), dim=1, eps=1e-6)[:, None]


class Comparison(nn.Module):
    """Injects comparison signals into the fused decoder inputs and adds a logit term.

    Args:
        fused_channels: channels of the fused features f0..f5 as the decoder receives them.
        aligned_levels: encoder levels that have an alignment module (they get ``d_al`` too).
        levels: encoder levels that get comparison signals (default f3, f4, f5).
    """

    def __init__(self, fused_channels: Sequence[int], aligned_levels: Sequence[int],
                 levels: Sequence[int] = COMPARISON_LEVELS) -> None:
        super().__init__()
        self.levels = tuple(int(level) for level in levels)
        self.aligned = tuple(level for level in self.levels if level in set(aligned_levels))
        self.inject = nn.ModuleDict()
        for level in self.levels:
            n = self.signals_at(level)
            conv = nn.Conv2d(n, fused_channels[level], kernel_size=1)
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.inject[str(level)] = conv
        total = sum(self.signals_at(level) for level in self.levels)
        self.head = nn.Conv2d(total, 1, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def signals_at(self, level: int) -> int:
        """Number of comparison signal channels at encoder `level`: 2 at aligned levels (``d_nn``,
        the cosine distance to the nearest prompt position, and ``d_al``, to the aligned prompt
        feature), 1 (``d_nn``) elsewhere.
        """
        return 2 if level in self.aligned else 1

    def signals(self, query_features: Sequence[torch.Tensor], prompt_features: Sequence[torch.Tensor],
                aligned: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Per level: (B, n, h, w) comparison signals (n = 1 or 2): SIGNAL_GAIN x distance, in [0, 20]."""
        out = {}
        for level in self.levels:
            q = query_features[level]
            maps = [nearest_cosine_distance(q, prompt_features[level]).to(q.dtype)]
            if level in self.aligned:
                maps.append(aligned_cosine_distance(q, aligned[level]).to(q.dtype))
            out[level] = SIGNAL_GAIN * torch.cat(maps, dim=1)
        return out

    def inject_into(self, fused: list[torch.Tensor], signals: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """fused[l] + conv1x1(signals[l]) for every comparison level (a new list)."""
        fused = list(fused)
        for level, s in signals.items():
            fused[level] = fused[level] + self.inject[str(level)](s)
        return fused

    def logit_term(self, signals: dict[int, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W) additive logit term from all signals upsampled (bilinear) to ``size``."""
        maps = [F.interpolate(signals[level], size=size, mode="bilinear", align_corners=False)
                for level in self.levels]
        return self.head(torch.cat(maps, dim=1))
