"""A tiny procedural change-pair data set for tests and smoke runs (no image files needed).

Prompt = smooth random colour field; query = the same with a few rectangles/ellipses of
another colour; mask = where they are. Item i depends only on (seed, i).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


class ToyChangeDataset(Dataset):
    """Generated change pairs for tests and smoke runs (no image files needed).

    Item i is a pure function of (seed, i): a smooth random colour field (prompt) and the same
    field with 0-2 filled ellipses of one random colour (query); "prompt" and "query" are
    (3,S,S) float in [0,1], "mask" (1,S,S) float in {0,1} marks the ellipses.

    Args:
        size: S in px.
        length: number of items.
        seed: base seed.
    """
    def __init__(self, size: int = 64, length: int = 10_000, seed: int = 0) -> None:
        self.size, self.length, self.seed = size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        coarse = rng.random((4, 4, 3)).astype(np.float32)
        base = cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC)
        base = np.clip(base + rng.normal(0, 0.03, (s, s, 3)).astype(np.float32), 0, 1)
        query = base.copy()
        mask = np.zeros((s, s), np.uint8)
        for _ in range(int(rng.integers(0, 3))):
            centre = tuple(int(v) for v in rng.integers(s // 8, s - s // 8, 2))
            axes = tuple(int(v) for v in rng.integers(max(2, s // 16), max(3, s // 5), 2))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        colour = rng.random(3).astype(np.float32)
        query[mask > 0] = colour
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
        return {"prompt": to_t(base), "query": to_t(query),
                "mask": torch.from_numpy(mask.astype(np.float32))[None]}
