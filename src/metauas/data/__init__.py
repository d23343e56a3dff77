"""Benchmark data: readers (MVTec AD, VisA, GoodsAD, folders, official MetaUAS meta files)
and a generator of small MVTec-format data sets."""

from metauas.data.generate import MakeDatasetConfig, make_mvtec_dataset, procedural_texture, write_metauas_meta
from metauas.data.readers import (
    DATASET_KINDS,
    open_dataset,
    read_folder,
    read_goods,
    read_metauas_json,
    read_mvtec,
    read_visa,
)
from metauas.data.samples import BenchmarkData, CategoryData, Sample, load_mask

__all__ = [
    "DATASET_KINDS", "BenchmarkData", "CategoryData", "Sample", "load_mask", "open_dataset",
    "read_mvtec", "read_goods", "read_visa", "read_folder", "read_metauas_json",
    "MakeDatasetConfig", "make_mvtec_dataset", "procedural_texture", "write_metauas_meta",
]
