"""Synthetic change pairs (prompt, query, mask) from real images, for MetaUAS training.

    from metauas.synthesis import SynthesisConfig, PairGenerator, SyntheticPairDataset, ImageSources
    sources = ImageSources.from_dirs(photos=..., objects=..., textures=...)
    pair = PairGenerator(sources, SynthesisConfig(size=256)).generate(seed)

The torch Dataset is imported lazily so that the generator works without importing torch.
"""

from __future__ import annotations

from typing import Any

from metauas.synthesis.generator import (
    ALL_TYPES,
    CHANGE_TYPES,
    DEFECT_TYPES,
    LOCAL_TYPES,
    NO_CHANGE,
    OBJECT_TYPES,
    ChangePair,
    PairGenerator,
    SynthesisConfig,
)
from metauas.synthesis.io import ImageRecord, ImageSources, load_coco_instances
from metauas.synthesis.objects import Inpainter, OpenCVInpainter

__all__ = [
    "ALL_TYPES", "CHANGE_TYPES", "DEFECT_TYPES", "LOCAL_TYPES", "NO_CHANGE", "OBJECT_TYPES", "ChangePair",
    "ImageRecord", "ImageSources", "Inpainter", "OpenCVInpainter", "PairGenerator",
    "SynthesisConfig", "SyntheticPairDataset", "load_coco_instances", "worker_init_fn",
]


def __getattr__(name: str) -> Any:
    if name in ("SyntheticPairDataset", "worker_init_fn", "pair_to_tensors"):
        from metauas.synthesis import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
