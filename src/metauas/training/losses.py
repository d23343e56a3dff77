"""Segmentation losses for change masks.

BCE + Dice (default): BCE gives dense per-pixel gradients, Dice counters the strong
foreground/background imbalance of small defects (Milletari et al., 2016). Focal loss
(Lin et al., 2017) is offered instead of BCE for very small changes.
Dice is computed per sample with +1 smoothing, so an empty mask predicted empty costs ~0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss (Milletari et al., V-Net, 3DV 2016): mean over the batch of
    ``1 - (2 |p * t| + s) / (|p| + |t| + s)`` with p = sigmoid(logits).

    Args:
        logits: (B,1,H,W) float.
        target: (B,1,H,W) float in {0, 1}.
        smooth: s, keeps empty masks defined.
    Returns:
        scalar tensor in [0, 1].
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss (Lin et al., ICCV 2017): mean of ``(1 - p_t) ** gamma * BCE``.

    Args:
        logits: (B,1,H,W) float.
        target: (B,1,H,W) float in {0, 1}.
        gamma: focusing exponent (0 = plain BCE).
    Returns:
        scalar tensor >= 0.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def change_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce_dice",
                dice_weight: float = 1.0, focal_gamma: float = 2.0) -> torch.Tensor:
    """Scalar training loss of change logits against change masks.

    Args:
        logits: (B,1,H,W) raw network outputs (before the sigmoid).
        target: (B,1,H,W) masks in {0,1} (or soft values in [0,1]).
        kind: "bce_dice" (BCE + `dice_weight` * Dice; Milletari et al. 2016), "focal_dice"
            (focal loss, Lin et al. 2017, with `focal_gamma`, + Dice) or "bce".
    Returns:
        0-dim float32 tensor (>= 0).
    Raises:
        ValueError: unknown kind.
    """
    logits, target = logits.float(), target.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "bce_dice":
        return F.binary_cross_entropy_with_logits(logits, target) + dice_weight * dice_loss(logits, target)
    if kind == "focal_dice":
        return focal_loss(logits, target, focal_gamma) + dice_weight * dice_loss(logits, target)
    raise ValueError(f"unknown loss {kind!r} (bce_dice | focal_dice | bce)")
