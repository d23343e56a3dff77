"""ONNX export (prompt as input) and the onnxruntime backend reproduce PyTorch within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from metauas.cli import main
from metauas.errors import InputError
from metauas.inference.export import OnnxExportConfig, export_onnx, verify_export
from metauas.inference.onnx_backend import OnnxRunner, OnnxSegmenter
from metauas.inference.segmenter import Segmenter
from metauas.models import MetaUAS, ModelConfig, save_safetensors

pytest.importorskip("onnxruntime")



def spread_model(alignment: str = "sa", size: int = 64, seed: int = 0) -> MetaUAS:
    """Random tiny model whose probabilities cover most of [0,1] (an untrained decoder alone
    gives p ~ 0.5 everywhere, which would make a parity test weak)."""
    torch.manual_seed(seed)
    # the ImageNet encoder (installed with the package): a random one gives near-zero deep features,
    # and the prompt would then hardly matter
    model = MetaUAS(ModelConfig(encoder="efficientnet-lite0", alignment=alignment, image_size=size),
                    pretrained_encoder=True).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = torch.rand(2, 3, size, size, generator=gen)
        logits = model.logits(x[:1], x[1:])
        scale = 3.0 / float(logits.std())  # logits with std ~3: probabilities spread over (0,1)
        model.mask_head.weight.mul_(scale)
        model.mask_head.bias.mul_(scale).sub_(float(logits.mean()) * scale)
    return model


def torch_probs(model: MetaUAS, prompts: torch.Tensor, queries: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        prepared = model.prepare_prompt(prompts[None] if prompts.shape[0] > 1 else prompts)
        return torch.sigmoid(model.forward_features(model.encode(queries), prepared)).numpy()


@pytest.mark.parametrize("alignment,size,shots", [("sa", 64, 1), ("sa", 128, 2), ("ha", 64, 1), ("na", 64, 1)])
def test_export_matches_pytorch(alignment, size, shots, tmp_path):
    model = spread_model(alignment, size)
    meta = export_onnx(model, tmp_path / "onnx", OnnxExportConfig(size=size, shots=shots), model_name="tiny")
    assert meta.max_abs_diff is not None and meta.max_abs_diff < 1e-4
    assert {p.name for p in (tmp_path / "onnx").iterdir()} == {"encoder.onnx", "prompt.onnx", "decoder.onnx",
                                                               "metauas_onnx.json"}
    gen = torch.Generator().manual_seed(7)
    prompts = torch.rand(shots, 3, size, size, generator=gen)
    queries = torch.rand(3, 3, size, size, generator=gen)  # another batch size than at export
    expected = torch_probs(model, prompts, queries)
    assert expected.std() > 0.1  # the outputs really vary, so agreement means something
    runner = OnnxRunner(tmp_path / "onnx")
    runner.set_prompt_tensor(prompts.numpy())
    got = runner.predict(queries.numpy())
    assert got.shape == expected.shape == (3, 1, size, size)
    assert np.abs(got - expected).max() < 1e-4
    # the prompt really is an input: another prompt changes the output the same way in both
    other = torch.rand(shots, 3, size, size, generator=gen)
    runner.set_prompt_tensor(other.numpy())
    got2 = runner.predict(queries.numpy())
    assert np.abs(got2 - torch_probs(model, other, queries)).max() < 1e-4
    if alignment != "na":
        assert np.abs(got2 - got).max() > 1e-3


def test_onnx_segmenter_matches_torch_segmenter_on_images(tmp_path):
    model = spread_model()
    export_onnx(model, tmp_path / "onnx", OnnxExportConfig(size=64))
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    queries = [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8), rng.integers(0, 255, (33, 120, 3), dtype=np.uint8)]
    reference = Segmenter(model, optimize=False)
    reference.set_prompt(prompt)
    onnx = OnnxSegmenter(tmp_path / "onnx", threads=1)
    onnx.set_prompt(prompt)
    for a, b in zip(reference.segment(queries), onnx.segment(queries)):
        assert a.anomaly_map.shape == b.anomaly_map.shape
        assert np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-4
        assert abs(a.score - b.score) < 1e-4


def test_export_errors(tmp_path):
    model = spread_model()
    export_onnx(model, tmp_path / "onnx", OnnxExportConfig(size=64), verify=False)
    with pytest.raises(InputError, match="already holds an export"):
        export_onnx(model, tmp_path / "onnx", OnnxExportConfig(size=64))
    with pytest.raises(InputError, match="multiple of 32"):
        export_onnx(model, tmp_path / "x", OnnxExportConfig(size=100))
    runner = OnnxRunner(tmp_path / "onnx")
    export_onnx(model, tmp_path / "onnx2", OnnxExportConfig(size=64, shots=2), verify=False)
    with pytest.raises(InputError, match="expects 2 prompt"):  # a K-shot export needs exactly K
        OnnxRunner(tmp_path / "onnx2").set_prompt_tensor(np.zeros((3, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="no prompt set"):
        runner.predict(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="not a metauas ONNX export"):
        OnnxRunner(tmp_path)
    (tmp_path / "onnx" / "decoder.onnx").write_bytes(b"broken")
    with pytest.raises(InputError, match="cannot be loaded"):
        OnnxRunner(tmp_path / "onnx")
    meta = json.loads((tmp_path / "onnx" / "metauas_onnx.json").read_text())
    assert meta["max_abs_diff"] is None  # verify=False records no number


def test_verify_export_detects_a_different_model(tmp_path):
    from metauas.inference.export import OnnxMetadata

    export_onnx(spread_model(seed=0), tmp_path / "onnx", OnnxExportConfig(size=64), verify=False)
    meta = OnnxMetadata.read(tmp_path / "onnx")
    assert verify_export(spread_model(seed=1), tmp_path / "onnx", meta) > 1e-3


def test_cli_export_and_segment_with_onnxruntime(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METAUAS_HOME", str(tmp_path / "home"))
    model_path = tmp_path / "tiny.safetensors"
    save_safetensors(spread_model(), model_path)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(tmp_path / "q.png")
    assert main(["export", "--format", "onnx", "--model", str(model_path), "--out", str(tmp_path / "onnx")]) == 0
    out = capsys.readouterr().out
    assert "parity with PyTorch" in out and "encoder.onnx" in out
    assert main(["export", "--model", str(model_path), "--out", str(tmp_path / "onnx")]) == 2  # no overwrite
    assert "already holds an export" in capsys.readouterr().err
    common = ["segment", "--prompt", str(tmp_path / "p.png"), "--query", str(tmp_path / "q.png"), "--quiet"]
    assert main(common + ["--out", str(tmp_path / "torch"), "--model", str(model_path)]) == 0
    assert main(common + ["--out", str(tmp_path / "ort"), "--backend", "onnxruntime", "--onnx",
                          str(tmp_path / "onnx")]) == 0  # deployment: no PyTorch checkpoint needed
    assert main(common + ["--out", str(tmp_path / "ort2"), "--backend", "onnxruntime", "--model",
                          str(model_path)]) == 0  # exports once into the user cache
    assert len(list((tmp_path / "home" / "onnx").iterdir())) == 1
    capsys.readouterr()
    scores = {}
    for name in ("torch", "ort", "ort2"):
        data = json.loads((tmp_path / name / "results.json").read_text())
        scores[name] = data["results"][0]["score"]
        assert data["backend"] == ("torch" if name == "torch" else "onnxruntime")
    assert abs(scores["torch"] - scores["ort"]) < 1e-4 and abs(scores["torch"] - scores["ort2"]) < 1e-4
    maps = [np.asarray(Image.open(tmp_path / n / "q_map.png"), dtype=np.float64) / 65535 for n in ("torch", "ort")]
    assert np.abs(maps[0] - maps[1]).max() < 1e-4 + 1 / 65535
    # a K-shot run on a 1-prompt export: one map per prompt, pixel-wise minimum, as the torch Segmenter
    two = common[:2] + [str(tmp_path / "p.png"), str(tmp_path / "q.png")] + common[2:]
    assert main(two + ["--out", str(tmp_path / "k2"), "--backend", "onnxruntime", "--onnx", str(tmp_path / "onnx")]) == 0
    assert main(two + ["--out", str(tmp_path / "k2t"), "--model", str(model_path)]) == 0
    k2 = [json.loads((tmp_path / n / "results.json").read_text())["results"][0]["score"] for n in ("k2", "k2t")]
    assert abs(k2[0] - k2[1]) < 1e-4
    assert k2[1] <= scores["torch"] + 1e-6  # the query is one of the two prompts: never worse than one prompt


def test_export_parity_is_measured_on_real_images():
    """verify_export compares on the bundled example photographs (not random noise), and its
    tolerance sits far above float32 reordering yet far below a wrong graph."""
    from metauas.io.images import read_image, to_model_tensor
    from metauas.paths import examples_dir
    from metauas.runtime.export import parity_images
    from metauas.runtime.onnx_format import PARITY_TOLERANCE

    folder = examples_dir()
    assert folder is not None, "the example images are missing from the package"
    prompts, queries = parity_images(64, shots=2, batch=3)
    assert prompts.shape == (2, 3, 64, 64) and queries.shape == (3, 3, 64, 64)
    assert torch.equal(prompts[0:1], to_model_tensor(read_image(folder / "prompt.png").rgb, 64))
    assert torch.equal(queries[0:1], to_model_tensor(read_image(folder / "query.png").rgb, 64))
    assert 1e-4 < PARITY_TOLERANCE <= 1e-3


def _failing_decoder_export(monkeypatch):
    """Let torch.onnx.export write the encoder and prompt graphs, and make it die half-way
    through writing the decoder graph (some bytes on disk, then an error)."""
    real = torch.onnx.export

    def export(module, args, f, *rest, **kwargs):
        if type(module).__name__ != "DecoderGraph":
            return real(module, args, f, *rest, **kwargs)
        with open(f, "wb") as handle:
            handle.write(b"\x08\x07half-written graph")
        raise RuntimeError("injected failure while writing the decoder graph")

    monkeypatch.setattr(torch.onnx, "export", export)


def test_interrupted_export_never_leaves_a_partial_graph(tmp_path, monkeypatch):
    from metauas.errors import MetaUASError

    model = spread_model()
    fsynced = []
    real_fsync = __import__("os").fsync
    monkeypatch.setattr("os.fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])
    export_onnx(model, tmp_path / "old", OnnxExportConfig(size=64), verify=False)
    assert len(fsynced) == 4  # three graphs and the metadata are flushed to disk before the rename
    old = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}

    _failing_decoder_export(monkeypatch)
    with pytest.raises(MetaUASError, match="injected failure"):
        export_onnx(model, tmp_path / "fresh", OnnxExportConfig(size=64), verify=False)
    assert not (tmp_path / "fresh" / "decoder.onnx").exists()  # no half-written target
    assert [p.name for p in (tmp_path / "fresh").iterdir() if p.name.endswith(".tmp")] == []

    with pytest.raises(MetaUASError, match="injected failure"):
        export_onnx(model, tmp_path / "old", OnnxExportConfig(size=64, shots=2), overwrite=True, verify=False)
    assert (tmp_path / "old" / "decoder.onnx").read_bytes() == old["decoder.onnx"]  # the old graph intact
    assert (tmp_path / "old" / "metauas_onnx.json").read_bytes() == old["metauas_onnx.json"]
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == sorted(old)  # no temporary file left
