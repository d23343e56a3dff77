"""Reading user images and masks (one reader for every path; see `metauas.io.images`)."""

from metauas.io.images import (ImageLike, LoadedImage, decode_image, list_images, load_image, prompt_depth,
                               read_image, read_mask, to_model_tensor)

__all__ = ["ImageLike", "LoadedImage", "decode_image", "list_images", "load_image", "prompt_depth", "read_image",
           "read_mask", "to_model_tensor"]
