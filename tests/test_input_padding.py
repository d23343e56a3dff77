"""`ModelConfig.input_padding`: reflect-padded encoder input, features cropped back.

Save/load, Segmenter and ONNX parity with padding: tests/test_comparison.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metauas.errors import CheckpointError, InputError
from metauas.models import MetaUAS, ModelConfig
from metauas.models.comparison import patchmatch_map
from metauas.schemas import check_model_config
from metauas.training.config import TrainConfig

SIZE = 64


def lite(**kw) -> MetaUAS:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="efficientnet-lite0", image_size=SIZE, decoder_channels=(32, 16, 16, 16, 16), **kw)
    return MetaUAS(cfg, pretrained_encoder=True).eval()


def images(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_features_are_the_crop_of_the_mirrored_image():
    model = lite(input_padding=32)
    x = images(2, 1)
    mirrored = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (32, 32), (32, 32)), mode="reflect"))
    with torch.no_grad():
        padded, full = model.encode(x), model.encoder(mirrored)
    assert [tuple(f.shape) for f in padded] == [(2, c, SIZE >> lvl, SIZE >> lvl)
                                                for lvl, c in enumerate(model.encoder.stage_channels)]
    for level, (f, g) in enumerate(zip(padded, full)):
        c = 32 >> level
        assert torch.allclose(f, g[..., c:-c, c:-c], atol=1e-6), level
    plain = lite().encode(x)
    assert float((plain[3] - padded[3]).abs().max()) > 1e-2  # the option changes the features


def test_a_uniform_image_no_longer_has_border_features():
    """Zero padding inside the encoder makes border features of a uniform image differ from the
    centre's; with the input mirrored outward the level-3 features are uniform again."""
    x = torch.full((1, 3, SIZE, SIZE), 0.4)

    def spread(model: MetaUAS) -> float:
        f = model.encode(x)[3][0]
        return float((f - f.mean(dim=(1, 2), keepdim=True)).abs().mean() / f.abs().mean())

    assert spread(lite()) > 0.1
    assert spread(lite(input_padding=32)) < 1e-3


def test_identical_pairs_stay_zero_and_small_images_fall_back_to_replication():
    model = lite(input_padding=64, patchmatch_weight=1.0, patchmatch_neighbourhood=3)
    x = images(1, 2)
    with torch.no_grad():
        f = model.encode(x)
        assert float(patchmatch_map(f, f, (SIZE, SIZE), neighbourhood=3).abs().max()) < 1e-5
        small = model(query=images(1, 3, 32), prompt=images(1, 4, 32))  # side 32 < pad 64: replicate
    assert small.shape == (1, 1, 32, 32) and torch.isfinite(small).all()


@pytest.mark.parametrize("value", [16, -32, 160, 32.0, "32"])
def test_bad_values_are_refused_everywhere(value):
    with pytest.raises(ValueError, match="input_padding"):
        ModelConfig(input_padding=value).validate()
    with pytest.raises(CheckpointError, match="input_padding"):
        check_model_config({"input_padding": value}, "m.safetensors")
    with pytest.raises(InputError, match="input_padding"):
        TrainConfig.from_dict({"input_padding": value})


def test_training_config_carries_the_option():
    assert TrainConfig.from_dict({"input_padding": 32}).model_config().input_padding == 32
    assert TrainConfig().model_config().input_padding == 0
    check_model_config({"input_padding": 0}, "m.safetensors")
