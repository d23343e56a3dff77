"""Training-free one-shot baseline: nearest-neighbour patch matching on encoder features.

For every query position, the anomaly score is 1/2 * (1 - max cosine similarity) between its
feature vector and all feature vectors of the prompt image(s), i.e. half the minimum cosine
distance, so scores lie in [0, 1] like the model's probabilities.  This is the "patch
matching" idea of PatchCore (Roth et al., CVPR 2022) reduced to a single normal image, the
baseline MetaUAS compares against.

Choice of features: stages f3 and f4 (strides 8 and 16) of the same frozen encoder the model
uses.  Mid-level stages are local enough to localise small defects and abstract enough to
tolerate small misalignments; f5 is too coarse, f1/f2 too sensitive to pixel-level noise.
Each stage gives its own distance map; the maps are upsampled bilinearly to the output size
and averaged (averaging per-stage distances keeps both stages' contributions comparable,
unlike concatenating features whose channel counts differ).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_STAGES", "patchmatch_map", "nearest_cosine_distance"]

DEFAULT_STAGES = (3, 4)


def nearest_cosine_distance(query: torch.Tensor, prompt: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Min cosine distance of each query position to any prompt position.

    Args:
        query: (B, C, h, w) features.
        prompt: (B, C, h', w') or (B, K, C, h', w') features (K prompts pooled together).
    Returns:
        (B, 1, h, w) distances in [0, 2].
    """
    b, c, h, w = query.shape
    if prompt.dim() == 5:
        prompt = prompt.permute(0, 2, 1, 3, 4).flatten(2)  # (B, C, K*h'*w')
    else:
        prompt = prompt.flatten(2)
    if prompt.shape[0] == 1 and b > 1:
        prompt = prompt.expand(b, -1, -1)
    if prompt.shape[0] != b or prompt.shape[1] != c:
        raise ValueError(f"prompt features {tuple(prompt.shape)} do not fit query features {tuple(query.shape)}")
    q = F.normalize(query.flatten(2).float(), dim=1)  # (B, C, N)
    p = F.normalize(prompt.float(), dim=1)  # (B, C, M)
    best = []
    for start in range(0, q.shape[2], chunk):  # bounded memory for large maps
        sim = torch.einsum("bcn,bcm->bnm", q[:, :, start:start + chunk], p)
        best.append(sim.amax(dim=2))
    max_sim = torch.cat(best, dim=1).clamp(-1.0, 1.0)
    return (1.0 - max_sim).view(b, 1, h, w)


def patchmatch_map(
    encoder_features_query: Sequence[torch.Tensor],
    encoder_features_prompt: Sequence[torch.Tensor],
    out_size: int | tuple[int, int],
    stages: Sequence[int] = DEFAULT_STAGES,
) -> torch.Tensor:
    """Patch-matching anomaly map (B, 1, H, W) in [0, 1] from encoder features f0..f5.

    ``encoder_features_prompt[l]`` may be (B, C, h, w), (1, C, h, w) (shared prompt) or
    (B, K, C, h, w) for K prompts.  Works without gradients (a baseline, and a training-free
    validation reference for the training code).
    """
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    maps = []
    with torch.no_grad():
        for level in stages:
            d = nearest_cosine_distance(encoder_features_query[level], encoder_features_prompt[level])
            maps.append(F.interpolate(d, size=size, mode="bilinear", align_corners=False))
    return (0.5 * torch.stack(maps, dim=0).mean(dim=0)).clamp_(0.0, 1.0)
