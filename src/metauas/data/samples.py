"""Common in-memory description of an anomaly-segmentation benchmark.

Every reader (MVTec AD, VisA, GoodsAD, generic folders, official MetaUAS meta files) produces
the same `BenchmarkData`, so prompt selection and evaluation never look at a folder layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metauas.errors import InputError
from metauas.io.images import read_mask

__all__ = ["Sample", "CategoryData", "BenchmarkData", "load_mask"]


@dataclass(frozen=True)
class Sample:
    """One test image.

    Attributes:
        path: image file.
        label: 0 normal, 1 anomalous.
        mask: ground-truth mask file (nonzero = anomalous) or None.
        defect: defect type ("good" for normal images).
        whole_image: True when the format says an anomalous image without a mask is anomalous
            everywhere (official MetaUAS meta files); otherwise a missing mask on an anomalous
            image means "no pixel ground truth" and the image counts for image metrics only.
        key: stable relative name (used to match prompt files and to name saved maps).
    """

    path: Path
    label: int
    mask: Path | None = None
    defect: str = "good"
    whole_image: bool = False
    key: str = ""

    @property
    def has_pixel_gt(self) -> bool:
        """True when the image counts for pixel metrics: normal images (all pixels normal), images
        with a mask, and anomalous images marked anomalous everywhere (`whole_image`).
        """
        return self.label == 0 or self.mask is not None or self.whole_image


@dataclass
class CategoryData:
    """Normal training images (prompt pool) and test samples of one category."""

    name: str
    train: list[Path]
    test: list[Sample]


@dataclass
class BenchmarkData:
    """A benchmark: categories plus optional prompt choices shipped with the data.

    Attributes:
        fixed_prompts: seed -> category -> prompt image (official `oneprompt_seedN.json`).
        ranked_prompts: test image key -> train images ranked by similarity (official
            `test-train-top10pair-eb4.json`).
    """

    name: str
    root: Path
    categories: dict[str, CategoryData]
    fixed_prompts: dict[int, dict[str, Path]] = field(default_factory=dict)
    ranked_prompts: dict[str, list[Path]] = field(default_factory=dict)

    def select(self, names: list[str] | None) -> "BenchmarkData":
        """Restrict to the given categories (clear error for unknown ones).

        Raises:
            InputError: a requested category is not in the data set.
        """
        if not names:
            return self
        unknown = [n for n in names if n not in self.categories]
        if unknown:
            raise InputError(
                f"unknown categories {', '.join(unknown)} in {self.root}; "
                f"available: {', '.join(sorted(self.categories))}"
            )
        return BenchmarkData(self.name, self.root, {n: self.categories[n] for n in names},
                             self.fixed_prompts, self.ranked_prompts)


def load_mask(sample: Sample, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """Ground-truth mask of a sample as bool (H, W); None when it has no pixel ground truth.

    ``shape`` is needed only for masks that do not come from a file (normal images, whole-image
    anomalies); it is the (H, W) of the image.
    Raises:
        ValueError: no `shape` given for a sample without a mask file.
        InputError: the mask file cannot be read.
    """
    if sample.mask is not None:
        try:  # the one mask reader: any non-zero colour value is anomalous (benchmark convention)
            return read_mask(sample.mask)
        except InputError as exc:
            raise InputError(f"cannot read ground-truth mask {sample.mask} (for {sample.path}): {exc}") from None
    if shape is None:
        raise ValueError("shape is required for samples without a mask file")
    if sample.label == 0:
        return np.zeros(shape, dtype=bool)
    if sample.whole_image:
        return np.ones(shape, dtype=bool)
    return None
