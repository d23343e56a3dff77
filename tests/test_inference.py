"""Image loading (every input kind, mode and broken file) and the prompt-caching Segmenter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metauas.errors import InputError
from metauas.scoring import image_score
from metauas.io import images as images_module
from metauas.inference.images import list_images, load_image, to_model_tensor
from metauas.inference.segmenter import Segmenter
from metauas.models import MetaUAS, ModelConfig

SIZE = 64



def rgb_array(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- load_image
def test_paths_pil_numpy_and_tensors_give_the_same_rgb(tmp_path):
    rgb = rgb_array()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    sources = [tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(rgb), rgb,
               rgb.astype(np.float32) / 255.0, rgb.astype(np.float64) / 255.0,
               torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0,  # (3,H,W) float
               torch.from_numpy(rgb)]  # (H,W,3) uint8
    for source in sources:
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
        assert np.array_equal(out, rgb), type(source)


def test_grey_one_channel_uint16_and_bool_arrays():
    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    assert np.array_equal(load_image(grey), np.repeat(grey[:, :, None], 3, axis=2))
    assert np.array_equal(load_image(grey[:, :, None]), load_image(grey))
    deep = np.full((16, 16), 65535, np.uint16)
    deep[0, 0] = 0
    out = load_image(deep)
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 0
    assert load_image(np.ones((10, 10), bool)).max() == 255
    # arrays follow the one alpha rule (composited on white, as files): opaque keeps the colours,
    # fully transparent is white
    opaque = np.concatenate([rgb_array(), np.full((20, 30, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(load_image(opaque), rgb_array())
    clear = np.concatenate([rgb_array(), np.zeros((20, 30, 1), np.uint8)], axis=2)
    assert (load_image(clear) == 255).all()


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "CMYK", "1", "RGB"])
def test_image_modes_load_as_rgb(mode, tmp_path):
    base = Image.fromarray(rgb_array(24, 32))
    if mode == "I;16":
        values = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80)
        image = Image.fromarray(values)
        assert image.mode.startswith("I;16")
        path = _save(image, tmp_path / "deep.png")
        out = load_image(path)
        expected = np.round(values / 65535.0 * 255).astype(np.uint8)
        assert np.abs(out[:, :, 0].astype(int) - expected).max() <= 1
    elif mode == "CMYK":
        path = _save(base.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
        assert Image.open(path).mode == "CMYK"
        out = load_image(path)
        assert np.abs(out.astype(int) - np.asarray(base).astype(int)).mean() < 20
    elif mode in ("RGBA", "LA"):
        image = base.convert(mode)
        alpha = Image.new("L", image.size, 255)
        alpha.paste(0, (0, 0, 10, 10))  # a transparent corner
        image.putalpha(alpha)
        out = load_image(_save(image, tmp_path / f"{mode}.png"))
        assert (out[:10, :10] == 255).all()  # transparent -> white
        if mode == "RGBA":
            assert np.array_equal(out[12:, 12:], np.asarray(base)[12:, 12:])
    elif mode == "P":
        image = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        out = load_image(_save(image, tmp_path / "palette.png"))
        assert np.array_equal(out, np.asarray(image.convert("RGB")))
        transparent = image.copy()
        transparent.info["transparency"] = int(np.asarray(image)[0, 0])
        out = load_image(_save(transparent, tmp_path / "palette_t.png", transparency=int(np.asarray(image)[0, 0])))
        assert (out[0, 0] == 255).all()
    elif mode == "1":
        image = base.convert("1")
        out = load_image(_save(image, tmp_path / "bits.png"))
        assert set(np.unique(out)) <= {0, 255} and out.shape == (24, 32, 3)
    else:
        image = base.convert(mode)
        out = load_image(_save(image, tmp_path / f"{mode}.png"))
        assert out.shape == (24, 32, 3)
        if mode == "L":
            assert (out[:, :, 0] == out[:, :, 2]).all()
        else:
            assert np.array_equal(out, np.asarray(base))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(rgb_array(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = _save(image, tmp_path / "rot.jpg", exif=exif)
    assert load_image(path).shape == (40, 20, 3)


def _png_bytes(h: int = 40, w: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb_array(h, w)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb_array(64, 64)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["missing", "empty", "random", "text", "truncated-png", "truncated-jpeg",
                                  "directory"])
def test_broken_files_raise_input_error(kind, tmp_path):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    elif kind == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("this is not an image\n" * 20)
    elif kind == "truncated-png":
        data = _png_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-jpeg":
        path = tmp_path / "cut.jpg"
        data = _jpeg_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_tiny_images_are_refused_and_small_ones_accepted():
    with pytest.raises(InputError, match="too small"):
        load_image(rgb_array(4, 40))
    assert load_image(rgb_array(8, 8)).shape == (8, 8, 3)


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes(30, 30))
    monkeypatch.setattr(images_module, "MAX_PIXELS", 500)
    with pytest.raises(InputError, match="too large"):
        load_image(path)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 900)
    assert load_image(path).shape == (30, 30, 3)


@pytest.mark.parametrize("bad", [
    np.zeros((10, 10, 2), np.uint8),  # two channels
    np.zeros((2, 10, 10, 3), np.uint8),  # a batch
    np.full((10, 10, 3), 1.5, np.float32),  # floats outside [0, 1]
    np.full((10, 10, 3), np.nan, np.float32),
    np.zeros((10, 10, 3), np.complex64),
    [[0, 1], [2, 3]],  # not an image type
])
def test_unusable_arrays_raise_input_error(bad):
    with pytest.raises(InputError):
        load_image(bad)


def test_to_model_tensor_and_list_images(tmp_path):
    t = to_model_tensor(rgb_array(37, 53), 64)
    assert t.shape == (1, 3, 64, 64) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    same = to_model_tensor(rgb_array(64, 64), 64)
    assert torch.equal(same, torch.from_numpy(rgb_array(64, 64)).permute(2, 0, 1)[None].float() / 255)
    for name in ("b.png", "a.JPG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    with pytest.raises(InputError):
        list_images(tmp_path / "a.JPG")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        list_images(tmp_path / "empty")


# --------------------------------------------------------------------------- Segmenter
@pytest.fixture(scope="module")
def model() -> MetaUAS:
    torch.manual_seed(0)
    m = MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=SIZE))
    with torch.no_grad():  # a mask head that does not saturate, so maps vary across pixels
        m.mask_head.weight.mul_(4.0)
    return m.eval()


def scene(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    return rgb_array(h, w, seed)


@pytest.mark.parametrize("optimize", [True, False])
def test_prompt_is_encoded_once(model, optimize):
    segmenter = Segmenter(model, optimize=optimize, batch_size=2)
    calls: list[int] = []  # batch size of every encoder call
    hook = segmenter.inference_model.encoder.register_forward_hook(
        lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        segmenter.set_prompt(scene(0))
        assert calls == [1]
        results = segmenter.segment([scene(i) for i in range(1, 6)])
        assert len(results) == 5
        assert calls == [1, 2, 2, 1]  # the prompt once, then only query batches
        segmenter.segment(scene(9))
        assert calls == [1, 2, 2, 1, 1]
    finally:
        hook.remove()


def test_batches_equal_single_queries(model):
    segmenter = Segmenter(model)
    segmenter.set_prompt(scene(0))
    queries = [scene(i, 40 + i, 50 - i) for i in range(1, 5)]
    batched = segmenter.segment(queries, batch_size=4)
    for query, result in zip(queries, batched):
        single = segmenter.segment_one(query)
        assert np.abs(single.anomaly_map - result.anomaly_map).max() <= 1e-5


@pytest.mark.parametrize("hw", [(37, 53), (91, 33), (64, 64)])
def test_map_has_the_original_resolution_and_score_is_its_top_mean(model, hw):
    segmenter = Segmenter(model)
    segmenter.set_prompt(scene(0))
    result = segmenter.segment_one(scene(1, *hw))
    assert result.anomaly_map.shape == hw and result.anomaly_map.dtype == np.float32
    assert 0 <= result.anomaly_map.min() and result.anomaly_map.max() <= 1
    values = np.sort(result.anomaly_map.ravel().astype(np.float64))[::-1]
    k = max(1, round(0.001 * values.size))
    assert result.score == pytest.approx(float(values[:k].mean()))
    assert result.score == pytest.approx(image_score(result.anomaly_map))
    assert result.score <= float(result.anomaly_map.max()) + 1e-7
    paper = Segmenter(model, top_fraction=0.0)  # top_fraction 0: the paper's maximum
    paper.set_prompt(scene(0))
    assert paper.segment_one(scene(1, *hw)).score == pytest.approx(float(result.anomaly_map.max()))
    assert result.anomaly_map.std() > 0  # a real map, not a constant


def test_segmenter_matches_the_model_called_directly(model):
    """Both paths (optimized copy and eager model) equal model(query, prompt) on the same tensors."""
    prompt, query = to_model_tensor(scene(0), SIZE), to_model_tensor(scene(1), SIZE)
    with torch.no_grad():
        expected = model(query=query, prompt=prompt)
    for optimize in (True, False):
        segmenter = Segmenter(model, optimize=optimize)
        segmenter.set_prompt(scene(0))
        got = segmenter.predict_tensor(query)
        assert float((got - expected).abs().max()) <= 1e-5
    assert segmenter.inference_model is model  # optimize=False runs the model itself


def test_k_shot_prompts_mean_mode(model):
    """kshot="mean": the model's own k-shot path (aligned prompt features averaged)."""
    segmenter = Segmenter(model, kshot="mean")
    prompts = [scene(0), scene(2, 40, 60)]
    segmenter.set_prompt(prompts)
    assert segmenter.num_prompts == 2
    query = scene(1)
    got = segmenter.segment_one(query).anomaly_map
    stacked = torch.cat([to_model_tensor(p, SIZE) for p in prompts])[None]  # (1,K,3,S,S)
    with torch.no_grad():
        expected = model(query=to_model_tensor(query, SIZE), prompt=stacked)
    direct = Segmenter._to_original_size(expected[0], query.shape[:2])
    assert np.abs(got - direct).max() <= 1e-5
    segmenter.set_prompt([scene(0), scene(0), scene(0)])
    three = segmenter.segment_one(query).anomaly_map
    segmenter.set_prompt(scene(0))
    assert np.abs(three - segmenter.segment_one(query).anomaly_map).max() <= 1e-5


def test_k_shot_prompts_min_mode_is_the_default(model):
    """Default k-shot: one map per prompt, pixel-wise minimum; results list every prompt."""
    segmenter = Segmenter(model)
    prompts = [scene(0), scene(2, 40, 60)]
    segmenter.set_prompt(prompts)
    query = scene(1)
    result = segmenter.segment_one(query)
    assert result.prompts == [0, 1]
    q = to_model_tensor(query, SIZE)
    with torch.no_grad():
        maps = [model(query=q, prompt=to_model_tensor(p, SIZE)) for p in prompts]
    direct = Segmenter._to_original_size(torch.minimum(*maps)[0], query.shape[:2])
    assert np.abs(result.anomaly_map - direct).max() <= 1e-5
    segmenter.set_prompt([scene(0), scene(0), scene(0)])
    three = segmenter.segment_one(query).anomaly_map
    segmenter.set_prompt(scene(0))
    assert np.abs(three - segmenter.segment_one(query).anomaly_map).max() <= 1e-5
    with pytest.raises(InputError, match="kshot"):
        Segmenter(model, kshot="median")


def test_prompt_pool_picks_the_most_similar_prompt(model):
    """set_prompt_pool: each query is compared with its most similar pool image (MetaUAS*)."""
    pool = [scene(0), scene(2, 40, 60), scene(5)]
    segmenter = Segmenter(model)
    segmenter.set_prompt_pool(pool)
    queries = [scene(5), scene(0)]
    results = segmenter.segment(queries)
    assert [r.prompts for r in results] == [[2], [0]]  # an identical pool image is the most similar
    for q, r in zip(queries, results):  # same map as with that prompt alone
        alone = Segmenter(model)
        alone.set_prompt(pool[r.prompts[0]])
        assert np.abs(alone.segment_one(q).anomaly_map - r.anomaly_map).max() <= 1e-5
    segmenter.set_prompt_pool(pool, k=2)
    assert all(len(r.prompts) == 2 for r in segmenter.segment(queries))
    with pytest.raises(InputError, match="empty"):
        segmenter.set_prompt_pool([])


def test_mixed_inputs_names_and_errors(model, tmp_path):
    path = tmp_path / "q.png"
    Image.fromarray(scene(1)).save(path)
    segmenter = Segmenter(model)
    with pytest.raises(InputError, match="no prompt"):
        segmenter.segment(path)
    segmenter.set_prompt(Image.fromarray(scene(0)))
    results = segmenter.segment([path, Image.fromarray(scene(1)), scene(1), torch.from_numpy(scene(1))])
    assert results[0].name == str(path) and results[1].name == "query1"
    for r in results[1:]:
        assert np.abs(r.anomaly_map - results[0].anomaly_map).max() <= 1e-5
    with pytest.raises(InputError):
        segmenter.segment([path, tmp_path / "missing.png"])
    with pytest.raises(InputError):
        segmenter.set_prompt([])
    with pytest.raises(InputError):
        segmenter.set_prompt_tensor(torch.zeros(1, 3, 32, 32))
    with pytest.raises(InputError):
        Segmenter(model, size=50)
    with pytest.raises(InputError):
        Segmenter(model, batch_size=0)


def test_other_sizes_than_the_training_size(model):
    segmenter = Segmenter(model, size=96)
    segmenter.set_prompt(scene(0))
    assert segmenter.segment_one(scene(1, 33, 71)).anomaly_map.shape == (33, 71)


def test_optimized_segmenter_leaves_the_model_trainable(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Segmenter(model, optimize=True).set_prompt(scene(0))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(p.requires_grad for p in model.decoder.parameters())
