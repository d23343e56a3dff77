"""The model store: every way to open or save a model goes through here.

* `open_model(name_or_path)`: a bundled model by name (`available_models`), or a file
  (our safetensors with the config inside, or an official ``.ckpt``); `open_model(None)` is
  the bundled default, or, where no default is installed, a seeded untrained decoder on the
  ImageNet Lite0 encoder (with a warning).
* `model_from_config(config)`: the one constructor from a `ModelConfig` besides
  ``MetaUAS(config)`` (it decides whether the encoder starts from ImageNet weights).
* `model_digest(model)`: SHA-256 of the weights, the identity stored thresholds and ONNX
  exports are keyed on.
* Saving: `save_safetensors` (re-exported from `checkpoint`).

`MetaUAS.from_pretrained` is attached here, so the module file of the network (`metauas.py`)
does not import the store (no import cycle).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from metauas.errors import CheckpointError
from metauas.models.checkpoint import load_checkpoint, load_official_checkpoint, save_safetensors
from metauas.models.encoders import ENCODERS
from metauas.models.metauas import MetaUAS, ModelConfig
from metauas.paths import weights_dir

DEFAULT_MODEL = "metauas-lite0-256"
UNTRAINED_NAME = "untrained-lite0"

__all__ = ["DEFAULT_MODEL", "UNTRAINED_NAME", "available_models", "model_card", "load_model", "open_model",
           "model_from_config", "model_digest", "weights_dir", "load_checkpoint", "load_official_checkpoint",
           "save_safetensors"]


def available_models() -> list[str]:
    """Names of the models bundled with the installed package (sorted)."""
    folder = weights_dir()
    return sorted(p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def model_card(name: str) -> dict:
    """The JSON model card beside a bundled model ({} when there is none)."""
    card = weights_dir() / f"{name}.json"
    return json.loads(card.read_text()) if card.is_file() else {}


def load_model(name_or_path: str | Path = DEFAULT_MODEL, image_size: int | None = None) -> MetaUAS:
    """A bundled model by name, or a checkpoint file by path, in eval mode.

    Raises:
        CheckpointError: neither a bundled name nor a readable checkpoint file.
    """
    name = str(name_or_path)
    bundled = weights_dir() / f"{name}.safetensors"
    if bundled.is_file():
        return load_checkpoint(bundled, image_size)
    path = Path(name).expanduser()
    if path.exists():
        return load_checkpoint(path, image_size)
    known = ", ".join(available_models()) or "none installed"
    raise CheckpointError(f"no model named {name!r} and no such file (bundled models: {known})")


def model_from_config(config: ModelConfig, pretrained_encoder: bool | None = None) -> MetaUAS:
    """A fresh MetaUAS for `config`; the encoder starts from ImageNet weights when its spec
    ships them (`pretrained_encoder=None`), or as told.

    Raises:
        ValueError: invalid config (see `ModelConfig.validate`).
    """
    spec = ENCODERS.get(config.encoder)
    has_weights = spec is not None and spec.weights_package is not None
    use = has_weights if pretrained_encoder is None else (pretrained_encoder and has_weights)
    return MetaUAS(config, pretrained_encoder=use)


def _warn_untrained(text: str) -> None:
    print(f"metauas: WARNING: {text}", file=sys.stderr)


def open_model(name_or_path: str | None = None,
               warn: Callable[[str], None] = _warn_untrained) -> tuple[MetaUAS, str]:
    """(model in eval mode, its name): the requested model; without one, the bundled default,
    or (until it exists) an untrained decoder on the ImageNet Lite0 encoder, announced through
    `warn`. The untrained decoder is seeded, so its (meaningless) maps are reproducible.

    Raises:
        CheckpointError: a requested model that cannot be opened.
    """
    if name_or_path:
        return load_model(name_or_path), str(name_or_path)
    if DEFAULT_MODEL in available_models():
        return load_model(DEFAULT_MODEL), DEFAULT_MODEL
    warn("no trained default model is installed; using an UNTRAINED decoder on the ImageNet "
         "EfficientNet-Lite0 encoder. Maps are meaningless until a trained model is used.")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_from_config(ModelConfig(encoder="efficientnet-lite0"))
    return model.eval(), UNTRAINED_NAME


def model_digest(model: nn.Module) -> str:
    """SHA-256 of the state dict (names, shapes, values): identifies exactly these weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _from_pretrained(cls: type, name_or_path: str) -> MetaUAS:
    """A bundled model by name or a checkpoint file (see `metauas.models.store.load_model`).

    Raises:
        CheckpointError: neither a bundled name nor a readable checkpoint.
    """
    return load_model(name_or_path)


MetaUAS.from_pretrained = classmethod(_from_pretrained)  # type: ignore[attr-defined]


def build_model(encoder: str = "efficientnet-lite0", alignment: str = "sa", fusion: str = "cat",
                num_aligned: int = 3, pretrained: bool = True, image_size: int = 256) -> MetaUAS:
    """A MetaUAS with an ImageNet-pretrained encoder (when its spec ships weights and
    `pretrained`) and a fresh decoder (`model_from_config` of the given fields).

    Raises:
        ValueError: unknown encoder/alignment/fusion, or image_size not a multiple of 32.
    """
    config = ModelConfig(encoder=encoder, alignment=alignment, fusion=fusion, num_aligned=num_aligned,
                         image_size=image_size)
    return model_from_config(config, pretrained_encoder=pretrained)
