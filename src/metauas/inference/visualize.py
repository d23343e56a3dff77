"""Moved to `metauas.runtime.visualize`; re-exported for callers of the earlier API."""

from metauas.runtime.visualize import (binary_mask, colour_bar, encode_png, heat_overlay, map_to_uint16,
                                       read_map_png, render_overlay, save_map_png, save_mask_png, save_overlay)

__all__ = ["binary_mask", "colour_bar", "encode_png", "heat_overlay", "map_to_uint16", "read_map_png",
           "render_overlay", "save_map_png", "save_mask_png", "save_overlay"]
