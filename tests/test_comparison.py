"""The comparison architecture, the patch-matching fusion and the map temperature."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from metauas.inference import Segmenter
from metauas.inference.export import OnnxExportConfig, export_onnx
from metauas.inference.onnx_backend import OnnxRunner
from metauas.models import MetaUAS, ModelConfig, load_checkpoint, save_safetensors
from metauas.models.comparison import (nearest_cosine_distance, nearest_relative_l2_distance, neighbourhood_average,
                                       patchmatch_map)
from metauas.training.config import TrainConfig
from metauas.training.trainer import build_model_from_config, parameter_groups

SIZE = 64


def lite(**kw) -> MetaUAS:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="efficientnet-lite0", image_size=SIZE, decoder_channels=(32, 16, 16, 16, 16), **kw)
    return MetaUAS(cfg, pretrained_encoder=True).eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_nearest_distance_is_zero_for_identical_features_and_pools_k_prompts():
    q = torch.randn(2, 8, 5, 6)
    assert float(nearest_cosine_distance(q, q).abs().max()) < 1e-5
    other = torch.randn(2, 8, 5, 6)
    d_other = nearest_cosine_distance(q, other)
    assert float(d_other.min()) > 1e-3
    pooled = nearest_cosine_distance(q, torch.stack([other, q], dim=1))  # (B,K,C,h,w): q is one of them
    assert float(pooled.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="do not fit"):
        nearest_cosine_distance(q, torch.randn(2, 9, 5, 6))


def test_zero_initialised_comparison_computes_what_the_source_model_computed(tmp_path):
    base = lite()
    path = save_safetensors(base, tmp_path / "base.safetensors")
    cfg = TrainConfig(encoder="efficientnet-lite0", image_size=SIZE, decoder_channels=[32, 16, 16, 16, 16],
                      comparison="cosine", init_from=str(path))
    model = build_model_from_config(cfg).eval()
    q, p = images(2, 1), images(2, 2)
    with torch.no_grad():
        assert float((model(q, p) - base(q, p)).abs().max()) == 0.0
    names = {n for n, _ in model.named_parameters() if n.startswith("comparison.")}
    assert names and all(float(t.detach().abs().max()) == 0 for n, t in model.named_parameters() if n in names)
    groups = parameter_groups(model, cfg)
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(cfg.lr * cfg.comparison_lr_scale)
    # the comparison signals reach the logits once their weights are not zero
    with torch.no_grad():
        model.comparison.head.weight.fill_(0.5)
        assert float((model(q, p) - base(q, p)).abs().max()) > 1e-3


def test_fusion_and_temperature_follow_their_formula():
    model = lite(comparison="cosine", patchmatch_weight=0.4, temperature=2.0)
    q, p = images(2, 3), images(1, 4)
    with torch.no_grad():
        qf, prompt = model.encode(q), model.prepare_prompt(p)
        logits = model.forward_features(qf, prompt)
        pm = patchmatch_map(qf, prompt.expand_to(2).features, (SIZE, SIZE))
        expected = 0.6 * torch.sigmoid(logits / 2.0) + 0.4 * pm
        assert float((model.anomaly_map(qf, prompt) - expected).abs().max()) < 1e-6
        assert float((model(q, p.expand(2, -1, -1, -1)) - expected).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="patchmatch_weight"):
        ModelConfig(patchmatch_weight=1.5).validate()


def _nearest_l2_reference(q: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """torch.cdist over all pooled prompt positions, divided by their mean norm: (B, h*w)."""
    flat = (prompt.permute(0, 2, 1, 3, 4) if prompt.dim() == 5 else prompt).flatten(2).expand(q.shape[0], -1, -1)
    d = torch.cdist(q.flatten(2).transpose(1, 2), flat.transpose(1, 2)).amin(dim=2)
    return d / flat.norm(dim=1).mean(dim=1, keepdim=True)


def test_relative_l2_distance_is_patchcores_distance_over_the_prompts_mean_norm():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 16, 5, 6, generator=g) * 7
    shared, kshot = torch.randn(1, 16, 4, 4, generator=g) * 7, torch.randn(2, 3, 16, 4, 5, generator=g)
    for prompt in (shared, kshot):
        d = nearest_relative_l2_distance(q, prompt)
        assert d.shape == (2, 1, 5, 6)
        assert float((d.flatten(1) - _nearest_l2_reference(q, prompt)).abs().max()) < 1e-4
    assert float(nearest_relative_l2_distance(q, q).abs().max()) == 0.0  # exact, not rounding noise
    other = torch.randn(2, 16, 5, 6, generator=g)
    assert float(nearest_relative_l2_distance(q, torch.stack([other, q], dim=1)).abs().max()) == 0.0  # q is one of K
    # scale-free: scaling both sides leaves it unchanged; unlike cosine it sees a contrast change
    assert torch.allclose(nearest_relative_l2_distance(3 * q, 3 * shared), nearest_relative_l2_distance(q, shared))
    assert float(nearest_cosine_distance(2 * q, q).abs().max()) < 1e-5
    assert float(nearest_relative_l2_distance(2 * q, q).min()) > 0.1
    with pytest.raises(ValueError, match="do not fit"):
        nearest_relative_l2_distance(q, torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="distance"):
        patchmatch_map([q] * 5, [shared] * 5, (10, 12), distance="manhattan")
    with pytest.raises(ValueError, match="patchmatch_distance"):
        ModelConfig(patchmatch_distance="manhattan").validate()


@pytest.mark.parametrize("padding,distance", [(0, "cosine"), (32, "l2")])
def test_config_round_trip_and_segmenter_onnx_parity(tmp_path, padding, distance):
    """Every map option survives save/load, and Segmenter (optimised copy) and ONNX give the eager
    model's maps; with ``input_padding`` the ONNX encoder graph carries the reflect padding, with
    ``patchmatch_distance="l2"`` the decoder graph the Euclidean patch matching."""
    model = lite(comparison="cosine", patchmatch_weight=0.3, temperature=1.5, patchmatch_neighbourhood=3,
                 input_padding=padding, patchmatch_distance=distance)
    with torch.no_grad():
        model.comparison.head.weight.normal_(0, 0.5)
        for conv in model.comparison.inject.values():
            conv.weight.normal_(0, 0.1)
    path = save_safetensors(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path).eval()
    assert asdict(loaded.config)["patchmatch_weight"] == 0.3 and loaded.config.comparison == "cosine"
    assert loaded.config.patchmatch_neighbourhood == 3 and loaded.config.input_padding == padding
    assert loaded.config.patchmatch_distance == distance
    q, p = images(3, 5), images(1, 6)
    with torch.no_grad():
        expected = model(q, p.expand(3, -1, -1, -1))
    seg = Segmenter(loaded)
    seg.set_prompt_tensor(p)
    assert float((seg.predict_tensor(q) - expected).abs().max()) < 1e-4
    export_onnx(loaded, tmp_path / "onnx", OnnxExportConfig(size=SIZE))
    runner = OnnxRunner(tmp_path / "onnx")
    runner.set_prompt_tensor(p.numpy())
    assert np.abs(runner.predict(q.numpy()) - expected.numpy()).max() < 1e-4


def test_eval_network_method_drops_only_the_fusion():
    from metauas.evaluation.runner import predict_maps

    model = lite(comparison="cosine", patchmatch_weight=0.5)
    q = (images(2, 7) * 255).to(torch.uint8)
    p = (images(1, 8) * 255).to(torch.uint8)
    with torch.no_grad():
        qf, prompt = model.encode(q.float() / 255), model.prepare_prompt(p.float() / 255)
        network = model.probabilities(model.forward_features(qf, prompt))[:, 0]
        default = model.anomaly_map(qf, prompt)[:, 0]
    assert float((predict_maps(model, q, p, "network") - network).abs().max()) < 1e-5
    assert float((predict_maps(model, q, p, "metauas") - default).abs().max()) < 1e-5
    assert model.config.patchmatch_weight == 0.5  # restored


def test_neighbourhood_average_is_the_local_mean_and_feeds_patch_matching():
    f = torch.rand(2, 3, 4, 6, 5, generator=torch.Generator().manual_seed(9))  # (B, K, C, h, w)
    avg = neighbourhood_average(f, 3)
    assert avg.shape == f.shape
    assert torch.allclose(avg[1, 2, :, 2, 3], f[1, 2, :, 1:4, 2:5].mean(dim=(-2, -1)), atol=1e-6)
    assert torch.allclose(avg[0, 0, :, 0, 0], f[0, 0, :, 0:2, 0:2].mean(dim=(-2, -1)), atol=1e-6)  # border
    assert neighbourhood_average(f, 1) is f
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match="odd"):
            neighbourhood_average(f, bad)
    model = lite(comparison="cosine", patchmatch_weight=1.0, patchmatch_neighbourhood=3)
    q, p = images(2, 10), images(1, 11)
    with torch.no_grad():
        qf, pf = model.encode(q), model.encode(p)
        plain, pooled = patchmatch_map(qf, pf, (SIZE, SIZE)), patchmatch_map(qf, pf, (SIZE, SIZE), neighbourhood=3)
        assert float((plain - pooled).abs().max()) > 1e-3  # the option changes the map
        averaged = patchmatch_map([neighbourhood_average(f, 3) for f in qf], [neighbourhood_average(f, 3) for f in pf],
                                  (SIZE, SIZE))
        assert float((pooled - 0.5 * (plain + averaged)).abs().max()) < 1e-6  # two scales, averaged
        assert float((model.anomaly_map(qf, model.prepare_prompt(p)) - pooled).abs().max()) < 1e-6
        assert float(patchmatch_map(pf, pf, (SIZE, SIZE), neighbourhood=3).abs().max()) < 1e-5  # identical: 0
    with pytest.raises(ValueError, match="patchmatch_neighbourhood"):
        ModelConfig(patchmatch_neighbourhood=2).validate()


@pytest.mark.parametrize("field,value", [("patchmatch_weight", 2.0), ("patchmatch_weight", "0.5"),
                                         ("patchmatch_neighbourhood", 4), ("patchmatch_neighbourhood", 3.0),
                                         ("temperature", 0.0), ("comparison", "l2"),
                                         ("patchmatch_distance", "manhattan")])
def test_model_metadata_of_the_new_fields_is_checked(field, value):
    from metauas.errors import CheckpointError
    from metauas.schemas import check_model_config

    with pytest.raises(CheckpointError, match=field):
        check_model_config({field: value}, "m.safetensors")
    check_model_config({"patchmatch_weight": 0.8, "temperature": 1.0, "comparison": "cosine"}, "m.safetensors")


@pytest.mark.parametrize("shots", [1, 2])
def test_eval_maps_are_the_maps_segmenter_gives(shots):
    """`metauas eval` scores the maps users get: its predict path equals Segmenter's (the
    optimised inference copy agrees with the eager model within 1e-4)."""
    from metauas.evaluation.runner import predict_maps

    model = lite(comparison="cosine", patchmatch_weight=0.5, patchmatch_neighbourhood=3)
    q = (images(3, 12) * 255).to(torch.uint8)
    p = (images(shots, 13) * 255).to(torch.uint8)
    seg = Segmenter(model)
    seg.set_prompt_tensor(p.float() / 255)
    users = seg.predict_tensor(q.float() / 255)[:, 0]
    prompts = p[None] if shots > 1 else p  # (1,K,3,S,S) k-shot, (1,3,S,S) one prompt
    evaluated = predict_maps(model, q, prompts)
    assert float((evaluated - users).abs().max()) < 1e-4
