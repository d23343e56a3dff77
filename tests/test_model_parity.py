"""Parity with the official MetaUAS forward pass (shared/official/spec.md §9)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def _close(actual: torch.Tensor, expected: np.ndarray, atol: float) -> float:
    diff = float(np.abs(actual.detach().numpy() - expected).max())
    assert diff < atol, f"max |diff| {diff:.3g} >= {atol}"
    return diff


@pytest.fixture(scope="module")
def ref256(official_dir):
    return np.load(official_dir / "ref_256.npz")


def test_state_dict_layout_matches_official_keys(official_dir):
    from metauas.models import official_metauas

    keys = json.loads((official_dir / "keys.json").read_text())
    model_sd = official_metauas().state_dict()
    expected = {e["name"]: tuple(e["shape"]) for e in keys["entries"]}
    assert len(expected) == 820
    assert list(model_sd) == list(expected)  # same names, same registration order
    assert {k: tuple(v.shape) for k, v in model_sd.items()} == expected


def test_output_and_logits_match_reference_256(official_model, ref256):
    q, p = torch.from_numpy(ref256["query"]), torch.from_numpy(ref256["prompt"])
    with torch.no_grad():
        logits = official_model.logits(q, p)
        out = official_model(query=q, prompt=p)
    _close(logits, ref256["logits"], 2e-4)
    _close(out, ref256["output"], 1e-4)
    assert out.shape == (2, 1, 256, 256)


def test_output_matches_reference_512(official_model, official_dir):
    ref = np.load(official_dir / "ref_512.npz")
    with torch.no_grad():
        logits = official_model.logits(torch.from_numpy(ref["query"]), torch.from_numpy(ref["prompt"]))
    _close(logits, ref["logits"], 2e-4)
    _close(torch.sigmoid(logits), ref["output"], 1e-4)


def test_intermediates_match_reference_256(official_model, ref256):
    m = official_model
    q, p = torch.from_numpy(ref256["query"]), torch.from_numpy(ref256["prompt"])
    with torch.no_grad():
        fq, fp = m.encode(q), m.encode(p)
        for level in range(1, 6):
            expected_q, expected_p = ref256[f"enc_q_s{level}"], ref256[f"enc_p_s{level}"]
            channels = expected_q.shape[1]
            _close(fq[level][:, :channels], expected_q, 1e-4)
            _close(fp[level][:, :channels], expected_p, 1e-4)
        for i, (align, level) in enumerate(zip(m.alignment, m.aligned_levels)):
            Q, K = align.reduce(fq[level]), align.reduce(fp[level])
            _close(Q, ref256[f"align{i}_Q"], 1e-4)
            _close(K, ref256[f"align{i}_K"], 1e-4)
            attn = torch.softmax(torch.einsum("bchw,bcp->bhwp", Q, K.flatten(2)), dim=-1)
            expected_attn = ref256[f"align{i}_attn"]
            if attn.shape != expected_attn.shape:  # stored every 4th row/column
                attn = attn[:, ::4, ::4]
            _close(attn, expected_attn, 1e-4)
            _close(align(fq[level], fp[level]), ref256[f"align{i}_aligned"], 1e-4)
        prompt = m.prepare_prompt(p)
        fused = m.fuse_features(fq, prompt)
        decoded = m.decoder.forward_with_intermediates(fused[1:])
        for i, out in enumerate(decoded):
            expected = ref256[f"dec{i}"]
            _close(out[:, : expected.shape[1]], expected, 1e-4 * max(1.0, float(np.abs(expected).max())))


def test_reference_is_sensitive_to_a_real_bug(official_model, ref256):
    """The check can fail: symmetric stride-2 padding (a classic port bug) breaks parity."""
    from metauas.models.efficientnet import SameConv2d

    q, p = torch.from_numpy(ref256["query"][:1]), torch.from_numpy(ref256["prompt"][:1])
    stem = official_model.encoder._conv_stem
    original = SameConv2d.forward
    try:
        SameConv2d.forward = lambda self, x: torch.nn.functional.conv2d(  # type: ignore[assignment]
            x, self.weight, self.bias, self.stride, self.kernel_size[0] // 2, 1, self.groups)
        with torch.no_grad():
            out = official_model(query=q, prompt=p)
    finally:
        SameConv2d.forward = original  # type: ignore[assignment]
    assert stem is official_model.encoder._conv_stem
    assert float(np.abs(out.numpy() - ref256["output"][:1]).max()) > 1e-2
