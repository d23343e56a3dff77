"""`metauas segment / calibrate / info` end to end with a tiny untrained Lite0 model at 64 px.

Every bad input a user can hand us must end with a non-zero exit code and exactly one
`metauas: error:` line, never a traceback.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from metauas.scoring import image_score
import torch
from PIL import Image

from imagegen import texture

from metauas.cli import main
from metauas.inference.visualize import read_map_png

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- fixtures

def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    prompt = save_rgb(tmp_path / "prompt.png", texture(80, 96, 0))
    query_rgb = texture(80, 96, 0)
    query_rgb[30:45, 40:60] = (250, 10, 10)
    return prompt, save_rgb(tmp_path / "query.png", query_rgb)


def run(*argv: str | Path, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("metauas: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


# ---------------------------------------------------------------------------- segment: outputs
def test_segment_with_a_prompt_pool_records_the_prompt_of_each_query(tmp_path, tiny_model, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    a = save_rgb(pool / "a.png", texture(80, 96, 21))
    b = save_rgb(pool / "b.png", texture(80, 96, 22))
    out = tmp_path / "out"
    code, _, err = run("segment", "--prompt-pool", pool, "--query", a, b, "--out", out, "--model", tiny_model,
                       "--quiet", capsys=capsys)
    assert code == 0, err
    data = json.loads((out / "results.json").read_text())
    assert data["prompt_mode"].startswith("pool")
    assert [r["prompts"] for r in data["results"]] == [[str(a)], [str(b)]]  # each query's own twin
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].endswith(",prompts") and rows[1].endswith(str(a))
    many = [save_rgb(tmp_path / f"g{i}.png", texture(40, 40, i)) for i in range(17)]
    code, _, err = run("segment", "--prompt", *many, "--query", a, "--out", tmp_path / "o2", "--model",
                       tiny_model, capsys=capsys)
    assert_one_line_error(code, err, "at most 16", "--prompt-pool")


def test_pool_k_larger_than_the_pool_or_without_a_pool_is_an_error(tmp_path, tiny_model, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    a = save_rgb(pool / "a.png", texture(80, 96, 21))
    save_rgb(pool / "b.png", texture(80, 96, 22))
    code, _, err = run("segment", "--prompt-pool", pool, "--pool-k", "3", "--query", a, "--out", tmp_path / "o",
                       "--model", tiny_model, capsys=capsys)
    assert_one_line_error(code, err, "--pool-k 3", "prompt pool (2 images)")
    assert not (tmp_path / "o" / "results.json").exists()
    code, _, err = run("segment", "--prompt", a, "--pool-k", "2", "--query", a, "--out", tmp_path / "o2", "--model",
                       tiny_model, capsys=capsys)
    assert_one_line_error(code, err, "--pool-k needs --prompt-pool")
    code, _, err = run("segment", "--prompt-pool", pool, "--pool-k", "2", "--query", a, "--out", tmp_path / "o3",
                       "--model", tiny_model, "--quiet", capsys=capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "o3" / "results.json").read_text())
    assert "k=2" in data["prompt_mode"] and len(data["results"][0]["prompts"]) == 2


@pytest.mark.parametrize("option,prog", [(["--threads", "0"], "metauas segment"),
                                         (["--memory-budget", "0"], "metauas segment"),
                                         (["--tile", "10"], "metauas segment"), (["--batch-size", "0"], "metauas segment"),
                                         (["--no-such-option"], "metauas")])
def test_bad_option_values_print_one_line_not_the_usage(option, prog, tmp_path, pair, capsys):
    prompt, query = pair
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"), *option])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    assert option[0] in lines[0] and "usage" not in captured.err
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--help"])
    assert exc.value.code == 0 and "usage: metauas segment" in capsys.readouterr().out


def test_segment_writes_maps_overlays_results(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    out = tmp_path / "out"
    code, stdout, _ = run("segment", "--prompt", prompt, "--query", query, prompt, "--out", out,
                          "--model", tiny_model, capsys=capsys)
    assert code == 0
    assert (out / "results.json").read_bytes().endswith(b"}\n")  # a text file: ends with a newline
    data = json.loads((out / "results.json").read_text())
    assert data["size"] == 64 and data["backend"] == "torch" and data["thresholds"] is None
    assert [r["name"] for r in data["results"]] == ["query", "prompt"]
    for r in data["results"]:
        raw = cv2.imread(str(out / r["map"]), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (80, 96)  # 16-bit, original resolution
        assert r["score"] == pytest.approx(image_score(raw / 65535), abs=1e-4)  # the product's score rule
        assert r["prompts"] == [str(prompt)]
        assert (out / r["overlay"]).is_file() and r["mask"] is None and r["decision"] is None
    assert not list(out.glob("*_mask.png"))
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("query,name,width,height,score,decision") and len(rows) == 3
    assert "2 processed" in stdout and "query" in stdout  # summary table


def test_segment_with_threshold_writes_masks_and_decisions(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    out = tmp_path / "out"
    # a threshold between the two scores, so both decisions occur
    code, _, _ = run("segment", "--prompt", prompt, "--query", query, prompt, "--out", tmp_path / "probe",
                     "--model", tiny_model, "--quiet", capsys=capsys)
    scores = sorted(r["score"] for r in json.loads((tmp_path / "probe" / "results.json").read_text())["results"])
    assert scores[0] < scores[1]
    t = (scores[0] + scores[1]) / 2
    code, stdout, _ = run("segment", "--prompt", prompt, "--query", query, prompt, "--out", out, "--model",
                          tiny_model, "--threshold", f"{t:.10f}", capsys=capsys)
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["thresholds"]["image"] == pytest.approx(t)
    decisions = {r["decision"] for r in data["results"]}
    assert decisions == {"anomalous", "normal"}
    for r in data["results"]:
        assert r["decision"] == ("anomalous" if r["score"] > t else "normal")
        mask = cv2.imread(str(out / r["mask"]), cv2.IMREAD_UNCHANGED)
        amap = read_map_png(out / r["map"])
        assert set(np.unique(mask)) <= {0, 255}
        agree = (mask > 0) == (amap > t)
        assert agree.mean() > 0.999  # 16-bit rounding may flip pixels within 1e-5 of t
        assert r["anomalous_fraction"] == pytest.approx((mask > 0).mean())
    assert "1 anomalous" in stdout


def test_segment_folder_glob_kshot_and_name_clashes(tmp_path, tiny_model, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_rgb(tmp_path / "a" / "img.png", texture(64, 64, 1))
    save_rgb(tmp_path / "b" / "img.png", texture(64, 64, 2))
    save_rgb(tmp_path / "b" / "other.jpg", texture(70, 50, 3))
    (tmp_path / "b" / "notes.txt").write_text("not an image, ignored by folder listing")
    p1 = save_rgb(tmp_path / "p1.png", texture(64, 64, 4))
    p2 = save_rgb(tmp_path / "p2.png", texture(64, 64, 5))
    out = tmp_path / "out"
    code, _, _ = run("segment", "--prompt", p1, p2, "--query", tmp_path / "a", str(tmp_path / "b" / "*.png"),
                     tmp_path / "b" / "other.jpg", "--out", out, "--model", tiny_model, "--quiet", capsys=capsys)
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert len(data["prompts"]) == 2
    names = [r["name"] for r in data["results"]]
    assert names == ["a_img", "b_img", "other"]
    assert len({(out / r["map"]) for r in data["results"]}) == 3


def test_segment_never_overwrites_silently(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    out = tmp_path / "out"
    assert run("segment", "--prompt", prompt, "--query", query, "--out", out, "--model", tiny_model, "--quiet",
               capsys=capsys)[0] == 0
    before = (out / "query_map.png").stat().st_mtime_ns, (out / "results.json").read_text()
    code, _, err = run("segment", "--prompt", prompt, "--query", query, "--out", out, "--model", tiny_model,
                       capsys=capsys)
    assert_one_line_error(code, err, "already holds results", "--overwrite")
    assert ((out / "query_map.png").stat().st_mtime_ns, (out / "results.json").read_text()) == before
    code, _, _ = run("segment", "--prompt", prompt, "--query", query, "--out", out, "--model", tiny_model,
                     "--overwrite", "--quiet", capsys=capsys)
    assert code == 0


def test_batch_skips_and_lists_bad_files(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    code, stdout, err = run("segment", "--prompt", prompt, "--query", query, broken, "--out", out,
                            "--model", tiny_model, capsys=capsys)
    assert code == 1  # partial success
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["results"]] == ["query"]
    assert len(data["skipped"]) == 1 and data["skipped"][0]["path"].endswith("broken.png")
    assert "skipped:" in stdout and "broken.png" in stdout
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- image formats that must work
def test_unusual_formats_and_sizes_work(tmp_path, tiny_model, capsys):
    rgb = texture(72, 90, 7)
    files = []
    grey16 = (rgb[..., 0].astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    files.append(tmp_path / "grey16.png")
    cv2.imwrite(str(tmp_path / "rgb16.png"), (rgb.astype(np.uint16) * 257)[..., ::-1])
    files.append(tmp_path / "rgb16.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    files.append(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "grey.jpg")
    files.append(tmp_path / "grey.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    files.append(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    files.append(tmp_path / "palette.png")
    Image.fromarray(texture(40, 36, 8)).save(tmp_path / "small.png")  # smaller than the model input
    files.append(tmp_path / "small.png")
    Image.fromarray(texture(300, 1200, 9)).save(tmp_path / "wide.bmp")  # other size and aspect than the prompt
    files.append(tmp_path / "wide.bmp")
    prompt = save_rgb(tmp_path / "prompt.png", texture(50, 40, 10))
    out = tmp_path / "out"
    code, _, err = run("segment", "--prompt", prompt, "--query", *files, "--out", out, "--model", tiny_model,
                       "--threshold", "0.5", "--quiet", capsys=capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == len(files)
    sizes = {r["name"]: (r["height"], r["width"]) for r in results}
    assert sizes["small"] == (40, 36) and sizes["wide"] == (300, 1200)
    for r in results:
        assert cv2.imread(str(out / r["map"]), cv2.IMREAD_UNCHANGED).shape == (r["height"], r["width"])
        assert cv2.imread(str(out / r["mask"]), cv2.IMREAD_UNCHANGED).shape == (r["height"], r["width"])


# ---------------------------------------------------------------------------- bad inputs: one line, exit 2
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature + IHDR claiming a huge image, with a tiny IDAT (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _bad_query(kind: str, tmp_path: Path) -> tuple[list[str], tuple[str, ...]]:
    if kind == "missing":
        return [str(tmp_path / "nope.png")], ("not found", "nope.png")
    if kind == "empty_dir":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.txt").write_text("x")
        return [str(tmp_path / "empty")], ("no images",)
    if kind == "glob":
        return [str(tmp_path / "*.tif")], ("no query images match",)
    if kind == "corrupt":
        (tmp_path / "c.png").write_bytes(os.urandom(300))
        return [str(tmp_path / "c.png")], ("not a readable image",)
    if kind == "truncated":
        save_rgb(tmp_path / "full.png", texture(64, 64, 3))
        data = (tmp_path / "full.png").read_bytes()
        (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
        return [str(tmp_path / "t.png")], ("truncated",)
    if kind == "empty_file":
        (tmp_path / "e.jpg").write_bytes(b"")
        return [str(tmp_path / "e.jpg")], ("empty",)
    if kind == "tiny":
        save_rgb(tmp_path / "tiny.png", texture(4, 5, 1))
        return [str(tmp_path / "tiny.png")], ("too small",)
    if kind == "bomb":
        return [str(_png_header_only(tmp_path / "bomb.png", 30000, 30000))], ("too large",)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "glob", "corrupt", "truncated", "empty_file", "tiny",
                                  "bomb"])
def test_bad_query_gives_one_line_error(kind, tmp_path, pair, tiny_model, capsys):
    prompt, _ = pair
    queries, needles = _bad_query(kind, tmp_path)
    code, _, err = run("segment", "--prompt", prompt, "--query", *queries, "--out", tmp_path / "out",
                       "--model", tiny_model, capsys=capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "tiny", "bomb"])
def test_bad_prompt_gives_one_line_error(kind, tmp_path, pair, tiny_model, capsys):
    _, query = pair
    prompts, needles = _bad_query(kind, tmp_path)
    code, _, err = run("segment", "--prompt", *prompts, "--query", query, "--out", tmp_path / "out",
                       "--model", tiny_model, capsys=capsys)
    assert_one_line_error(code, err, *needles)


def test_wrong_checkpoints(tmp_path, pair, capsys):
    prompt, query = pair
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(200))
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3, 3)}, other)
    no_meta = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(no_meta))
    cases = [("no-such-model", "no model named"), (garbage, "not a valid safetensors"),
             (other, "does not fit"), (no_meta, "no 'metauas_config' metadata"),
             (tmp_path / "weights.xyz", "no model named")]
    for model, needle in cases:
        code, _, err = run("segment", "--prompt", prompt, "--query", query, "--out", tmp_path / "out",
                           "--model", model, "--overwrite", capsys=capsys)
        assert_one_line_error(code, err, needle)


def test_unwritable_output(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, _, err = run("segment", "--prompt", prompt, "--query", query, "--out", a_file, "--model", tiny_model,
                       capsys=capsys)
    assert_one_line_error(code, err, "not a folder")
    code, _, err = run("segment", "--prompt", prompt, "--query", query, "--out", a_file / "sub",
                       "--model", tiny_model, capsys=capsys)
    assert_one_line_error(code, err, "not writable")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_output_folder(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run("segment", "--prompt", prompt, "--query", query, "--out", locked, "--model",
                           tiny_model, capsys=capsys)
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, "not writable")


def test_bad_options(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    code, _, err = run("segment", "--prompt", prompt, "--query", query, "--out", tmp_path / "o", "--model",
                       tiny_model, "--size", "100", capsys=capsys)
    assert_one_line_error(code, err, "multiple of 32")
    code, _, err = run("segment", "--prompt", prompt, "--query", query, "--out", tmp_path / "o2", "--model",
                       tiny_model, "--pixel-threshold", "0.3", capsys=capsys)
    assert_one_line_error(code, err, "--pixel-threshold needs")
    with pytest.raises(SystemExit) as exc:  # argparse: out-of-range threshold
        main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o3"),
              "--threshold", "1.5"])
    assert exc.value.code == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_real_entry_point_prints_no_traceback(tmp_path, pair, tiny_model):
    prompt, _ = pair
    env = {**os.environ, "METAUAS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "metauas.cli", "segment", "--prompt", str(prompt), "--query",
                           str(tmp_path / "missing.png"), "--out", str(tmp_path / "out"), "--model",
                           str(tiny_model)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("metauas: error:")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- calibration through the CLI
def test_segment_calibrate_then_reuse_stored_thresholds(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    good = tmp_path / "good"
    good.mkdir()
    for i in range(4):
        save_rgb(good / f"g{i}.png", texture(80, 96, 0))  # copies of the normal surface
    out = tmp_path / "out"
    code, stdout, _ = run("segment", "--prompt", prompt, "--query", query, "--out", out, "--model", tiny_model,
                          "--calibrate", good, "--calibrate-quantile", "1.0", capsys=capsys)
    assert code == 0
    assert "calibrated:" in stdout
    stored = Path(str(tiny_model) + ".thresholds.json")  # beside the model
    assert stored.is_file()
    assert (out / "thresholds.json").read_text().endswith("}\n") and stored.read_text().endswith("}\n")
    saved = json.loads((out / "thresholds.json").read_text())
    assert saved["method"] == "good-quantile" and saved["num_good"] == 4
    assert saved["image"] == pytest.approx(saved["good_scores"]["max"])
    assert (out / "query_mask.png").is_file()
    # a later run with the same model/size/prompt finds the thresholds by itself
    code, stdout, _ = run("segment", "--prompt", prompt, "--query", query, "--out", tmp_path / "out2", "--model",
                          tiny_model, capsys=capsys)
    assert code == 0 and "using thresholds from stored calibration" in stdout
    assert (tmp_path / "out2" / "query_mask.png").is_file()
    # another prompt: the stored thresholds do not apply
    other = save_rgb(tmp_path / "other_prompt.png", texture(80, 96, 42))
    run("segment", "--prompt", other, "--query", query, "--out", tmp_path / "out3", "--model", tiny_model,
        "--quiet", capsys=capsys)
    assert not (tmp_path / "out3" / "query_mask.png").exists()
    stored.unlink()


def test_images_below_the_minimum_side_are_refused(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    tiny = save_rgb(tmp_path / "tiny10.png", texture(10, 10, 3))  # decodes fine, too small to segment
    code, stdout, err = run("segment", "--prompt", prompt, "--query", query, tiny, "--out", tmp_path / "o",
                            "--model", tiny_model, capsys=capsys)
    assert code == 1
    line = next(l for l in stdout.splitlines() if "too small" in l)
    assert "tiny10.png" in line and "10x10" in line and "at least 32" in line
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["name"] for r in results["results"]] == ["query"]
    code, _, err = run("segment", "--prompt", tiny, "--query", query, "--out", tmp_path / "o2", "--model",
                       tiny_model, capsys=capsys)
    assert_one_line_error(code, err, "prompt", "tiny10.png", "too small", "at least 32")


def test_thresholds_calibrated_untiled_are_not_used_for_tiled_runs(tmp_path, pair, tiny_model, capsys):
    prompt, query = pair
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        save_rgb(good / f"g{i}.png", texture(80, 96, 0))
    code, _, _ = run("calibrate", "--prompt", prompt, "--good", good, "--model", tiny_model, capsys=capsys)
    assert code == 0
    stored = json.loads(Path(str(tiny_model) + ".thresholds.json").read_text())["entries"]
    assert [e["tile"] for e in stored] == ["off"]
    code, stdout, err = run("segment", "--prompt", prompt, "--query", query, "--out", tmp_path / "tiled", "--model",
                            tiny_model, "--tile", "auto", capsys=capsys)
    assert code == 0 and "using thresholds" not in stdout
    notes = [line for line in err.splitlines() if "--tile off" in line]
    assert len(notes) == 1 and "calibrate with the same --tile" in notes[0], err
    assert not (tmp_path / "tiled" / "query_mask.png").exists()
    code, stdout, err = run("segment", "--prompt", prompt, "--query", query, "--out", tmp_path / "untiled",
                            "--model", tiny_model, "--tile", "off", capsys=capsys)
    assert code == 0 and "using thresholds from stored calibration" in stdout and "--tile" not in err
    assert (tmp_path / "untiled" / "query_mask.png").is_file()
    code, _, _ = run("calibrate", "--prompt", prompt, "--good", good, "--model", tiny_model, "--tile", "auto",
                     capsys=capsys)
    code, stdout, err = run("segment", "--prompt", prompt, "--query", query, "--out", tmp_path / "tiled2", "--model",
                            tiny_model, "--tile", "auto", capsys=capsys)
    assert code == 0 and "using thresholds from stored calibration" in stdout and "--tile" not in err
    Path(str(tiny_model) + ".thresholds.json").unlink()


def test_calibrate_command_with_labelled_bad(tmp_path, tiny_model, capsys):
    prompt = save_rgb(tmp_path / "prompt.png", texture(64, 64, 0))
    good, bad, masks = tmp_path / "good", tmp_path / "bad", tmp_path / "masks"
    for d in (good, bad, masks):
        d.mkdir()
    for i in range(3):
        save_rgb(good / f"g{i}.png", texture(64, 64, 0))
        img = texture(64, 64, 0)
        img[20:40, 20:40] = (255, 255, 0)
        save_rgb(bad / f"b{i}.png", img)
        m = np.zeros((64, 64), np.uint8)
        m[20:40, 20:40] = 255
        Image.fromarray(m).save(masks / f"b{i}_mask.png")
    save_file = tmp_path / "th.json"
    code, stdout, _ = run("calibrate", "--prompt", prompt, "--good", good, "--bad", bad, "--masks", masks,
                          "--model", tiny_model, "--save", save_file, capsys=capsys)
    assert code == 0
    entry = json.loads(save_file.read_text())["entries"][0]
    assert entry["method"] == "f1" and entry["num_good"] == 3 and entry["num_bad"] == 3
    assert entry["image_f1"] is not None and entry["pixel_f1"] is not None
    assert f"{entry['image']:.6f}" in stdout
    code, _, err = run("calibrate", "--prompt", prompt, "--good", tmp_path / "nothing", "--model", tiny_model,
                       capsys=capsys)
    assert_one_line_error(code, err, "not found")


# ---------------------------------------------------------------------------- info
def test_info_lists_encoders_and_versions(capsys):
    code, stdout, _ = run("info", capsys=capsys)
    assert code == 0
    assert "efficientnet-lite0" in stdout and "torch" in stdout and "default model" in stdout
    code, stdout, _ = run("info", "--json", capsys=capsys)
    data = json.loads(stdout)
    assert code == 0 and {e["name"] for e in data["encoders"]} >= {"efficientnet-b4", "efficientnet-lite0"}
    from importlib.metadata import version
    assert data["versions"]["torch"] == version("torch") and data["versions"]["metauas"]
