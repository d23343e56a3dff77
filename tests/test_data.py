"""Benchmark readers and the MVTec-format generator, on tiny generated trees."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from metauas.cli import main
from metauas.data import (
    MakeDatasetConfig,
    load_mask,
    make_mvtec_dataset,
    open_dataset,
    read_folder,
    read_goods,
    read_metauas_json,
    read_mvtec,
    read_visa,
    write_metauas_meta,
)
from metauas.errors import InputError


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return path


def _img(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mv") / "data"
    make_mvtec_dataset(MakeDatasetConfig(out=root, categories=2, n_train=3, n_test_good=2,
                                         n_test_anomalous=3, size=48, seed=1))
    return root


def test_generated_tree_is_mvtec_and_masks_match_defects(mvtec):
    data = read_mvtec(mvtec)
    assert sorted(data.categories) == ["cat0", "cat1"]
    cat = data.categories["cat0"]
    assert len(cat.train) == 3 and len(cat.test) == 5
    assert sorted({s.defect for s in cat.test}) == ["good", "patch", "scratch", "stain"]
    normal = np.median(np.stack([cv2.imread(str(p)).astype(float) for p in cat.train]), axis=0)
    for s in cat.test:
        m = load_mask(s, (48, 48))
        assert m.shape == (48, 48)
        assert m.any() == bool(s.label)  # every defect has a nonempty mask, good ones are empty
        if s.label:
            img = cv2.imread(str(s.path)).astype(int)
            assert s.mask.name == f"{s.path.stem}_mask.png"
            # the defect changed the image where the mask says so
            good = cv2.imread(str(cat.train[0])).astype(int)
            assert np.abs(img - good)[m].mean() > np.abs(img - good)[~m].mean()


def test_generator_from_user_images(tmp_path):
    src = [_png(tmp_path / "src" / f"{n}.png", _img(i, 80)) for i, n in enumerate(["bolt", "nut"])]
    out = make_mvtec_dataset(MakeDatasetConfig(out=tmp_path / "d", images=src, size=32, n_train=1,
                                               n_test_good=1, n_test_anomalous=1))
    assert sorted(read_mvtec(out).categories) == ["bolt", "nut"]
    with pytest.raises(InputError, match="not empty"):
        make_mvtec_dataset(MakeDatasetConfig(out=out, size=32))


def test_mvtec_missing_mask_is_an_error_naming_the_file(tmp_path):
    _png(tmp_path / "a" / "train" / "good" / "000.png", _img())
    _png(tmp_path / "a" / "test" / "crack" / "007.png", _img(1))
    with pytest.raises(InputError, match="007.png.*no ground-truth mask"):
        read_mvtec(tmp_path)
    with pytest.raises(InputError, match="unknown mvtec category 'zzz'"):
        read_mvtec(tmp_path, ["zzz"])


def test_goods_layout_with_jpg_and_plain_mask_names(tmp_path):
    _png(tmp_path / "drink_can" / "train" / "good" / "000_001.jpg", _img())
    _png(tmp_path / "drink_can" / "test" / "good" / "000_002.jpg", _img(1))
    _png(tmp_path / "drink_can" / "test" / "dent" / "001_004.jpg", _img(2))
    mask = np.zeros((32, 32), np.uint8)
    mask[3:9, 3:9] = 255
    _png(tmp_path / "drink_can" / "ground_truth" / "dent" / "001_004.png", mask)
    data = read_goods(tmp_path)
    bad = [s for s in data.categories["drink_can"].test if s.label == 1][0]
    assert bad.mask.name == "001_004.png"
    assert load_mask(bad).sum() == 36


def _visa_tree(root: Path, bad_row: str | None = None) -> Path:
    _png(root / "candle" / "Data" / "Images" / "Normal" / "0000.JPG", _img())
    _png(root / "candle" / "Data" / "Images" / "Normal" / "0001.JPG", _img(1))
    _png(root / "candle" / "Data" / "Images" / "Anomaly" / "000.JPG", _img(2))
    m = np.zeros((32, 32), np.uint8)
    m[5:10, 5:10] = 3  # VisA masks hold class ids, not 255
    _png(root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png", m)
    rows = [
        "object,split,label,image,mask",
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,",
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
    ]
    if bad_row:
        rows.append(bad_row)
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_reader_and_class_id_masks(tmp_path):
    data = read_visa(_visa_tree(tmp_path))
    cat = data.categories["candle"]
    assert len(cat.train) == 1 and [s.label for s in cat.test] == [0, 1]
    assert load_mask(cat.test[1]).sum() == 25
    assert open_dataset("visa", tmp_path).categories.keys() == data.categories.keys()


def test_visa_malformed_row_names_file_and_line(tmp_path):
    _visa_tree(tmp_path, "candle,test,broken,candle/x.JPG,")
    with pytest.raises(InputError, match=r"1cls\.csv:5: malformed"):
        read_visa(tmp_path)


def test_visa_anomaly_without_mask_is_an_error(tmp_path):
    _visa_tree(tmp_path, "candle,test,anomaly,candle/Data/Images/Normal/0001.JPG,")
    with pytest.raises(InputError, match=r"1cls\.csv:5: anomalous image .* has no mask"):
        read_visa(tmp_path)


def test_folder_format_masks_optional(tmp_path):
    one = tmp_path / "widget"
    _png(one / "train" / "p.png", _img())
    _png(one / "good" / "g.png", _img(1))
    _png(one / "anomaly" / "a.png", _img(2))
    _png(one / "anomaly" / "b.png", _img(3))
    data = read_folder(one)  # single category in the root itself
    samples = data.categories["widget"].test
    assert [s.has_pixel_gt for s in samples] == [True, False, False]  # no masks/ folder
    m = np.zeros((32, 32), np.uint8)
    m[0:4, 0:4] = 255
    _png(one / "masks" / "a_mask.png", m)
    data = read_folder(tmp_path)  # one category per sub-folder
    a, b = data.categories["widget"].test[1:]
    assert load_mask(a).sum() == 16
    assert b.whole_image and load_mask(b, (32, 32)).all()  # masks/ exists: missing = whole image


def test_folder_without_prompts_is_a_clear_error(tmp_path):
    _png(tmp_path / "good" / "g.png", _img())
    with pytest.raises(InputError, match="no train/"):
        read_folder(tmp_path)


def test_official_meta_files_roundtrip(mvtec, tmp_path):
    data = read_mvtec(mvtec)
    meta = write_metauas_meta(data, tmp_path / "meta", seeds=(1, 3))
    j = read_metauas_json(mvtec, meta_dir=meta)
    assert sorted(j.categories) == sorted(data.categories)
    for name, cat in data.categories.items():
        got = j.categories[name]
        assert [(s.path, s.label, s.mask) for s in got.test] == [(s.path, s.label, s.mask) for s in cat.test]
        assert sorted(got.train) == sorted(cat.train)
    assert set(j.fixed_prompts) == {1, 3}
    assert all(p in data.categories["cat0"].train for p in [j.fixed_prompts[1]["cat0"]])
    key = data.categories["cat1"].test[0].key
    assert len(j.ranked_prompts[key]) == 3 and j.ranked_prompts[key][0] in data.categories["cat1"].train
    # selecting categories
    assert list(read_metauas_json(mvtec, ["cat1"], meta).categories) == ["cat1"]


def test_official_meta_without_maskname_means_whole_image(mvtec, tmp_path):
    meta = write_metauas_meta(read_mvtec(mvtec), tmp_path / "meta", seeds=(1,), drop_masks=True)
    j = read_metauas_json(mvtec, meta_dir=meta)
    bad = [s for s in j.categories["cat0"].test if s.label == 1]
    assert bad and all(s.whole_image and s.mask is None for s in bad)
    assert load_mask(bad[0], (48, 48)).all()


def test_official_meta_errors_name_the_file(mvtec, tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "test.json").write_text('{"filename": "cat0/test/good/000.png", "label": 0, "clsname": "cat0"}\n{oops\n')
    with pytest.raises(InputError, match=r"test\.json:2: not valid JSON"):
        read_metauas_json(mvtec, meta_dir=meta)
    (meta / "test.json").write_text('{"filename": "cat0/test/good/999.png", "label": 0, "clsname": "cat0"}\n')
    with pytest.raises(InputError, match=r"entry 1: image not found"):
        read_metauas_json(mvtec, meta_dir=meta)
    (meta / "test.json").write_text('{"filename": "cat0/test/good/000.png", "clsname": "cat0"}\n')
    with pytest.raises(InputError, match="needs filename, label"):
        read_metauas_json(mvtec, meta_dir=meta)
    (meta / "test.json").write_text('{"filename": "cat0/test/good/000.png", "label": 0, "clsname": "cat0"}\n')
    (meta / "oneprompt_seed1.json").write_text(json.dumps({"cat0": {"label": 0}}))
    with pytest.raises(InputError, match=r"oneprompt_seed1\.json: entry 'cat0' has no filename"):
        read_metauas_json(mvtec, meta_dir=meta)


def test_make_dataset_cli_and_errors(tmp_path, capsys):
    assert main(["make-dataset", "--out", str(tmp_path / "d"), "--size", "32", "--categories", "1",
                 "--train", "2", "--test-good", "1", "--test-anomalous", "2", "--meta"]) == 0
    assert (tmp_path / "d" / "meta" / "test.json").is_file()
    assert len(read_mvtec(tmp_path / "d").categories["cat0"].test) == 3
    assert main(["make-dataset", "--out", str(tmp_path / "e"), "--images", str(tmp_path / "nope")]) == 2
    assert "no such image" in capsys.readouterr().err
