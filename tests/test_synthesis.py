"""Synthetic change pairs: alignment, determinism, change types, no-change rate, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from metauas.errors import InputError
from metauas.synthesis import (
    ALL_TYPES,
    DEFECT_TYPES,
    LOCAL_TYPES,
    OBJECT_TYPES,
    ImageSources,
    PairGenerator,
    SynthesisConfig,
)
from metauas.synthesis import geometry
from metauas.synthesis.generator import OPT_IN_TYPES
from metauas.synthesis.fixtures import make_tiny_image_tree
from metauas.synthesis.io import decode_segmentation, load_rgb, load_rgba
from metauas.synthesis.local import mean_change
from metauas.synthesis.perlin import perlin_mask, perlin_noise

cv2.setNumThreads(1)
SIZE = 64


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_image_tree(tmp_path_factory.mktemp("imgs"), seed=1)


@pytest.fixture(scope="module")
def sources(tree: dict[str, Path]) -> ImageSources:
    return ImageSources.from_dirs(tree["photos"], objects=tree["objects"], textures=tree["textures"])


def aligned_cfg(**kw) -> SynthesisConfig:
    """No misalignment, no jitter: prompt and query share one frame."""
    base = dict(size=SIZE, misalign_prob=0.0, photometric_jitter=0.0, return_aligned=True)
    base.update(kw)
    return SynthesisConfig(**base)


# ------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("ctype", ALL_TYPES)
def test_pixels_outside_mask_are_unchanged_when_aligned(sources: ImageSources, ctype: str) -> None:
    gen = PairGenerator(sources, aligned_cfg())
    for seed in range(4):
        p = gen.generate(seed, change_type=ctype)
        assert p.change_type == ctype
        assert p.prompt.shape == p.query.shape == (SIZE, SIZE, 3)
        assert p.mask.shape == (SIZE, SIZE) and p.mask.dtype == np.uint8
        assert set(np.unique(p.mask)) <= {0, 1}
        outside = p.mask == 0
        assert np.array_equal(p.prompt[outside], p.query[outside]), "change leaked outside mask"
        np.testing.assert_array_equal(p.prompt, p.prompt_aligned)
        if ctype == "none":
            assert p.mask.sum() == 0 and np.array_equal(p.prompt, p.query)
        else:
            assert p.mask.mean() >= gen.config.min_mask_fraction


@pytest.mark.parametrize("ctype", LOCAL_TYPES)
def test_local_changes_are_visible_inside_mask(sources: ImageSources, ctype: str) -> None:
    gen = PairGenerator(sources, aligned_cfg())
    for seed in range(5):
        p = gen.generate(seed, change_type=ctype)
        assert mean_change(p.prompt, p.query, p.mask) >= gen.config.min_visible_change - 1.0


@pytest.mark.parametrize("ctype", ["none", "local_patch", "object_exchange"])
def test_misaligned_prompt_registers_back_onto_query(sources: ImageSources, ctype: str) -> None:
    """Outside the mask the query equals the prompt after the shared warp (up to interpolation)."""
    cfg = SynthesisConfig(size=SIZE, misalign_prob=1.0, photometric_jitter=0.0, return_aligned=True,
                          pair_flip_prob=0.0, texture_background_prob=0.0)
    gen = PairGenerator(sources, cfg)
    checked = 0
    for seed in range(8):
        p = gen.generate(seed, change_type=ctype)
        outside = p.mask == 0
        # the un-warped prompt equals the query exactly outside the mask
        assert np.array_equal(p.prompt_aligned[outside], p.query[outside])
        mis = geometry.Misalignment(**p.meta["misalignment"])
        if mis.is_identity:
            continue
        mat = np.array(p.meta["prompt_to_query"])
        back = cv2.warpAffine(p.prompt, mat, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        valid = cv2.warpAffine(np.ones((SIZE, SIZE), np.uint8), mat, (SIZE, SIZE),
                               flags=cv2.INTER_NEAREST, borderValue=0)
        valid = cv2.erode(valid, np.ones((5, 5), np.uint8)) > 0
        away = cv2.dilate(p.mask, np.ones((5, 5), np.uint8)) == 0
        sel = valid & away
        assert sel.sum() > 0.2 * SIZE * SIZE
        diff = np.abs(back.astype(np.int16) - p.query.astype(np.int16))[sel]
        raw = np.abs(p.prompt.astype(np.int16) - p.query.astype(np.int16))[sel]
        if raw.mean() < 3.0:
            continue  # a flat background: misalignment is invisible, nothing to measure
        assert diff.mean() < 6.0, diff.mean()  # bilinear resampling twice on textured images
        assert diff.mean() < 0.5 * raw.mean()  # and much closer than without re-registration
        checked += 1
    assert checked >= 3


def test_prompt_matrix_maps_corners_consistently() -> None:
    mis = geometry.Misalignment(angle=17.0, scale=1.03, tx=2.5, ty=-1.0, hflip=True)
    size, canvas = 64, 84
    full = geometry.prompt_matrix(mis, size, canvas)
    to_q = geometry.prompt_to_query_matrix(mis, size, canvas)
    m = (canvas - size) / 2
    for pt in ([0, 0], [63, 0], [10, 50]):
        c = full @ np.array([*pt, 1.0])
        q = to_q @ np.array([*pt, 1.0])
        np.testing.assert_allclose(c - m, q)
    # mirrored: prompt x=0 and x=63 swap sides around the centre
    a = full @ np.array([0.0, 31.5, 1.0])
    b = full @ np.array([63.0, 31.5, 1.0])
    unflipped = geometry.prompt_matrix(geometry.Misalignment(17.0, 1.03, 2.5, -1.0, False), size, canvas)
    np.testing.assert_allclose(a, unflipped @ np.array([63.0, 31.5, 1.0]))
    np.testing.assert_allclose(b, unflipped @ np.array([0.0, 31.5, 1.0]))


def test_photometric_jitter_changes_prompt_only(sources: ImageSources) -> None:
    gen = PairGenerator(sources, aligned_cfg(photometric_jitter=0.3))
    p = gen.generate(3, change_type="none")
    assert not np.array_equal(p.prompt, p.query)
    assert np.array_equal(p.prompt_aligned, p.query)


# ------------------------------------------------------------------------------ determinism
def test_same_seed_gives_bit_identical_pairs(sources: ImageSources) -> None:
    cfg = SynthesisConfig(size=SIZE)
    g1, g2 = PairGenerator(sources, cfg), PairGenerator(sources, SynthesisConfig(size=SIZE))
    for seed in range(12):
        a, b = g1.generate(seed), g2.generate(np.random.default_rng(seed))
        assert a.change_type == b.change_type
        for k in ("prompt", "query", "mask"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), (seed, k)
    a, b = g1.generate(100), g1.generate(101)
    assert not np.array_equal(a.query, b.query)


# ------------------------------------------------------------------------------ types and rates
def test_every_change_type_is_drawn(sources: ImageSources) -> None:
    gen = PairGenerator(sources, SynthesisConfig(size=SIZE, no_change_rate=0.15))
    seen = {gen.generate(s).change_type for s in range(80)}
    assert seen == set(ALL_TYPES) - set(OPT_IN_TYPES)  # opt-in types need a weight


def test_object_types_unavailable_without_objects(tree: dict[str, Path]) -> None:
    src = ImageSources.from_dirs(tree["photos"])
    gen = PairGenerator(src, SynthesisConfig(size=SIZE, no_change_rate=0.0))
    assert set(gen.available_types) == set(LOCAL_TYPES + DEFECT_TYPES) - set(OPT_IN_TYPES)
    assert {gen.generate(s).change_type for s in range(20)} <= set(LOCAL_TYPES + DEFECT_TYPES)
    with pytest.raises(InputError, match="object"):
        gen.generate(0, change_type="object_exchange")
    with pytest.raises(InputError, match="can be made"):
        PairGenerator(src, SynthesisConfig(size=SIZE, change_weights={t: 1.0 for t in OBJECT_TYPES}))


@pytest.mark.parametrize("rate", [0.0, 0.4, 1.0])
def test_no_change_rate(sources: ImageSources, rate: float) -> None:
    gen = PairGenerator(sources, aligned_cfg(no_change_rate=rate))
    pairs = [gen.generate(s) for s in range(40)]
    empty = [p.mask.sum() == 0 for p in pairs]
    assert all((p.change_type == "none") == e for p, e in zip(pairs, empty))
    frac = float(np.mean(empty))
    if rate in (0.0, 1.0):
        assert frac == rate
    else:
        assert 0.2 <= frac <= 0.6
    for p in pairs:
        if p.change_type == "none":
            assert np.array_equal(p.prompt, p.query)


def test_coco_instances_drive_object_changes(tree: dict[str, Path]) -> None:
    src = ImageSources.from_dirs(tree["photos"], masks=tree["masks"])  # no sprite folder
    assert len(src.instances) == 6
    gen = PairGenerator(src, aligned_cfg())
    for ctype in OBJECT_TYPES:
        for seed in range(3):
            p = gen.generate(seed, change_type=ctype)
            assert "#" in p.meta["object"]  # an annotated instance was used
            outside = p.mask == 0
            assert np.array_equal(p.prompt[outside], p.query[outside])
            assert mean_change(p.prompt, p.query, p.mask) > 1.0


def test_custom_inpainter_cannot_touch_outside(sources: ImageSources) -> None:
    calls = []

    def bad_inpainter(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(1)
        return np.full_like(image, 7)  # also overwrites unmasked pixels

    gen = PairGenerator(sources, aligned_cfg(sprite_inpaint_prob=1.0), inpainter=bad_inpainter)
    p = gen.generate(0, change_type="object_disappear")
    assert calls
    assert np.array_equal(p.prompt[p.mask == 0], p.query[p.mask == 0])
    assert (p.query[p.mask > 0] == 7).all()


# ------------------------------------------------------------------------------ building blocks
def test_perlin_mask_area_and_noise_range() -> None:
    rng = np.random.default_rng(0)
    n = perlin_noise((50, 70), (4, 3), rng)
    assert n.shape == (50, 70) and np.abs(n).max() <= 0.75 and n.std() > 0.05
    for _ in range(20):
        m = perlin_mask((64, 64), rng, area_range=(0.02, 0.3))
        assert 0.02 <= m.mean() <= 0.3


def _runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a (possibly empty) run of zeros."""
    counts, cur, run = [], 0, 0
    for v in mask.T.reshape(-1):
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def _rle_encode_string(mask: np.ndarray) -> str:
    """Test-side encoder of COCO's compressed RLE string (independent of the decoder)."""
    counts = _runs(mask)
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not ch & 0x10) or (x == -1 and ch & 0x10))
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def test_coco_rle_and_polygon_decoding() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((23, 31), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, 20), rng.integers(0, 28)
        mask[y:y + int(rng.integers(1, 9)), x:x + int(rng.integers(1, 12))] = 1
    rle = {"size": [23, 31], "counts": _rle_encode_string(mask)}
    np.testing.assert_array_equal(decode_segmentation(rle, 23, 31), mask)
    np.testing.assert_array_equal(
        decode_segmentation({"size": [23, 31], "counts": _runs(mask)}, 23, 31), mask)
    # a hand-checked string: 2x2 image, column-major runs [1, 2, 1] -> chars "1", "2", "1"
    np.testing.assert_array_equal(
        decode_segmentation({"size": [2, 2], "counts": "121"}, 2, 2), [[0, 1], [1, 0]])
    poly = decode_segmentation([[2, 2, 12, 2, 12, 9, 2, 9]], 20, 20)
    assert poly[5, 5] == 1 and poly[15, 15] == 0


def test_split_by_source_is_disjoint(sources: ImageSources) -> None:
    train, val = sources.split_by_source(val_fraction=0.3, seed=0)
    tr = {r.path for r in train.photos + train.objects + train.textures}
    va = {r.path for r in val.photos + val.objects + val.textures}
    assert tr and va and not (tr & va)
    assert {r.source for r in train.photos}.isdisjoint({r.source for r in val.photos})
    t2, v2 = sources.split_by_source(val_sources=["srcB"])
    assert {r.source for r in v2.photos} == {"srcB"} and {r.source for r in t2.photos} == {"srcA"}


def test_manifest_supplies_sources(tmp_path: Path) -> None:
    t = make_tiny_image_tree(tmp_path, n_photos=2, n_objects=1, n_textures=1, coco=False)
    (tmp_path / "manifest.csv").write_text(
        "path,source,license,kind\nphotos/srcA/photo_00.png,pkg-x,CC0,photos\n")
    src = ImageSources.from_dirs(t["photos"])
    by_name = {r.path.name: r for r in src.photos}
    assert by_name["photo_00.png"].source == "pkg-x"
    assert by_name["photo_00.png"].license == "CC0"
    assert by_name["photo_01.png"].source == "srcB"  # not listed: sub-folder name


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors(tmp_path: Path, tree: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no photos found"):
        ImageSources.from_dirs(empty)
    with pytest.raises(InputError, match="does not exist"):
        ImageSources.from_dirs(tmp_path / "missing")
    corrupt = tmp_path / "bad" / "broken.jpg"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        load_rgb(corrupt)
    src = ImageSources.from_dirs(corrupt.parent)
    with pytest.raises(InputError, match="broken.jpg"):
        PairGenerator(src, SynthesisConfig(size=SIZE)).generate(0)
    rgb_only = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb_only), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match="no alpha"):
        load_rgba(rgb_only)
    cases = {
        "not json": "{oops",
        "needs top-level": json.dumps({"images": []}),
        "needs 'image_id'": json.dumps({"images": [], "annotations": [{"id": 1}]}),
        "unknown image_id": json.dumps({"images": [], "annotations": [
            {"image_id": 5, "segmentation": [[0, 0, 1, 0, 1, 1]]}]}),
        "needs 'id', 'file_name'": json.dumps({"images": [{"id": 1}], "annotations": []}),
    }
    for msg, text in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(InputError, match=msg if msg != "not json" else "cannot read COCO"):
            ImageSources.from_dirs(tree["photos"], masks=bad)
    with pytest.raises(InputError, match="max_rotation"):
        SynthesisConfig(max_rotation=400).validate()
    with pytest.raises(InputError, match="unknown change types"):
        SynthesisConfig(change_weights={"explode": 1.0}).validate()


def test_source_weighting(sources: ImageSources) -> None:
    from metauas.synthesis.generator import _source_cdf
    from metauas.synthesis.io import ImageRecord

    recs = [ImageRecord(Path(f"big{i}.png"), "big", "objects") for i in range(90)] + \
           [ImageRecord(Path(f"small{i}.png"), "small", "objects") for i in range(10)]
    for mode, share in (("image", 0.1), ("sqrt", np.sqrt(10) / (np.sqrt(10) + np.sqrt(90))),
                        ("source", 0.5)):
        w = np.diff(np.r_[0.0, _source_cdf(recs, mode)])
        assert w[90:].sum() / w.sum() == pytest.approx(share)
    with pytest.raises(InputError, match="source_weighting"):
        SynthesisConfig(source_weighting="bogus").validate()
