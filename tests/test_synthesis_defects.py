"""Inspection defects, nuisances, identical / grey / object-scene pairs (synthesis)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from metauas.errors import InputError
from metauas.synthesis import DEFECT_TYPES, ImageSources, PairGenerator, SynthesisConfig
from metauas.synthesis.fixtures import make_tiny_image_tree
from metauas.synthesis.local import mean_change

cv2.setNumThreads(1)
SIZE = 96


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> ImageSources:
    t = make_tiny_image_tree(tmp_path_factory.mktemp("imgs"), seed=3, coco=False)
    return ImageSources.from_dirs(t["photos"], objects=t["objects"], textures=t["textures"])


def aligned_cfg(**kw) -> SynthesisConfig:
    base = dict(size=SIZE, misalign_prob=0.0, photometric_jitter=0.0, return_aligned=True)
    base.update(kw)
    return SynthesisConfig(**base)


@pytest.mark.parametrize("scene", [0.0, 1.0])
@pytest.mark.parametrize("ctype", DEFECT_TYPES)
def test_defect_nonempty_visible_and_exact_outside(sources: ImageSources, ctype: str,
                                                    scene: float) -> None:
    gen = PairGenerator(sources, aligned_cfg(object_scene_prob=scene))
    for seed in range(5):
        p = gen.generate(seed, change_type=ctype)
        assert p.change_type == ctype and p.meta["object_scene"] == (scene == 1.0)
        assert p.mask.shape == (SIZE, SIZE) and p.mask.dtype == np.uint8
        assert set(np.unique(p.mask)) <= {0, 1}
        assert p.mask.mean() >= gen.config.min_mask_fraction
        outside = p.mask == 0
        assert np.array_equal(p.prompt_aligned[outside], p.query[outside])
        assert mean_change(p.prompt_aligned, p.query, p.mask) >= 3.0


def test_blank_frame_mask_covers_whole_query(sources: ImageSources) -> None:
    gen = PairGenerator(sources, aligned_cfg())
    blanks = 0
    for seed in range(40):
        p = gen.generate(seed, change_type="global_change")
        if p.meta["variant"].startswith("blank_"):
            blanks += 1
            assert p.mask.all()
            assert (p.query == p.query[0, 0]).all()
    assert blanks >= 3


def test_crack_is_thin_and_pits_are_small(sources: ImageSources) -> None:
    gen = PairGenerator(sources, aligned_cfg(size=128))
    for seed in range(6):
        crack = gen.generate(seed, change_type="defect_crack").mask
        # thin (line <= 2 px at 128, plus anti-aliasing and <= 1 px dilation): eroding by a
        # 9x9 square removes almost everything (crossings may leave a little)
        core = int(cv2.erode(crack, np.ones((9, 9), np.uint8)).sum())
        assert core <= 0.1 * int(crack.sum()), (seed, core, int(crack.sum()))
        pit = gen.generate(seed, change_type="defect_pit").mask
        assert pit.mean() < 0.1


def test_determinism_with_all_options(sources: ImageSources) -> None:
    cfg = dict(size=SIZE, no_change_rate=0.35, identical_prob=0.3, nuisance_prob=0.6,
               grayscale_prob=0.2, object_scene_prob=0.15)
    g1 = PairGenerator(sources, SynthesisConfig(**cfg))
    g2 = PairGenerator(sources, SynthesisConfig(**cfg))
    for seed in range(10):
        a, b = g1.generate(seed), g2.generate(np.random.default_rng(seed))
        assert a.change_type == b.change_type and a.meta["nuisance"] == b.meta["nuisance"]
        for k in ("prompt", "query", "mask"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), (seed, k)


@pytest.mark.parametrize("ctype", ["defect_crack", "local_color", "none"])
def test_nuisance_never_changes_the_mask(sources: ImageSources, ctype: str) -> None:
    plain = PairGenerator(sources, aligned_cfg())
    noisy = PairGenerator(sources, aligned_cfg(nuisance_prob=1.0))
    for seed in range(4):
        a, b = plain.generate(seed, change_type=ctype), noisy.generate(seed, change_type=ctype)
        # the nuisance is drawn after the change: same change, same mask, same geometry
        assert np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.prompt_aligned, b.prompt_aligned)
        assert b.meta["nuisance"]["prompt"] and b.meta["nuisance"]["query"]
        assert not np.array_equal(a.query, b.query) or not np.array_equal(a.prompt, b.prompt)
        # no geometry change: the nuisanced query stays close to the clean one
        assert np.abs(a.query.astype(np.int16) - b.query.astype(np.int16)).mean() < 40


def test_identical_pairs_are_exactly_equal(sources: ImageSources) -> None:
    gen = PairGenerator(sources, SynthesisConfig(size=SIZE, identical_prob=1.0, nuisance_prob=1.0,
                                                 misalign_prob=1.0, photometric_jitter=0.3))
    for seed in range(6):
        p = gen.generate(seed, change_type="none")
        assert p.meta["identical"] and p.mask.sum() == 0
        assert np.array_equal(p.prompt, p.query)
    p = gen.generate(0, change_type="defect_pit")  # only no-change pairs are made identical
    assert not p.meta["identical"]


def test_grayscale_pairs_have_equal_channels(sources: ImageSources) -> None:
    gen = PairGenerator(sources, aligned_cfg(grayscale_prob=1.0, nuisance_prob=1.0))
    for seed in range(6):
        p = gen.generate(seed)
        assert p.meta["grayscale"]
        for img in (p.prompt, p.query):
            assert np.array_equal(img[..., 0], img[..., 1])
            assert np.array_equal(img[..., 1], img[..., 2])


def test_new_types_are_drawn_by_default(sources: ImageSources) -> None:
    gen = PairGenerator(sources, SynthesisConfig(size=64, no_change_rate=0.0,
                                                 change_weights={t: 1.0 for t in DEFECT_TYPES}))
    assert {gen.generate(s).change_type for s in range(40)} == set(DEFECT_TYPES)


def test_defects_work_without_objects_or_textures(tmp_path: Path) -> None:
    t = make_tiny_image_tree(tmp_path, n_photos=2, n_objects=1, n_textures=1, coco=False)
    gen = PairGenerator(ImageSources.from_dirs(t["photos"]),
                        aligned_cfg(object_scene_prob=1.0))  # no objects: normal scenes
    for ctype in DEFECT_TYPES:
        p = gen.generate(1, change_type=ctype)
        assert not p.meta["object_scene"] and p.mask.any()


def test_texture_recrop_prompt_is_another_place_of_the_same_texture(sources: ImageSources) -> None:
    kw = dict(texture_background_prob=1.0, crop_scale=(0.3, 0.3), no_change_rate=1.0)
    plain = PairGenerator(sources, aligned_cfg(**kw))
    recrop = PairGenerator(sources, aligned_cfg(texture_recrop_prob=1.0, **kw))
    moved = 0
    for seed in range(6):
        a, b = plain.generate(seed), recrop.generate(seed)
        assert not a.meta["prompt_recrop"] and b.meta["prompt_recrop"]
        assert b.meta["background"] == a.meta["background"]  # same texture image
        assert np.array_equal(a.query, b.query) and b.mask.sum() == 0  # query and mask unchanged
        assert np.array_equal(a.prompt, a.query)  # aligned, no jitter: the same place
        moved += not np.array_equal(b.prompt, b.query)
        assert b.prompt_aligned is None  # no registered prompt exists for another place
    assert moved >= 5
    ident = PairGenerator(sources, aligned_cfg(texture_recrop_prob=1.0, identical_prob=1.0, **kw))
    p = ident.generate(0)
    assert p.meta["identical"] and not p.meta["prompt_recrop"]


@pytest.mark.parametrize("name", ["nuisance_prob", "identical_prob", "grayscale_prob",
                                  "object_scene_prob", "texture_recrop_prob"])
@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_config_validation_rejects_out_of_range(name: str, bad: float) -> None:
    with pytest.raises(InputError, match=name):
        SynthesisConfig(**{name: bad}).validate()


def test_training_config_keys_are_accepted() -> None:
    cfg = SynthesisConfig.from_dict({
        "no_change_rate": 0.35, "identical_prob": 0.3, "nuisance_prob": 0.6,
        "grayscale_prob": 0.2, "object_scene_prob": 0.15, "texture_background_prob": 0.45,
        "change_weights": {"local_texture": 1, "local_patch": 0.7, "local_color": 0.7,
                           "object_disappear": 0.5, "object_appear": 0.5, "object_exchange": 0.5,
                           "defect_crack": 2, "defect_pit": 1.5, "defect_stain": 1,
                           "defect_missing": 1, "global_change": 0.5}})
    assert cfg.change_weights["defect_crack"] == 2


def test_same_surface_judges_layout_free_statistics() -> None:
    from metauas.synthesis.local import same_surface

    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.normal(128, 30, (256, 256, 3)).astype(np.float32), (0, 0), 2)
    noise = np.clip(noise, 0, 255).astype(np.uint8)
    assert same_surface(noise[:128, :128], noise[128:, 128:])  # two places of one surface
    assert same_surface(noise[:128, :128], noise[:128, :128][::-1].copy())  # layout ignored
    wall = noise[:128, :128].copy()
    split = wall.copy()
    split[:64] = 40  # half of the crop is another material
    assert not same_surface(wall, split)
    assert not same_surface(wall, np.clip(wall.astype(int) + 25, 0, 255).astype(np.uint8))


def test_surface_finish_change_is_a_large_texture_change_and_opt_in(sources: ImageSources) -> None:
    gen = PairGenerator(sources, aligned_cfg(size=128))
    variants, areas = set(), []
    for seed in range(12):
        p = gen.generate(seed, change_type="defect_finish")
        variants.add(p.meta["variant"])
        inside = p.mask > 0
        areas.append(p.mask.mean())
        shift = p.query[inside].astype(float).mean() - p.prompt_aligned[inside].astype(float).mean()
        assert abs(shift) < 8.0  # brightness about the same: only the texture differs
    assert variants == {"striations", "smoothed", "contrast"}
    assert np.median(areas) >= 0.1  # regions, not spots (flat areas a smoothing leaves alone stay normal)
    assert "defect_finish" not in SynthesisConfig().change_weights  # opt-in: default pair sets unchanged
    assert "defect_finish" not in PairGenerator(sources, SynthesisConfig(size=64)).available_types
