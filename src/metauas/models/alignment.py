"""Prompt-to-query feature alignment (MetaUAS, Gao 2024, Sec. 3.2) and feature fusion.

Soft alignment (`sa`, the paper's): a 1x1 conv shared by query and prompt reduces both to
C/2 channels; scores are plain dot products (no 1/sqrt(d), no normalisation); a softmax over
*prompt* positions gives, for every query position, weights over the prompt; the aligned
prompt is the weighted sum of the *unreduced* prompt features.

Hard alignment (`ha`): the same scores, but each query position takes the prompt feature at
the arg-max. Gradients reach the reduction conv through a straight-through estimator
(forward value = hard match exactly, backward = soft attention's gradient).

No alignment (`na`): the prompt feature at the same position (no parameters).

The attention is evaluated in chunks of query positions so peak memory grows linearly with
the number of pixels instead of quadratically; each chunk computes exactly the same per-row
maths as the full matrix.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

AlignmentType = Literal["sa", "ha", "na"]
FusionType = Literal["cat", "add", "absdiff"]
ALIGNMENT_TYPES: tuple[str, ...] = ("sa", "ha", "na")
FUSION_TYPES: tuple[str, ...] = ("cat", "add", "absdiff")

# Query positions per attention chunk: 4096 rows x up to 16k prompt positions x 4 bytes = 256 MiB.
DEFAULT_CHUNK = 4096


def fused_channels(channels: int, fusion: FusionType) -> int:
    """Channels of a level after fusing query and aligned prompt features.

    Args:
        channels: channels C of the encoder level.
        fusion: "cat" (concatenation, the paper's fusion), "add" or "absdiff".
    Returns:
        2 * C for "cat", C otherwise.
    """
    return 2 * channels if fusion == "cat" else channels


def fuse(query: torch.Tensor, aligned_prompt: torch.Tensor, fusion: FusionType) -> torch.Tensor:
    """Fuse query features with the aligned prompt features (Gao 2024, Sec. 3.2, "feature fusion").

    Args:
        query, aligned_prompt: (B,C,h,w) features of one level.
        fusion: "cat" (paper: channel concatenation, query first -> (B,2C,h,w)), "add" or
            "absdiff" (both (B,C,h,w)).
    Raises:
        ValueError: unknown fusion.
    """
    if fusion == "cat":
        return torch.cat([query, aligned_prompt], dim=1)  # query first (official order)
    if fusion == "add":
        return query + aligned_prompt
    if fusion == "absdiff":
        return (query - aligned_prompt).abs()
    raise ValueError(f"unknown fusion {fusion!r}; choose from {FUSION_TYPES}")


class AlignmentLayer(nn.Module):
    """Holds the shared 1x1 reduction (name kept for checkpoint compatibility)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dimensionality_reduction = nn.Conv2d(channels, channels // 2, kernel_size=1, bias=True)


class Alignment(nn.Module):
    """Aligns prompt features of one encoder level onto the query features of that level
    (MetaUAS, Gao 2024, Sec. 3.2; see the module docstring for the soft/hard/no alignment maths).

    Args:
        channels: C of the level.
        kind: "sa" soft alignment (the paper's), "ha" hard, "na" none.
        chunk_size: query positions per attention chunk (bounds peak memory).
    Raises:
        ValueError: an unknown `kind`.
    """

    def __init__(self, channels: int, kind: AlignmentType = "sa", chunk_size: int = DEFAULT_CHUNK) -> None:
        super().__init__()
        if kind not in ALIGNMENT_TYPES:
            raise ValueError(f"unknown alignment {kind!r}; choose from {ALIGNMENT_TYPES}")
        self.kind = kind
        self.chunk_size = chunk_size
        if kind != "na":
            self.alignment_layer = AlignmentLayer(channels)

    def reduce(self, features: torch.Tensor) -> torch.Tensor:
        """The alignment's dimensionality reduction of prompt features (the keys of the soft/hard
        alignment, MetaUAS paper Sec. 3.2), computed once per prompt and cached in `PromptFeatures`.

        Args:
            features: (B,C,h,w) prompt features of this level.
        Returns:
            the reduced features, (B,C/2,h,w) (a 1x1 convolution).
        """
        return self.alignment_layer.dimensionality_reduction(features)

    def forward(self, query: torch.Tensor, prompt: torch.Tensor,
                prompt_keys: torch.Tensor | None = None) -> torch.Tensor:
        """query (B,C,h,w); prompt (B,C,h',w') or (B,K,C,h',w') for K prompts -> (B,C,h,w).

        With K prompts each is aligned separately and the aligned features are averaged
        (k-shot fusion). `prompt_keys` may carry precomputed reductions of the prompt
        (same leading shape as `prompt`, C/2 channels) so a fixed prompt is reduced once.
        """
        if prompt.dim() == 5:
            keys = [None] * prompt.shape[1] if prompt_keys is None else prompt_keys.unbind(1)
            aligned = [self._align_one(query, p, k) for p, k in zip(prompt.unbind(1), keys)]
            return torch.stack(aligned, dim=0).mean(dim=0)
        return self._align_one(query, prompt, prompt_keys)

    def _align_one(self, query: torch.Tensor, prompt: torch.Tensor,
                   prompt_keys: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "na":
            if prompt.shape[-2:] != query.shape[-2:]:
                raise ValueError("alignment 'na' needs prompt and query features of equal size")
            return prompt
        b, c, h, w = query.shape
        q = self.reduce(query).flatten(2).transpose(1, 2)  # (B, hw, d)
        k = (self.reduce(prompt) if prompt_keys is None else prompt_keys).flatten(2)  # (B, d, n)
        v = prompt.flatten(2).transpose(1, 2)  # (B, n, C)
        chunks = [self._attend(q_part, k, v) for q_part in q.split(self.chunk_size, dim=1)]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(q, k)  # (B, rows, n): plain dot product, no scaling
        soft = torch.softmax(scores, dim=-1)
        if self.kind == "sa":
            return torch.bmm(soft, v)
        index = scores.argmax(dim=-1, keepdim=True)  # (B, rows, 1)
        hard = torch.gather(v, 1, index.expand(-1, -1, v.shape[-1]))
        if not torch.is_grad_enabled():
            return hard
        soft_out = torch.bmm(soft, v)
        return hard + (soft_out - soft_out.detach())  # straight-through
