"""Moved to `metauas.io.images` (the one image and mask reader); re-exported here for callers of
the earlier API."""

from metauas.constants import IMAGE_SUFFIXES
from metauas.io.images import (ALLOWED_DESCRIPTION, ALLOWED_FORMATS, MAX_PIXELS, MIN_SIDE, ImageLike, LoadedImage,
                               decode_image, decode_loaded, list_images, load_image, probe_image, prompt_depth,
                               read_image, read_mask, to_model_tensor)

__all__ = ["IMAGE_SUFFIXES", "ALLOWED_DESCRIPTION", "ALLOWED_FORMATS", "MAX_PIXELS", "MIN_SIDE", "ImageLike",
           "LoadedImage", "decode_image", "decode_loaded", "list_images", "load_image", "probe_image",
           "prompt_depth", "read_image", "read_mask", "to_model_tensor"]
