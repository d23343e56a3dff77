"""Inference: image loading and the prompt-caching Segmenter."""

from metauas.inference.images import IMAGE_SUFFIXES, ImageLike, list_images, load_image, to_model_tensor
from metauas.inference.segmenter import SegmentationResult, Segmenter

__all__ = ["Segmenter", "SegmentationResult", "load_image", "list_images", "to_model_tensor",
           "ImageLike", "IMAGE_SUFFIXES"]
