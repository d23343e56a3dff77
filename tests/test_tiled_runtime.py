"""Issue 13 wired into the one predictor loop: --tile (Segmenter, CLI, eval), the memory-bounded
default batch, the tiled image score, the tiling hint, --threads on every command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from imagegen import texture

from metauas.cli import build_parser, main
from metauas.errors import InputError
from metauas.io.images import to_model_tensor
from metauas.models import MetaUAS, ModelConfig
from metauas.runtime.batch import tiling_hint
from metauas.runtime.predictor import DEFAULT_MAX_BATCH, Predictor, check_tile, to_original_size
from metauas.runtime.torch_backend import Segmenter
from metauas.scoring import DEFAULT_TOP_FRACTION, image_score, tiled_image_score
from metauas.tiling import auto_batch_size, model_predictor, tiled_anomaly_map

S = 64  # the tiny model's size: a 160-px image is 2.5x larger


@pytest.fixture(scope="module")
def model() -> MetaUAS:
    torch.manual_seed(0)
    return MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=S)).eval()


def with_defect(rgb: np.ndarray, y: int, x: int, side: int = 6) -> np.ndarray:
    out = rgb.copy()
    out[y:y + side, x:x + side] = (250, 10, 10)
    return out


# ---------------------------------------------------------------------------- options
def test_check_tile_accepts_modes_and_sides_and_rejects_the_rest():
    assert check_tile(None) == "off" and check_tile(" AUTO ") == "auto" and check_tile("off") == "off"
    assert check_tile("512") == 512 and check_tile(96) == 96
    for bad in ("big", 16, "0", True, 100.5, -64):
        with pytest.raises(InputError):
            check_tile(bad)


# ---------------------------------------------------------------------------- untiled maps unchanged
def test_untiled_maps_equal_the_resize_predict_resize_loop(model):
    """tile="off" (and "auto" below twice the model size) gives today's maps within 1e-5."""
    prompt, queries = texture(90, 120, 1), [with_defect(texture(90, 120, 1), 40, 50), texture(100, 70, 2)]
    seg = Segmenter(model, tile="off")
    seg.set_prompt(prompt)
    expected = []
    for q in queries:  # the loop as it was before tiling: resize -> predict -> resize back -> score
        prob = seg.predict_tensor(to_model_tensor(q, S))[0].float()
        expected.append(to_original_size(prob, q.shape[:2]))
    auto = Segmenter(model, tile="auto")
    auto.set_prompt(prompt)
    for results in (seg.segment(queries), seg.segment(queries, batch_size=1), auto.segment(queries)):
        for result, ref in zip(results, expected):
            assert result.tile is None
            assert np.abs(result.anomaly_map - ref).max() <= 1e-5
            assert result.score == pytest.approx(image_score(ref, DEFAULT_TOP_FRACTION), abs=1e-6)


# ---------------------------------------------------------------------------- tiled maps
def test_auto_tiles_large_queries_at_native_scale(model):
    prompt = texture(160, 176, 3)
    query = with_defect(prompt, 100, 120)
    seg = Segmenter(model, tile="auto")
    seg.set_prompt(prompt)
    result = seg.segment_one(query)
    expected = tiled_anomaly_map(query, prompt, model_predictor(model), tile_size=S)
    assert result.tile == S and result.anomaly_map.shape == (160, 176)
    assert np.abs(result.anomaly_map - expected).max() <= 1e-4  # optimized copy vs eager model
    assert result.score == pytest.approx(tiled_image_score(result.anomaly_map, S), abs=1e-9)
    assert result.prompts == [0]


def test_tile_side_n_resizes_tiles_to_the_model_size(model):
    prompt = texture(200, 200, 4)
    seg = Segmenter(model, tile=100)
    seg.set_prompt(prompt)
    big, small = seg.segment([with_defect(prompt, 50, 50), texture(90, 90, 5)])
    assert big.tile == 100 and big.anomaly_map.shape == (200, 200)
    assert small.tile is None  # not larger than one tile: segmented whole
    assert big.score == pytest.approx(tiled_image_score(big.anomaly_map, 100), abs=1e-9)


def test_kshot_tiles_take_the_pixelwise_minimum_over_prompts(model):
    prompts = [texture(160, 160, 6), texture(160, 160, 7)]
    query = with_defect(prompts[0], 60, 60)
    seg = Segmenter(model, tile="auto")
    seg.set_prompt(prompts)
    result = seg.segment_one(query)
    predict = model_predictor(model)
    maps = [tiled_anomaly_map(query, p, predict, tile_size=S) for p in prompts]
    assert result.prompts == [0, 1]
    assert np.abs(result.anomaly_map - np.minimum(*maps)).max() <= 1e-4


def test_prompt_pool_tiles_against_the_chosen_prompt(model):
    pool = [texture(160, 160, 8), texture(160, 160, 9), texture(160, 160, 10)]
    query = with_defect(pool[2], 30, 90)
    seg = Segmenter(model, tile="auto")
    seg.set_prompt_pool(pool, k=1)
    result = seg.segment_one(query)
    untiled = Segmenter(model)
    untiled.set_prompt_pool(pool, k=1)
    assert result.prompts == untiled.segment_one(query).prompts  # same choice as untiled
    expected = tiled_anomaly_map(query, pool[result.prompts[0]], model_predictor(model), tile_size=S)
    assert np.abs(result.anomaly_map - expected).max() <= 1e-4


def test_tiling_errors_are_one_line_input_errors(model):
    mean = Segmenter(model, tile="auto", kshot="mean")
    mean.set_prompt([texture(160, 160, 1), texture(160, 160, 2)])
    with pytest.raises(InputError, match="kshot"):
        mean.segment_one(texture(160, 160, 1))
    tensors = Segmenter(model, tile="auto")
    tensors.set_prompt_tensor(torch.rand(1, 3, S, S))
    with pytest.raises(InputError, match="tensors"):
        tensors.segment_one(texture(160, 160, 1))


# ---------------------------------------------------------------------------- score rule
def test_tiled_score_counts_the_pixels_of_one_untiled_model_input():
    """A defect of d model pixels scores the same on a tiled 4x larger map as on an untiled one."""
    small = np.zeros((256, 256), np.float32)
    small[100:108, 100:108] = 0.9  # 64 px
    big = np.zeros((1024, 1024), np.float32)
    big[500:508, 700:708] = 0.9
    assert tiled_image_score(big, 256) == pytest.approx(image_score(small), abs=1e-9)
    assert image_score(big) < 0.5 * image_score(small)  # the plain rule would dilute it 16x
    tiny = np.full((4, 4), 0.25, np.float32)
    assert tiled_image_score(tiny, 256) == pytest.approx(0.25)  # capped by the map size
    with pytest.raises(ValueError):
        tiled_image_score(big, 0)


# ---------------------------------------------------------------------------- memory budget
class CountingPredictor(Predictor):
    """A backend whose maps are zeros; records the batch sizes it was called with."""

    def __init__(self, size: int, **kw) -> None:
        super().__init__(size, **kw)
        self.calls: list[int] = []

    def _encode_prompts(self, batch):
        pass

    def _predict(self, batch):
        self.calls.append(int(batch.shape[0]))
        return torch.zeros(batch.shape[0], 1, self.size, self.size), [[0]] * int(batch.shape[0])


@pytest.mark.parametrize("size,budget", [(64, 2.0), (1024, 2.0), (640, 2.0), (256, 0.8)])
def test_default_batch_comes_from_the_memory_budget(size, budget):
    pred = CountingPredictor(size, memory_budget=budget)
    pred.set_prompt(np.zeros((32, 32, 3), np.uint8))
    pred.segment([np.zeros((32, 32, 3), np.uint8)] * 9)
    expected = auto_batch_size(size, size, int(budget * 1024**3), DEFAULT_MAX_BATCH)
    assert pred.auto_batch() == expected and pred.calls[0] == expected
    assert sum(pred.calls) == 9 and max(pred.calls) == expected


def test_memory_budget_picks_smaller_batches_for_bigger_inputs_and_explicit_wins():
    batches = [CountingPredictor(s).auto_batch() for s in (256, 768, 1024)]
    assert batches[0] > batches[1] > batches[2] == 1
    assert CountingPredictor(1024, memory_budget=8).auto_batch() > 1
    explicit = CountingPredictor(1024, batch_size=3)
    explicit.set_prompt(np.zeros((32, 32, 3), np.uint8))
    explicit.segment([np.zeros((32, 32, 3), np.uint8)] * 4)
    assert explicit.calls == [3, 1]
    with pytest.raises(InputError):
        CountingPredictor(256, memory_budget=0)


# ---------------------------------------------------------------------------- CLI
def save(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


def test_cli_tile_auto_records_tiles_and_finds_the_defect(tmp_path, tiny_model, capsys):
    prompt = save(tmp_path / "p.png", texture(192, 192, 11))
    query = save(tmp_path / "q.png", with_defect(texture(192, 192, 11), 140, 40, side=8))
    code = main(["segment", "--model", str(tiny_model), "--prompt", str(prompt), "--query", str(query),
                 "--out", str(tmp_path / "o"), "--tile", "auto", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "hint" not in err
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["tile"] == "auto" and data["results"][0]["tile"] == 64
    assert data["batch_size"] >= 1 and data["memory_budget_gib"] == 2.0
    saved = cv2.imread(str(tmp_path / "o" / "q_map.png"), cv2.IMREAD_UNCHANGED)
    assert saved.shape == (192, 192)


def test_cli_hints_at_tiling_once_for_large_queries_only(tmp_path, tiny_model, capsys):
    prompt = save(tmp_path / "p.png", texture(160, 160, 12))
    small = save(tmp_path / "small.png", texture(100, 100, 12))
    argv = ["segment", "--model", str(tiny_model), "--prompt", str(prompt), "--quiet"]
    assert main(argv + ["--query", str(small), "--out", str(tmp_path / "a")]) == 0
    assert "hint" not in capsys.readouterr().err
    big = [save(tmp_path / f"big{i}.png", texture(160, 160, i)) for i in range(2)]
    assert main(argv + ["--query", *map(str, big), "--out", str(tmp_path / "b")]) == 0
    hints = [line for line in capsys.readouterr().err.splitlines() if "hint" in line]
    assert len(hints) == 1 and "--tile auto" in hints[0] and "160x160" in hints[0]


def test_tiling_hint_rule():
    pred = CountingPredictor(256)
    assert tiling_hint(pred, (300, 400)) is None
    assert "--tile auto" in (tiling_hint(pred, (300, 512)) or "")
    pred.tile = "auto"
    assert tiling_hint(pred, (2048, 2048)) is None


@pytest.mark.parametrize("argv", [["segment", "--prompt", "p", "--query", "q", "--out", "o"],
                                  ["calibrate", "--prompt", "p", "--good", "g"], ["serve"], ["export"],
                                  ["eval", "--dataset", "mvtec", "--root", "r", "--out", "o"]])
def test_every_inference_command_takes_threads(argv):
    args = build_parser(argv[0]).parse_args([*argv, "--threads", "3"])
    assert args.threads == 3


def test_segment_starts_without_evaluation_or_web_modules():
    code = ("import sys; from metauas.cli import build_parser; build_parser('segment'); "
            "print(sorted(m for m in ('scipy', 'metauas.evaluation.runner', 'metauas.training.config', "
            "'fastapi', 'onnx', 'skimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
                              "OMP_WAIT_POLICY": "PASSIVE"})
    assert out.stdout.strip() == "[]"
    parser = build_parser()  # without a command every module registers (help lists them all)
    assert {"segment", "eval", "serve", "train", "synth"} <= set(parser._subparsers._group_actions[0].choices)


# ---------------------------------------------------------------------------- eval
def test_eval_tile_auto_replaces_the_maps_of_large_images(tmp_path, model):
    from metauas.data import MakeDatasetConfig, make_mvtec_dataset
    from metauas.evaluation import EvalConfig, run_evaluation

    root = tmp_path / "data"
    make_mvtec_dataset(MakeDatasetConfig(out=root, categories=1, n_train=2, n_test_good=2,
                                         n_test_anomalous=2, size=128, seed=3))
    cfg = dict(dataset="mvtec", root=root, seeds=(1,), size=S, progress=False, batch_size=4)
    off = run_evaluation(EvalConfig(out=tmp_path / "off", **cfg), model=model)
    on = run_evaluation(EvalConfig(out=tmp_path / "on", tile="auto", **cfg), model=model)
    assert off["mean"] != on["mean"]  # 128-px images are 2x the model size: tiled
    with pytest.raises(InputError):
        run_evaluation(EvalConfig(out=tmp_path / "pm", tile="auto", method="patchmatch", **cfg), model=model)


def test_onnx_backend_tiles_through_the_same_loop(tmp_path, model):
    pytest.importorskip("onnxruntime")
    from metauas.runtime import OnnxSegmenter
    from metauas.runtime.export import OnnxExportConfig, export_onnx

    export_onnx(model, tmp_path / "onnx", OnnxExportConfig(size=S), model_name="tiny", verify=False)
    prompt = texture(160, 160, 13)
    query = with_defect(prompt, 50, 50)
    seg = OnnxSegmenter(tmp_path / "onnx", tile="auto")
    seg.set_prompt(prompt)
    result = seg.segment_one(query)
    expected = tiled_anomaly_map(query, prompt, model_predictor(model), tile_size=S, prompt_mode="center")
    assert result.tile == S and np.abs(result.anomaly_map - expected).max() <= 1e-4
