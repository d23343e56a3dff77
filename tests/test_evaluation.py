"""Evaluation runner, prompt strategies, patch-matching baseline and `metauas eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metauas.cli import main
from metauas.data import MakeDatasetConfig, load_mask, make_mvtec_dataset, read_mvtec, write_metauas_meta
from metauas.errors import InputError
from metauas.evaluation import EvalConfig, aggregate, patchmatch_map, predict_maps, run_evaluation
from metauas.metrics import METRIC_NAMES, evaluate
from metauas.prompts import DescriptorCache, random_prompts, rank_by_similarity



class FakeModel(nn.Module):
    """Stand-in with the MetaUAS interface: a fixed random conv pyramid as 'encoder' and a map
    = normalised feature difference between query and (mean of) prompt(s)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g) * 0.3)
            self.proj.bias.zero_()
        self.encoder = nn.Module()
        self.encoder.stage_channels = (3, 8, 8, 8, 8, 8)
        self.calls = 0

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.dim() == 5:
            b, k = images.shape[:2]
            return [f.unflatten(0, (b, k)) for f in self.encode(images.flatten(0, 1))]
        x = (images - 0.5) / 0.25
        f = torch.relu(self.proj(x))
        return [x] + [F.avg_pool2d(f, 2 ** i) for i in range(1, 6)]

    def forward(self, query: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if prompt.dim() == 5:
            prompt = prompt.mean(1)
        d = (self.encode(query)[1] - self.encode(prompt)[1]).abs().mean(1, keepdim=True)
        d = F.interpolate(d, size=query.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(d)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ev") / "data"
    make_mvtec_dataset(MakeDatasetConfig(out=root, categories=2, n_train=4, n_test_good=3,
                                         n_test_anomalous=3, size=64, seed=2))
    return root


def _cfg(tree: Path, out: Path, **kw) -> EvalConfig:
    base = dict(dataset="mvtec", root=tree, out=out, seeds=(1, 3), size=64, progress=False, batch_size=4)
    base.update(kw)
    return EvalConfig(**base)


# ------------------------------------------------------------------ patch matching


def test_patchmatch_zero_for_identical_and_positive_for_changes():
    model = FakeModel()
    x = torch.rand(2, 3, 64, 64)
    f = model.encode(x)
    same = patchmatch_map(f, f, 64)
    assert same.shape == (2, 1, 64, 64) and same.abs().max() < 1e-5
    y = x.clone()
    y[:, :, 20:40, 20:40] = 1 - y[:, :, 20:40, 20:40]
    pm = patchmatch_map(model.encode(y), f, (64, 64))
    assert 0 <= pm.min() and pm.max() <= 1
    assert pm[..., 24:36, 24:36].mean() > 3 * pm[..., :8, :8].mean()


def test_patchmatch_kshot_takes_nearest_over_all_prompts():
    model = FakeModel()
    q = torch.rand(1, 3, 32, 32)
    other = torch.rand(1, 3, 32, 32)
    fq = model.encode(q)
    fk = model.encode(torch.stack([other, q], dim=1))  # (1, K=2, ...) with the query among them
    assert patchmatch_map(fq, fk, 32).abs().max() < 1e-5
    shared = model.encode(other)  # batch-1 prompt shared by a batch of 3 queries
    out = patchmatch_map(model.encode(q.expand(3, -1, -1, -1)), shared, 32)
    assert out.shape == (3, 1, 32, 32) and torch.allclose(out[0], out[2])


# ------------------------------------------------------------------ prompts


def test_random_prompts_seeded_and_bounded(tmp_path):
    pool = [tmp_path / f"{i}.png" for i in range(6)]
    assert random_prompts(pool, 1) == random_prompts(list(reversed(pool)), 1)
    draws = {tuple(random_prompts(pool, s)) for s in (1, 3, 5, 7, 9)}
    assert len(draws) > 1
    three = random_prompts(pool, 3, k=3)
    assert len(set(three)) == 3
    with pytest.raises(InputError, match="only 6"):
        random_prompts(pool, 1, k=7)


def test_rank_and_descriptor_cache(tmp_path):
    files = []
    for i in range(3):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i]))
        files.append(p)
    calls = []

    def describe(paths):
        calls.append(len(paths))
        return torch.eye(3)[: len(paths)]

    cache = DescriptorCache(tmp_path / "c", "m", 64)
    a = cache.get("cat", files, describe)
    b = cache.get("cat", files, describe)
    assert calls == [3] and torch.equal(a, b)
    files[0].write_bytes(b"changed!")  # stale entry -> recomputed
    cache.get("cat", files, describe)
    assert calls == [3, 3]
    q = torch.tensor([[0.0, 0.9, 0.1], [1.0, 0.0, 0.0]])
    assert rank_by_similarity(q, a, 2).tolist() == [[1, 2], [0, 1]]


# ------------------------------------------------------------------ runner


def test_runner_reports_and_matches_direct_metric_computation(tree, tmp_path):
    model = FakeModel()
    out = tmp_path / "r"
    report = run_evaluation(_cfg(tree, out), model=model)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mean"] == report["mean"]
    assert set(saved["per_category"]) == {"cat0", "cat1"}
    for c in saved["per_category"].values():
        assert set(c) == set(METRIC_NAMES) and all(0 <= v <= 1 for v in c.values())
    assert saved["config"]["protocol"] == "exact" and saved["config"]["seeds_run"] == [1, 3]
    md = (out / "metrics.md").read_text()
    assert "| **Mean** |" in md and "±" in md and "exact" in md
    # recompute cat1 / seed 3 by hand: same prompt, same maps, same metrics
    data = read_mvtec(tree)
    cat = data.categories["cat1"]
    prompt = random_prompts(cat.train, 3)[0]
    state = json.loads((out / "categories" / "cat1.json").read_text())
    assert state["seeds"]["3"]["prompts"] == [str(prompt)]
    from metauas.evaluation.runner import _load_rgb, _to_tensor_u8

    q = torch.stack([_to_tensor_u8(_load_rgb(s.path), 64, True) for s in cat.test])
    p = _to_tensor_u8(_load_rgb(prompt), 64, True)[None]
    maps = predict_maps(model, q, p).numpy()
    masks = [load_mask(s, (64, 64)) for s in cat.test]
    direct = evaluate(masks, list(maps))
    for m in METRIC_NAMES:
        assert state["seeds"]["3"]["metrics"][m] == pytest.approx(direct[m], abs=1e-9)


def test_runner_resumes_per_category_and_recomputes_on_config_change(tree, tmp_path):
    model = FakeModel()
    out = tmp_path / "r"
    run_evaluation(_cfg(tree, out, categories=["cat0"]), model=model)
    first = model.calls
    assert first > 0
    run_evaluation(_cfg(tree, out, categories=["cat0"]), model=model)
    assert model.calls == first  # nothing recomputed
    # a damaged partial file is recomputed, a finished other category is kept
    (out / "categories" / "cat0.json").write_text("{truncated")
    run_evaluation(_cfg(tree, out, categories=["cat0"]), model=model)
    assert model.calls == 2 * first
    # an extra seed only computes that seed
    run_evaluation(_cfg(tree, out, categories=["cat0"], seeds=(1, 3, 5)), model=model)
    assert model.calls == 2 * first + first // 2
    rep = run_evaluation(_cfg(tree, out, categories=["cat0"], protocol="metauas"), model=model)
    assert model.calls > 2 * first + first // 2  # different protocol: different results
    assert "official MetaUAS evaluator" in (out / "metrics.md").read_text()
    assert rep["config"]["protocol"] == "metauas"


def test_aggregate_mean_std_over_seeds():
    a = {m: 0.5 for m in METRIC_NAMES}
    b = {m: 0.7 for m in METRIC_NAMES}
    c = {m: 0.9 for m in METRIC_NAMES}
    rep = aggregate({"x": {"1": a, "3": c}, "y": {"1": b, "3": b}})
    assert rep["per_category"]["x"]["I-AUROC"] == pytest.approx(0.7)
    assert rep["per_seed"]["1"]["P-AP"] == pytest.approx(0.6)
    assert rep["per_seed"]["3"]["P-AP"] == pytest.approx(0.8)
    assert rep["mean"]["P-AP"] == pytest.approx(0.7) and rep["std"]["P-AP"] == pytest.approx(0.1)


@pytest.mark.parametrize("prompt,k", [("best", 1), ("best+", 1), ("kshot", 2)])
def test_prompt_strategies_run_on_fake_model(tree, tmp_path, prompt, k):
    rep = run_evaluation(_cfg(tree, tmp_path / prompt, prompt=prompt, k=k, categories=["cat1"]),
                         model=FakeModel())
    expected_seeds = [0] if prompt.startswith("best") else [1, 3]
    assert rep["config"]["seeds_run"] == expected_seeds
    assert all(0 <= v <= 1 for v in rep["mean"].values())
    if prompt.startswith("best"):
        assert list((tmp_path / prompt / "cache").glob("cat1-*.npz"))


def test_patchmatch_baseline_finds_synthetic_defects(tree, tmp_path):
    rep = run_evaluation(_cfg(tree, tmp_path / "pm", method="patchmatch"), model=FakeModel())
    # the generated defects are strong local changes: a nearest-patch baseline must see them
    assert rep["mean"]["P-AUROC"] > 0.8


def test_official_json_tree_uses_shipped_prompts(tree, tmp_path):
    meta = write_metauas_meta(read_mvtec(tree), tmp_path / "meta", seeds=(1, 3))
    out = tmp_path / "j"
    run_evaluation(_cfg(tree, out, dataset="metauas-json", meta_dir=meta), model=FakeModel())
    shipped = json.loads((meta / "oneprompt_seed3.json").read_text())["cat0"]["filename"]
    state = json.loads((out / "categories" / "cat0.json").read_text())
    assert state["seeds"]["3"]["prompts"] == [str(tree / shipped)]
    run_evaluation(_cfg(tree, tmp_path / "jb", dataset="metauas-json", meta_dir=meta, prompt="best"),
                   model=FakeModel())
    assert not (tmp_path / "jb" / "cache").exists()  # ranking file shipped: no descriptors needed


def test_real_metauas_model_kshot_and_overlays(tree, tmp_path):
    from metauas.models import build_model

    model = build_model("efficientnet-lite0", pretrained=False).eval()
    rep = run_evaluation(_cfg(tree, tmp_path / "m", prompt="kshot", k=2, seeds=(1,), categories=["cat0"],
                              save_maps=True), model=model)
    assert all(v is None or 0 <= v <= 1 for v in rep["mean"].values())
    assert len(list((tmp_path / "m" / "maps" / "cat0").glob("*.png"))) == 6


def test_config_errors_are_input_errors(tree, tmp_path):
    with pytest.raises(InputError, match="multiple of 32"):
        run_evaluation(_cfg(tree, tmp_path, size=50), model=FakeModel())
    with pytest.raises(InputError, match="needs --prompt kshot"):
        run_evaluation(_cfg(tree, tmp_path, k=3), model=FakeModel())
    with pytest.raises(InputError, match="only 4 training images"):
        run_evaluation(_cfg(tree, tmp_path, prompt="kshot", k=9), model=FakeModel())
    with pytest.raises(InputError, match="unknown categories|unknown mvtec category"):
        run_evaluation(_cfg(tree, tmp_path, categories=["nope"]), model=FakeModel())


def test_eval_cli_patchmatch_and_clean_errors(tree, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["eval", "--dataset", "mvtec", "--root", str(tree), "--out", str(out), "--method", "patchmatch",
               "--size", "64", "--seeds", "1", "--categories", "cat0", "--quiet", "--threads", "1"])
    assert rc == 0
    assert "| cat0 |" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["config"]["method"] == "patchmatch"
    rc = main(["eval", "--dataset", "mvtec", "--root", str(tmp_path / "missing"), "--out", str(out), "--quiet"])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


def test_best_prompt_records_the_prompt_chosen_for_each_query(tree, tmp_path):
    out = tmp_path / "best"
    run_evaluation(_cfg(tree, out, prompt="best", k=1, categories=["cat1"]), model=FakeModel())
    state = json.loads((out / "categories" / "cat1.json").read_text())
    chosen = state["seeds"]["0"]["prompts"]
    test_images = sorted(str(p) for p in (tree / "cat1" / "test").rglob("*.png"))
    train_images = {str(p) for p in (tree / "cat1" / "train" / "good").glob("*.png")}
    assert sorted(chosen) == test_images
    assert all(len(v) == 1 and v[0] in train_images for v in chosen.values())
