"""One image reader for every input type: bit depth and alpha rules (issue 12)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from metauas.io.images import read_image
from metauas.models import DEFAULT_MODEL, available_models, load_model
from metauas.runtime.torch_backend import Segmenter



@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    """The bundled trained model: it tells a defect from a normal image, so decisions mean something."""
    assert DEFAULT_MODEL in available_models(), "the bundled default model is missing from the package"
    return Segmenter(load_model(DEFAULT_MODEL))


def defect_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    prompt = cv2.resize(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), (96, 80))
    prompt[0, 0] = 255  # the full 8-bit range is used
    query = prompt.copy()
    query[25:50, 30:65] = (250, 15, 190)
    return prompt, query


def deepen(rgb8: np.ndarray, bits: int) -> np.ndarray:
    return np.round(rgb8.astype(np.float64) * (2 ** bits - 1) / 255.0).astype(np.uint16)


def with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk (RGB, `bits` each) after IHDR."""
    body = bytes([bits] * 3)
    chunk = struct.pack(">I", len(body)) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def write_png16(path: Path, rgb16: np.ndarray, sbit: int | None = None) -> Path:
    ok, buffer = cv2.imencode(".png", rgb16[:, :, ::-1])
    assert ok
    data = buffer.tobytes()
    path.write_bytes(with_sbit(data, sbit) if sbit else data)
    return path


def run_pair(segmenter: Segmenter, prompt, query):
    segmenter.set_prompt([prompt])
    return segmenter.segment([query])[0]


def decision(score: float, threshold: float) -> str:
    return "anomalous" if score > threshold else "normal"


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_deep_images_as_files_and_arrays_match_the_8_bit_pair(segmenter, tmp_path, bits):
    prompt8, query8 = defect_pair()
    reference = run_pair(segmenter, prompt8, query8)
    normal = run_pair(segmenter, prompt8, prompt8)
    threshold = (reference.score + normal.score) / 2
    assert decision(reference.score, threshold) == "anomalous"
    prompt_d, query_d = deepen(prompt8, bits), deepen(query8, bits)
    cases = {
        "arrays": (prompt_d, query_d),
        "png": (write_png16(tmp_path / "p.png", prompt_d), write_png16(tmp_path / "q.png", query_d)),
        "png+sBIT": (write_png16(tmp_path / "ps.png", prompt_d, bits), write_png16(tmp_path / "qs.png", query_d, bits)),
        "tiff": (tmp_path / "p.tif", tmp_path / "q.tif"),
    }
    cv2.imwrite(str(cases["tiff"][0]), prompt_d[:, :, ::-1])
    cv2.imwrite(str(cases["tiff"][1]), query_d[:, :, ::-1])
    for case, (p, q) in cases.items():
        result = run_pair(segmenter, p if isinstance(p, np.ndarray) else str(p), q if isinstance(q, np.ndarray)
                          else str(q))
        assert decision(result.score, threshold) == "anomalous", case
        assert np.abs(result.anomaly_map - reference.anomaly_map).max() < 1e-2, case
        assert result.scaling.startswith(f"{bits}-bit"), (case, result.scaling)
    assert "sBIT" in run_pair(segmenter, str(cases["png+sBIT"][0]), str(cases["png+sBIT"][1])).scaling


def test_one_pixel_over_255_does_not_change_the_scaling(segmenter):
    prompt8, query8 = defect_pair()
    for prompt in (prompt8.astype(np.uint16), deepen(prompt8, 16), prompt8.astype(np.int32)):
        query = query8.astype(prompt.dtype)
        query[5, 5, 0] = 255
        bumped = query.copy()
        bumped[5, 5, 0] = 256
        segmenter.set_prompt([prompt])
        a, b = segmenter.segment([query, bumped])
        assert np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-2
        assert abs(a.score - b.score) < 1e-2


def test_path_pil_array_and_tensor_of_one_rgba_image_give_identical_maps(segmenter, tmp_path):
    prompt8, query8 = defect_pair()
    alpha = np.full(query8.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0  # transparent left part
    alpha[60:, :] = 128  # half-transparent bottom
    rgba = np.dstack([query8, alpha])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    segmenter.set_prompt([prompt8])
    sources = [str(path), Image.open(path), rgba, torch.from_numpy(rgba).permute(2, 0, 1).contiguous()]
    maps = [r.anomaly_map for r in segmenter.segment(sources)]
    for other in maps[1:]:
        assert np.array_equal(other, maps[0])
    loaded = read_image(rgba)
    assert loaded.alpha and (loaded.rgb[:60, :40] == 255).all()


def test_batch_tensor_error_says_what_works(segmenter):
    from metauas.errors import InputError

    with pytest.raises(InputError, match=r"\(C,H,W\).*tensor\[0\]"):
        read_image(torch.rand(1, 3, 32, 32))


def test_with_an_8_bit_prompt_wide_queries_are_scaled_by_their_own_maximum(segmenter):
    """What README and `segment --help` say: an 8-bit prompt decides no depth, so a 16-bit
    query without sBIT is scaled by the smallest depth holding its own largest value."""
    segmenter.set_prompt(np.zeros((40, 40, 3), np.uint8))
    assert segmenter.query_depth is None
    scalings = [segmenter.read_query(np.full((40, 40), top, np.uint16)).scaling for top in (1000, 4000)]
    assert scalings == ["10-bit (from this image's largest value)", "12-bit (from this image's largest value)"]
    segmenter.set_prompt(np.full((40, 40), 1000, np.uint16))  # a wide prompt without sBIT decides the depth
    assert segmenter.read_query(np.full((40, 40), 4000, np.uint16)).scaling == \
        "10-bit (depth of the prompt; brighter values clipped)"
