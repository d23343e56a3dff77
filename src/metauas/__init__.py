"""metauas: universal visual anomaly segmentation from one normal image (MetaUAS)."""

# Before anything imports torch: OpenMP reads its wait policy once, when torch loads it.
from metauas.threads import set_default_wait_policy as _set_default_wait_policy

_set_default_wait_policy()

__version__ = "0.1.0"

from metauas.errors import CheckpointError, InputError, MetaUASError

__all__ = ["__version__", "MetaUASError", "InputError", "CheckpointError"]
