"""SyntheticPairDataset (tensors, worker-count independence) and the `metauas synth` command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metauas.cli import main as cli_main
from metauas.synthesis import ImageSources, SynthesisConfig, SyntheticPairDataset, worker_init_fn
from metauas.synthesis.fixtures import make_tiny_image_tree

SIZE = 48


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_image_tree(tmp_path_factory.mktemp("imgs"), seed=2)


@pytest.fixture(scope="module")
def sources(tree: dict[str, Path]) -> ImageSources:
    return ImageSources.from_dirs(tree["photos"], objects=tree["objects"], textures=tree["textures"])


def test_dataset_items_are_tensors_and_deterministic(sources: ImageSources) -> None:
    ds = SyntheticPairDataset(sources, SynthesisConfig(size=SIZE), length=10, seed=7)
    item = ds[3]
    assert item["prompt"].shape == item["query"].shape == (3, SIZE, SIZE)
    assert item["mask"].shape == (1, SIZE, SIZE)
    for k in ("prompt", "query", "mask"):
        assert item[k].dtype == torch.float32
        assert 0.0 <= float(item[k].min()) and float(item[k].max()) <= 1.0
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
    again = SyntheticPairDataset(sources, SynthesisConfig(size=SIZE), length=10, seed=7)[3]
    assert all(torch.equal(item[k], again[k]) for k in ("prompt", "query", "mask"))
    other_seed = SyntheticPairDataset(sources, SynthesisConfig(size=SIZE), length=10, seed=8)[3]
    assert not torch.equal(item["query"], other_seed["query"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["query"], item["query"])
    ds.set_epoch(0)
    assert torch.equal(ds[3]["query"], item["query"])
    with pytest.raises(IndexError):
        ds[10]


def test_dataloader_results_do_not_depend_on_worker_count(sources: ImageSources) -> None:
    ds = SyntheticPairDataset(sources, SynthesisConfig(size=SIZE), length=8, seed=3)

    def collect(workers: int) -> list[torch.Tensor]:
        dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers,
                                         worker_init_fn=worker_init_fn)
        return [torch.cat([b["prompt"].flatten(1), b["query"].flatten(1), b["mask"].flatten(1)], 1)
                for b in dl]

    single, multi = collect(0), collect(2)
    assert len(single) == len(multi) == 2
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


def test_synth_command_writes_pairs_and_preview(tree: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = cli_main(["synth", "--images", str(tree["photos"]), "--objects", str(tree["objects"]),
                   "--textures", str(tree["textures"]), "-n", "6", "--out", str(out),
                   "--size", str(SIZE), "--seed", "5", "--max-rotation", "10",
                   "--no-change-rate", "0.2"])
    assert rc == 0
    dirs = sorted((out / "pairs").iterdir())
    assert [d.name for d in dirs] == [f"{i:05d}" for i in range(6)]
    for d in dirs:
        prompt = np.asarray(Image.open(d / "prompt.png"))
        query = np.asarray(Image.open(d / "query.png"))
        mask = np.asarray(Image.open(d / "mask.png"))
        assert prompt.shape == query.shape == (SIZE, SIZE, 3)
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert len(rows) == 6
    grid = np.asarray(Image.open(out / "preview.png"))
    assert grid.shape[0] >= 6 * SIZE and grid.shape[1] >= 3 * SIZE
    # same seed again -> identical files; 2 workers -> identical files too
    out2 = tmp_path / "out2"
    assert cli_main(["synth", "--images", str(tree["photos"]), "--objects", str(tree["objects"]),
                     "--textures", str(tree["textures"]), "-n", "6", "--out", str(out2),
                     "--size", str(SIZE), "--seed", "5", "--max-rotation", "10",
                     "--no-change-rate", "0.2", "--workers", "2"]) == 0
    for d in dirs:
        for f in ("prompt.png", "query.png", "mask.png"):
            assert (d / f).read_bytes() == (out2 / "pairs" / d.name / f).read_bytes()


def test_synth_command_bad_inputs_exit_2(tree: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["synth", "--images", str(empty), "-n", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no photos found" in err and "Traceback" not in err and err.count("\n") == 1
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": 3}')
    assert cli_main(["synth", "--images", str(tree["photos"]), "--masks", str(bad_json), "-n", "2",
                     "--out", str(tmp_path / "o")]) == 2
    assert "COCO" in capsys.readouterr().err
    assert cli_main(["synth", "--images", str(tree["photos"]), "--types", "foo", "-n", "2",
                     "--out", str(tmp_path / "o")]) == 2
    assert "unknown change type" in capsys.readouterr().err
    assert cli_main(["synth", "--images", str(tree["photos"]), "--max-rotation", "500", "-n", "2",
                     "--out", str(tmp_path / "o")]) == 2
    assert "max_rotation" in capsys.readouterr().err


def test_synth_command_with_coco_masks_only(tree: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "coco"
    assert cli_main(["synth", "--images", str(tree["photos"]), "--masks", str(tree["masks"]),
                     "-n", "4", "--out", str(out), "--size", str(SIZE),
                     "--types", "object_disappear,object_exchange", "--no-change-rate", "0"]) == 0
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert {r["change_type"] for r in rows} <= {"object_disappear", "object_exchange"}
    for r in rows:
        assert np.asarray(Image.open(out / "pairs" / r["id"] / "mask.png")).max() == 255


def test_config_round_trip_and_unknown_keys() -> None:
    from metauas.errors import InputError

    cfg = SynthesisConfig(size=128, max_rotation=10.0, scale_range=(0.9, 1.1))
    again = SynthesisConfig.from_dict({k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in cfg.to_dict().items()})
    assert again == cfg
    with pytest.raises(InputError, match="unknown synthesis options: rotation"):
        SynthesisConfig.from_dict({"rotation": 5})
