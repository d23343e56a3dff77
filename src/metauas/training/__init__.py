"""Meta-training on synthetic change pairs."""

from metauas.training.config import TrainConfig
from metauas.training.losses import change_loss

__all__ = ["TrainConfig", "change_loss", "train"]


def train(*args, **kwargs):  # lazy: keeps `import metauas.training` light
    """Run (or continue) a training run; see `metauas.training.trainer.train` (imported on first
    use, so `import metauas.training` stays light).

    Raises:
        CheckpointError: last.pt or `init_from` does not fit the configured model.
        InputError: unusable configuration or training images.
    """
    from metauas.training.trainer import train as _train

    return _train(*args, **kwargs)
