"""Choosing the normal prompt image(s) for each query (one-shot, best, k-shot).

* ``random``: one training image per category drawn with a seed (same prompt for every query
  of the category); several seeds give the mean +- std of the paper's tables.
* ``best`` (the paper's MetaUAS*): per query, the training image whose global encoder
  descriptor is most similar (cosine).  The descriptor is the L2-normalised global average of
  the deepest encoder stage (f5) of the model's own frozen encoder, so no extra network is
  needed; training-image descriptors are computed once per category and cached on disk.
* ``best+`` (MetaUAS*+): the ``best`` prompt, with the model's map fused with the
  training-free patch-matching map (see `metauas.evaluation.patchmatch`).
* ``kshot``: k training images drawn with the seed, fed through the model's multi-prompt path.

When a data set ships prompt choices (official ``oneprompt_seedN.json`` /
``test-train-top10pair-eb4.json``), those are used instead, so results are comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metauas.atomic import atomic_write
from metauas.errors import InputError

__all__ = [
    "PROMPT_STRATEGIES",
    "random_prompts",
    "global_descriptor",
    "rank_by_similarity",
    "DescriptorCache",
]

PROMPT_STRATEGIES = ("random", "best", "best+", "kshot")


def random_prompts(train: Sequence[Path], seed: int, k: int = 1) -> list[Path]:
    """k distinct training images drawn with ``seed`` (order of ``train`` is sorted first).

    Raises:
        InputError: no training images, or fewer than `k`.
    """
    pool = sorted(Path(p) for p in train)
    if not pool:
        raise InputError("no normal training images to draw prompts from")
    if k > len(pool):
        raise InputError(f"k={k} prompts requested but only {len(pool)} training images exist")
    idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return [pool[int(i)] for i in idx]


def global_descriptor(features: Sequence[torch.Tensor], level: int = -1) -> torch.Tensor:
    """(B, C) L2-normalised global-average-pooled features of one encoder stage."""
    f = features[level].float()
    return F.normalize(f.mean(dim=(-2, -1)), dim=1)


def rank_by_similarity(query_desc: torch.Tensor, train_desc: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Indices (N, k) of the k most cosine-similar training descriptors per query (ties: lower index).

    Raises:
        InputError: no training descriptors.
    """
    if train_desc.shape[0] == 0:
        raise InputError("no training descriptors to rank")
    k = min(k, train_desc.shape[0])
    sim = query_desc.float() @ train_desc.float().T
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # ties: lower index first
    return order[:, :k].long()


class DescriptorCache:
    """Global descriptors of image files, cached on disk per (model, size, file list).

    ``describe`` is a callable mapping a list of image paths to a (N, C) tensor; it is only
    called for a list whose cache entry is missing or stale (files changed).
    """

    def __init__(self, cache_dir: str | Path | None, model_id: str, size: int) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.model_id = model_id
        self.size = size

    def _key(self, paths: Sequence[Path]) -> str:
        h = hashlib.sha256()
        h.update(f"{self.model_id}|{self.size}".encode())
        for p in paths:
            st = os.stat(p)
            h.update(f"|{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]

    def get(self, name: str, paths: Sequence[Path],
            describe: Callable[[Sequence[Path]], torch.Tensor]) -> torch.Tensor:
        """Global descriptors of `paths`, from the cache folder when a file for exactly these paths
        exists, else computed with `describe` and stored (atomically); an unreadable cache file is
        recomputed.

        Args:
            name: label of the set (e.g. the category), part of the cache file name.
            paths: the images, in order.
            describe: paths -> (N, C) descriptors (`global_descriptor` of their encoder features).
        Returns:
            (N, C) float32 CPU tensor.
        """
        if self.cache_dir is None:
            return describe(paths).detach().float().cpu()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        file = self.cache_dir / f"{safe}-{self._key(paths)}.npz"
        if file.is_file():
            try:
                with np.load(file) as z:
                    if json.loads(str(z["paths"])) == [str(p) for p in paths]:
                        return torch.from_numpy(z["desc"])
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: recompute
        desc = describe(paths).detach().float().cpu()
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, desc=desc.numpy(), paths=json.dumps([str(p) for p in paths]))

        atomic_write(file, write)
        return desc
