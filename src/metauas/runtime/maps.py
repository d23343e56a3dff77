"""Model-size anomaly maps of (query, prompt) pairs, through the steps the runtime uses.

`Segmenter.predict_tensor` (the PyTorch backend of `metauas.runtime.predictor.Predictor`)
turns a model-sized query batch into maps with: `prepare_input` -> `MetaUAS.encode` ->
`MetaUAS.prepare_prompt` / `prompt_from_features` -> `MetaUAS.anomaly_map` (the network's
probabilities with the model's temperature and, when ``config.patchmatch_weight > 0``, its
patch-matching fusion). It caches one prompt for many queries; `paired_maps` runs the same
steps for batches where every query has its own prompt (training validation, synthetic
benchmarks), and also returns the logits so a caller can compute a loss without a second
decoder pass. `tests/test_training.py` checks that both give the same maps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from metauas.models.fast import prepare_input
from metauas.models.metauas import MetaUAS

__all__ = ["PairMaps", "paired_maps"]


class PairMaps(NamedTuple):
    """What `paired_maps` returns.

    Attributes:
        logits: (B,1,S,S) network logits (`MetaUAS.forward_features`), before temperature.
        anomaly_map: (B,1,S,S) float in [0,1], the map a `Segmenter` gives for the same query
            and prompt at model size (`MetaUAS.anomaly_map`).
    """

    logits: torch.Tensor
    anomaly_map: torch.Tensor


def paired_maps(model: MetaUAS, queries: torch.Tensor, prompts: torch.Tensor) -> PairMaps:
    """Anomaly maps of queries, each against its own prompt, with the runtime's map rule.

    Runs under the caller's grad mode (wrap in `torch.no_grad()` for evaluation) and in the
    model's current train/eval mode (validation puts the model in eval mode first, as the
    `Segmenter` does).

    Args:
        model: a `MetaUAS` (eager or `optimize_for_inference` copy).
        queries: (B,3,S,S) float in [0,1], S a multiple of 32, on the model's device.
        prompts: (B,3,S,S) one prompt per query, (1,3,S,S) one shared prompt, or (B,K,3,S,S)
            k-shot (the model's averaged k-shot path), float in [0,1].
    Returns:
        `PairMaps` (logits, anomaly_map), both (B,1,S,S).
    Raises:
        ValueError: wrong shapes, S not a multiple of 32, or a prompt batch that is neither 1
            nor B.
    """
    query_features = model.encode(prepare_input(model, queries))
    prompt = model.prompt_from_features(model.encode(prepare_input(model, prompts)))
    logits = model.forward_features(query_features, prompt)
    return PairMaps(logits, model.anomaly_map_from_logits(logits, query_features, prompt))
