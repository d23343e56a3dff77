"""The PyTorch backend of the one predictor loop (`metauas.runtime.predictor.Predictor`):
encode the prompt(s) once, segment many queries in batches.

The official code re-encodes the prompt for every query; here the prompt's encoder features
and its alignment keys are computed once (`set_prompt`) and reused, so each query costs one
encoder pass plus the alignment/decoder.

Several normal images can be given in two ways:

* ``set_prompt([g1, g2, ...])`` (k-shot): every query is compared with every prompt. With
  ``kshot="min"`` (default) each prompt gives its own map and the pixel-wise minimum is kept:
  a pixel is anomalous only if it differs from *every* normal image, so a query identical to
  one of the prompts scores no higher than with that prompt alone. ``kshot="mean"`` is the
  model's own k-shot path (aligned prompt features averaged before decoding).
* ``set_prompt_pool([g1, ..., gN], k=1)`` (the paper's MetaUAS*, "best" prompt): per query,
  the k pool images whose global encoder descriptor is most cosine-similar are chosen
  (`metauas.prompts.global_descriptor` / `rank_by_similarity`, the code ``metauas eval
  --prompt best`` uses) and the query is compared with those (pixel-wise minimum as above).
  Each result records which pool images were used.

With `optimize=True` (the default) queries run through `metauas.models.fast.optimize_for_inference`,
an inference copy of the model (BatchNorm folded, channels_last, cheaper last UNet block) whose
probabilities stay within 1e-4 of the eager model's (checked in tests/test_models.py and
benchmarks/speed.py). The copy is a snapshot: weights changed later on `segmenter.model` are
not seen; build a new Segmenter after training.
"""

from __future__ import annotations

from typing import Sequence

import torch

from metauas.constants import check_size
from metauas.errors import InputError
from metauas.io.images import ImageLike, to_model_tensor
from metauas.models import DEFAULT_MODEL, MetaUAS, PromptFeatures, load_model
from metauas.models.fast import optimize_for_inference, prepare_input
from metauas.prompts import global_descriptor, rank_by_similarity
from metauas.runtime.predictor import (DEFAULT_MEMORY_BUDGET_GIB, Predictor, SegmentationResult, as_list,
                                       to_original_size)
from metauas.scoring import DEFAULT_TOP_FRACTION
from metauas.tiling import Predict, model_predictor

KSHOT_MODES = ("min", "mean")
MAX_POOL = 256  # prompt-pool images kept encoded in memory (~2 MB each at 256 px)

__all__ = ["Segmenter", "SegmentationResult", "to_original_size", "KSHOT_MODES", "MAX_POOL"]


class Segmenter(Predictor):
    """Anomaly segmentation of query images against one or several normal prompt images.

    Args:
        model: a `MetaUAS` or the name/path of one (default: the bundled default model).
        size: model input size in px (multiple of 32; default: the model's training size).
        device: torch device.
        batch_size: queries (and tiles) per model call; None: from ``memory_budget``
            (`Predictor.auto_batch`).
        optimize: run the inference-optimised copy of the model (same maps within 1e-4).
        kshot: "min" (pixel-wise minimum of one map per prompt) or "mean" (the model's
            averaged k-shot path); see the module docstring.
        top_fraction: share of pixels averaged into the image score (`metauas.scoring`).
        tile: "off" (default), "auto" or a tile side in px: segment large queries in tiles at
            their own scale (`metauas.runtime.predictor`, docs/highres.md).
        memory_budget: peak-memory budget in GiB for automatic batch sizes (default 2).
    Raises:
        InputError: for an invalid size, batch size, k-shot mode, tile option or budget.
        CheckpointError: when the model name/path cannot be loaded.
    """

    backend = "torch"

    def __init__(self, model: MetaUAS | str = DEFAULT_MODEL, size: int | None = None,
                 device: str | torch.device = "cpu", batch_size: int | None = None, optimize: bool = True,
                 kshot: str = "min", top_fraction: float = DEFAULT_TOP_FRACTION, tile: str | int | None = "off",
                 memory_budget: float = DEFAULT_MEMORY_BUDGET_GIB) -> None:
        self.model = load_model(model) if isinstance(model, str) else model
        self.model.eval()
        super().__init__(check_size(size or self.model.config.image_size), batch_size, top_fraction, tile,
                         memory_budget)
        if kshot not in KSHOT_MODES:
            raise InputError(f"kshot must be one of {KSHOT_MODES}, got {kshot!r}")
        self.device = torch.device(device)
        self.model.to(self.device)
        self.optimize = optimize
        # the network that actually runs: the model itself or its optimized inference copy
        self.inference_model: MetaUAS = optimize_for_inference(self.model) if optimize else self.model
        self.kshot = kshot
        self._prompts: list[PromptFeatures] = []  # one entry per prompt (or one stacked, kshot=mean)
        self._pool: torch.Tensor | None = None  # (N, C) descriptors when a prompt pool is set
        self.pool_k = 1
        self._tiler: Predict | None = None

    # ------------------------------------------------------------------ prompt
    def _encode_prompts(self, batch: torch.Tensor) -> None:
        self.set_prompt_tensor(batch)

    def set_prompt_tensor(self, prompts: torch.Tensor) -> None:
        """Like `set_prompt` for (K,3,S,S) model-sized float tensors in [0,1] (K prompts).

        Raises:
            InputError: when the tensor is not (K,3,S,S) at this segmenter's size.
        """
        batch = self._check_prompt_tensor(prompts)
        self._remember_prompts(None)
        net = self.inference_model
        with torch.inference_mode():
            if self.kshot == "mean" and batch.shape[0] > 1:
                self._prompts = [net.prepare_prompt(batch[None])]  # (1,K,3,S,S): averaged k-shot
            else:
                self._prompts = [net.prepare_prompt(prepare_input(net, batch[i:i + 1]))
                                 for i in range(batch.shape[0])]
        self._pool = None
        self.num_prompts = int(batch.shape[0])

    def set_prompt_pool(self, images: Sequence[ImageLike], k: int = 1) -> None:
        """A pool of normal images; each query is compared with its ``k`` most similar ones
        (cosine similarity of global encoder descriptors; the paper's MetaUAS*).

        Raises:
            InputError: for an empty pool, more than MAX_POOL images, k < 1 or unreadable images.
        """
        images = as_list(images)
        if not images:
            raise InputError("the prompt pool is empty")
        if len(images) > MAX_POOL:
            raise InputError(f"the prompt pool has {len(images)} images; at most {MAX_POOL} are supported")
        items, loaded = self._read_prompt_images(images)
        self.set_prompt_pool_tensor(torch.cat([to_model_tensor(image.rgb, self.size) for image in loaded]), k)
        self._remember_prompts(items, loaded)

    def set_prompt_pool_tensor(self, pool: torch.Tensor, k: int = 1) -> None:
        """Like `set_prompt_pool` for (N,3,S,S) model-sized float tensors in [0,1].

        Raises:
            InputError: k < 1, or a tensor that is not (N,3,S,S).
        """
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        batch = self._check_prompt_tensor(pool)
        self._remember_prompts(None)
        net = self.inference_model
        prompts, descriptors = [], []
        with torch.inference_mode():
            for i in range(batch.shape[0]):
                features = net.encode(prepare_input(net, batch[i:i + 1]))
                prompts.append(net.prompt_from_features(features))
                descriptors.append(global_descriptor(features))
        self._prompts = prompts
        self._pool = torch.cat(descriptors)
        self.pool_k = min(int(k), len(prompts))
        self.num_prompts = len(prompts)

    def _check_prompt_tensor(self, prompts: torch.Tensor) -> torch.Tensor:
        if prompts.dim() == 3:
            prompts = prompts[None]
        if prompts.dim() != 4 or prompts.shape[0] < 1 or prompts.shape[1] != 3 \
                or tuple(prompts.shape[-2:]) != (self.size, self.size):
            raise InputError(f"prompt tensor must be (K,3,{self.size},{self.size}), got {tuple(prompts.shape)}")
        return prompts.to(self.device, torch.float32)

    @property
    def prompt_features(self) -> PromptFeatures:
        """The first prompt's cached features (all prompts: `prompts_for`).

        Raises:
            InputError: no prompt set.
        """
        if not self._prompts:
            raise InputError("no prompt set: call set_prompt() with a normal image first")
        return self._prompts[0]

    # ------------------------------------------------------------------ queries
    def prompts_for(self, query_features: list[torch.Tensor]) -> list[list[int]]:
        """Indices of the prompts each query of a batch is compared with.

        Raises:
            InputError: no prompt set.
        """
        if not self._prompts:
            raise InputError("no prompt set: call set_prompt() with a normal image first")
        n = query_features[0].shape[0]
        if self._pool is None:
            return [list(range(len(self._prompts)))] * n
        ranked = rank_by_similarity(global_descriptor(query_features), self._pool, self.pool_k)
        return [[int(i) for i in row] for row in ranked]

    def predict_tensor(self, queries: torch.Tensor, return_prompts: bool = False):
        """(B,3,S,S) in [0,1] -> anomaly probabilities (B,1,S,S), using the cached prompt(s).

        With several prompts per query the pixel-wise minimum over prompts is returned.
        ``return_prompts=True`` also returns the prompt indices used per query.

        Raises:
            InputError: no prompt set.
        """
        net = self.inference_model
        with torch.inference_mode():
            features = net.encode(prepare_input(net, queries.to(self.device)))
            chosen = self.prompts_for(features)
            users: dict[int, list[int]] = {}
            for q, ids in enumerate(chosen):
                for p in ids:
                    users.setdefault(p, []).append(q)
            probs: torch.Tensor | None = None
            for p, qs in users.items():
                index = torch.tensor(qs, device=features[0].device)
                part = net.anomaly_map([f.index_select(0, index) for f in features], self._prompts[p])
                if probs is None:
                    probs = torch.full((features[0].shape[0], *part.shape[1:]), float("inf"),
                                       dtype=part.dtype, device=part.device)
                probs[index] = torch.minimum(probs[index], part)
            probs = probs.contiguous()  # type: ignore[union-attr]
        return (probs, chosen) if return_prompts else probs

    def _tile_predictor(self) -> tuple[Predict, str]:
        if self._tiler is None:  # the running network (already the optimized copy when optimize=True)
            self._tiler = model_predictor(self.inference_model, optimize=False)
        return self._tiler, "native"

    def _tile_prompts(self, query: torch.Tensor) -> list[int]:
        if self.kshot == "mean" and self.num_prompts > 1:
            raise InputError("tiling compares each tile with each prompt (pixel-wise minimum); "
                             "use kshot='min' or tile='off' for kshot='mean'")
        if self._pool is None:
            return super()._tile_prompts(query)
        net = self.inference_model
        with torch.inference_mode():
            features = net.encode(prepare_input(net, query.to(self.device)))
        return self.prompts_for(features)[0]

    def _predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
        maps, chosen = self.predict_tensor(batch, return_prompts=True)
        return maps.float().cpu(), chosen

    @staticmethod
    def _to_original_size(prob: torch.Tensor, hw: tuple[int, int]):
        return to_original_size(prob, hw)
