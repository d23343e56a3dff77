"""torch Dataset that synthesises change pairs on the fly.

Why on the fly: an endless variety of pairs costs no disk, and with worker processes the
generator (>= 20 local / >= 5 object pairs per second per core) keeps a CPU training loop fed.
Item i is a pure function of (seed, epoch, i): the random stream is
`numpy.random.default_rng([seed, epoch, i])`, never a per-worker or global RNG, so results are
identical for any number of workers and any access order.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metauas.errors import InputError
from metauas.synthesis.generator import ChangePair, PairGenerator, SynthesisConfig
from metauas.synthesis.io import ImageSources
from metauas.synthesis.objects import Inpainter

_CONFIGURED_PID: int | None = None


def limit_threads() -> None:
    """One OpenCV / torch thread per worker process (workers are the parallelism)."""
    global _CONFIGURED_PID
    if _CONFIGURED_PID == os.getpid():
        return
    import cv2

    cv2.setNumThreads(1)
    if torch.utils.data.get_worker_info() is not None:
        torch.set_num_threads(1)
    _CONFIGURED_PID = os.getpid()


def worker_init_fn(worker_id: int) -> None:  # noqa: ARG001 - DataLoader signature
    """Pass as `DataLoader(worker_init_fn=...)`; items do not depend on it (seeding is per item)."""
    limit_threads()


def pair_to_tensors(pair: ChangePair) -> dict[str, Any]:
    """uint8 HWC arrays -> float CHW tensors in [0, 1]; mask (1, H, W) float {0, 1}."""
    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)

    return {
        "prompt": img(pair.prompt),
        "query": img(pair.query),
        "mask": torch.from_numpy(pair.mask[None].astype(np.float32)),
        "change_type": pair.change_type,
    }


class SyntheticPairDataset(Dataset):
    """`length` synthetic pairs; `ds[i]` -> dict(prompt, query, mask, change_type).

    `set_epoch(e)` switches to a fresh set of pairs (still deterministic given seed, e, i).
    """

    def __init__(self, sources: ImageSources, config: SynthesisConfig | None = None,
                 length: int = 10000, seed: int = 0,
                 inpainter: Inpainter | str | None = None) -> None:
        if int(length) <= 0:
            raise InputError(f"dataset length must be positive, got {length}")
        self.generator = PairGenerator(sources, config, inpainter)
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def config(self) -> SynthesisConfig:
        """The `SynthesisConfig` of the generator."""
        return self.generator.config

    def set_epoch(self, epoch: int) -> None:
        """Switch to epoch `epoch`: item i becomes a pure function of (seed, epoch, i), a fresh set of
        pairs.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def pair(self, index: int) -> ChangePair:
        """The raw ChangePair of item `index` (uint8 arrays, meta).

        Raises:
            IndexError: `index` outside [-len, len).
        """
        if not -self.length <= index < self.length:
            raise IndexError(index)
        index %= self.length
        limit_threads()
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.generator.generate(rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return pair_to_tensors(self.pair(index))
