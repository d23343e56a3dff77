"""Meta-training on synthetic change pairs."""

from metauas.training.config import TrainConfig
from metauas.training.losses import change_loss

__all__ = ["TrainConfig", "change_loss", "train"]


def train(*args, **kwargs):  # lazy: keeps `import metauas.training` light
    from metauas.training.trainer import train as _train

    return _train(*args, **kwargs)
