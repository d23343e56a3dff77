"""metauas: universal visual anomaly segmentation from one normal image (MetaUAS)."""

__version__ = "0.1.0"

from metauas.errors import CheckpointError, InputError, MetaUASError

__all__ = ["__version__", "MetaUASError", "InputError", "CheckpointError"]
