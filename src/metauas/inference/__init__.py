"""Inference faces and compatibility names: `metauas segment/calibrate/export/info` live in
`commands`; the machinery moved to `metauas.runtime` and `metauas.io` (re-exported here)."""

from metauas.constants import IMAGE_SUFFIXES
from metauas.io.images import ImageLike, list_images, load_image, read_image, to_model_tensor
from metauas.runtime.predictor import SegmentationResult
from metauas.runtime.torch_backend import Segmenter

__all__ = ["Segmenter", "SegmentationResult", "load_image", "read_image", "list_images", "to_model_tensor",
           "ImageLike", "IMAGE_SUFFIXES"]
