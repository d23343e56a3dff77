"""Threshold calibration: the maths (quantile, F1), the store, and calibrate() end to end
with a fake segmenter whose maps are known exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metauas.errors import InputError
from metauas.inference.calibration import (PixelF1, Thresholds, calibrate, f1_threshold, find_mask, fingerprint,
                                           load_thresholds, quantile_threshold, read_threshold_file,
                                           save_thresholds, store_path)
from metauas.inference.segmenter import SegmentationResult
from metauas.runtime.predictor import Predictor


def test_quantile_threshold_is_an_observed_good_score():
    scores = [0.1, 0.2, 0.3, 0.4, 0.9]
    assert quantile_threshold(scores, 1.0) == 0.9
    assert quantile_threshold(scores, 0.8) == 0.4  # 80% of good scores are <= 0.4
    assert quantile_threshold(scores, 0.5) == 0.3
    with pytest.raises(InputError):
        quantile_threshold([], 0.9)
    with pytest.raises(InputError):
        quantile_threshold(scores, 0.0)


def test_f1_threshold_separable_and_overlapping():
    t, f1 = f1_threshold([0.1, 0.2, 0.3, 0.7, 0.8], [0, 0, 0, 1, 1])
    assert f1 == 1.0 and 0.3 < t < 0.7 and t == pytest.approx(0.5)
    # overlapping classes: the chosen cut must be as good as the best of all cut points
    scores, labels = [0.1, 0.5, 0.6, 0.9], [0, 1, 0, 1]
    t, f1 = f1_threshold(scores, labels)
    s, y = np.array(scores), np.array(labels, bool)
    brute = max((2 * (y & (s > c)).sum() / ((s > c).sum() + y.sum()), c) for c in [0.05, 0.3, 0.55, 0.75])
    assert f1 == pytest.approx(brute[0])
    pred = s > t
    assert 2 * (pred & y).sum() / (pred.sum() + y.sum()) == pytest.approx(f1)
    with pytest.raises(InputError):
        f1_threshold([0.1, 0.2], [0, 0])


def test_pixel_f1_finds_the_separating_level():
    rng = np.random.default_rng(0)
    maps, masks = [], []
    for _ in range(3):
        m = rng.uniform(0.0, 0.3, (32, 32))
        mask = np.zeros((32, 32), bool)
        mask[8:16, 8:20] = True
        m[mask] = rng.uniform(0.6, 1.0, mask.sum())
        maps.append(m)
        masks.append(mask)
    acc = PixelF1()
    for m, mask in zip(maps, masks):
        acc.add(m, mask)
    acc.add(rng.uniform(0.0, 0.3, (32, 32)), None)  # a good image
    t, f1 = acc.best()
    assert f1 == pytest.approx(1.0)
    assert 0.3 <= t <= 0.6
    empty = PixelF1()
    empty.add(maps[0], None)
    with pytest.raises(InputError):
        empty.best()


def test_store_keeps_the_tile_setting_and_old_entries_count_as_untiled(tmp_path: Path):
    path = tmp_path / "store.json"
    base = dict(model="m", model_digest="d1", size=64, prompt_fingerprint="p1")
    save_thresholds(Thresholds(image=0.4, pixel=0.3, **base), path)
    assert load_thresholds(path, "d1", 64, "p1", tile="auto") is None
    save_thresholds(Thresholds(image=0.7, pixel=0.6, tile="auto", **base), path)  # kept beside the untiled one
    assert load_thresholds(path, "d1", 64, "p1", tile="auto").image == 0.7
    assert load_thresholds(path, "d1", 64, "p1", tile="off").image == 0.4
    old = {"version": 1, "entries": [{"image": 0.2, "pixel": 0.1, **base}]}  # written before the tile field
    path.write_text(json.dumps(old))
    assert load_thresholds(path, "d1", 64, "p1", tile="off").tile == "off"
    assert load_thresholds(path, "d1", 64, "p1", tile=512) is None


def test_thresholds_validate_range():
    with pytest.raises(InputError):
        Thresholds(image=1.5, pixel=0.5)
    with pytest.raises(InputError):
        Thresholds(image=0.5, pixel=float("nan"))


def test_store_roundtrip_keyed_by_digest_size_prompt(tmp_path: Path):
    path = tmp_path / "model.safetensors.thresholds.json"
    a = Thresholds(image=0.4, pixel=0.3, model="m", model_digest="d1", size=64, prompt_fingerprint="p1")
    b = Thresholds(image=0.6, pixel=0.5, model="m", model_digest="d1", size=64, prompt_fingerprint="p2")
    save_thresholds(a, path)
    save_thresholds(b, path)
    assert load_thresholds(path, "d1", 64, "p1").image == 0.4
    assert load_thresholds(path, "d1", 64, "p2").image == 0.6
    assert load_thresholds(path, "d1", 128, "p1") is None
    assert load_thresholds(path, "other", 64, "p1") is None
    a2 = Thresholds(image=0.45, pixel=0.35, model="m", model_digest="d1", size=64, prompt_fingerprint="p1")
    save_thresholds(a2, path)  # replaces, does not duplicate
    assert len(json.loads(path.read_text())["entries"]) == 2
    assert load_thresholds(path, "d1", 64, "p1").image == 0.45
    assert read_threshold_file(path).image == 0.45  # newest entry
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"image": 0.2, "pixel": 0.1}))
    assert read_threshold_file(bare).pixel == 0.1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError):
        read_threshold_file(bad)
    with pytest.raises(InputError):
        read_threshold_file(tmp_path / "missing.json")


def test_store_path_beside_model_file_else_user_folder(tmp_path: Path, monkeypatch):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    assert store_path(str(model), "m") == tmp_path / "m.safetensors.thresholds.json"
    monkeypatch.setenv("METAUAS_HOME", str(tmp_path / "home"))
    assert store_path(None, "metauas-lite0-256") == tmp_path / "home" / "thresholds" / "metauas-lite0-256.json"


def test_fingerprint_depends_on_content_and_order(tmp_path: Path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"aaa")
    b.write_bytes(b"bbb")
    assert fingerprint([a, b]) != fingerprint([b, a])
    assert fingerprint([a]) == fingerprint([str(a)])
    c = tmp_path / "c.bin"
    c.write_bytes(b"aaa")
    assert fingerprint([a]) == fingerprint([c])  # same content, other name


class FakeSegmenter(Predictor):
    """Map = first channel of the image / 255: calibration inputs are fully controlled (the
    predictor loop reads the files; only the model call is replaced)."""

    def __init__(self) -> None:
        super().__init__(size=64)

    def _segment_chunk(self, images, names):
        out = []
        for image, name in zip(images, names):
            m = image.rgb[..., 0].astype(np.float32) / 255.0
            out.append(SegmentationResult(m, float(m.max()), name))
        return out


def _write(path: Path, red: np.ndarray) -> Path:
    rgb = np.stack([red, red, red], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_calibrate_good_only_and_with_labelled_bad(tmp_path: Path):
    good_dir, bad_dir, mask_dir = tmp_path / "good", tmp_path / "bad", tmp_path / "masks"
    for d in (good_dir, bad_dir, mask_dir):
        d.mkdir()
    goods = [_write(good_dir / f"g{i}.png", np.full((32, 32), 40 + 10 * i)) for i in range(5)]  # max 40..80
    (good_dir / "broken.png").write_bytes(b"not an image")
    skipped: list = []
    th = calibrate(FakeSegmenter(), goods + [good_dir / "broken.png"], quantile=1.0, skipped=skipped)
    assert th.method == "good-quantile"
    assert th.image == pytest.approx(80 / 255) and th.pixel == th.image
    assert th.num_good == 5 and th.good_flagged == 0.0
    assert len(skipped) == 1 and "broken.png" in skipped[0]["path"]

    bads = []
    for i in range(3):
        red = np.full((32, 32), 30)
        red[4:10, 4:10] = 200 + 10 * i
        bads.append(_write(bad_dir / f"b{i}.png", red))
        mask = np.zeros((32, 32), np.uint8)
        mask[4:10, 4:10] = 255
        Image.fromarray(mask).save(mask_dir / f"b{i}_mask.png")
    assert find_mask(bads[0], mask_dir) == mask_dir / "b0_mask.png"
    th = calibrate(FakeSegmenter(), goods, bads, mask_dir)
    assert th.method == "f1" and th.image_f1 == 1.0 and th.pixel_f1 == pytest.approx(1.0)
    assert 80 / 255 < th.image < 200 / 255
    assert 80 / 255 <= th.pixel < 200 / 255
    with pytest.raises(InputError):
        calibrate(FakeSegmenter(), [])
