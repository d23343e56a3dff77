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

from metauas.models.comparison import PATCHMATCH_LEVELS
from metauas.models.comparison import patchmatch_map as _patchmatch_map

__all__ = ["DEFAULT_STAGES", "patchmatch_map"]

DEFAULT_STAGES = PATCHMATCH_LEVELS


def patchmatch_map(
    encoder_features_query: Sequence[torch.Tensor],
    encoder_features_prompt: Sequence[torch.Tensor],
    out_size: int | tuple[int, int],
    stages: Sequence[int] = DEFAULT_STAGES,
) -> torch.Tensor:
    """Patch-matching anomaly map (B, 1, H, W) in [0, 1] from encoder features f0..f5.

    ``encoder_features_prompt[l]`` may be (B, C, h, w), (1, C, h, w) (shared prompt) or
    (B, K, C, h, w) for K prompts.  Works without gradients (a baseline, and a training-free
    validation reference for the training code); the maths is `metauas.models.comparison.patchmatch_map`.
    """
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    with torch.no_grad():
        return _patchmatch_map(encoder_features_query, encoder_features_prompt, size, stages)
