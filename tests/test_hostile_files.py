"""Hostile structured files (model metadata, ONNX folders, YAML configs, threshold stores,
training checkpoints) and concurrent runs: one-line errors, bounded memory, no lost entries."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hostile import encode, rgb_image
from metauas.cli import main
from metauas.errors import CheckpointError, InputError

REPO = Path(__file__).resolve().parents[1]
TINY = {"encoder": "efficientnet-lite0", "alignment": "sa", "fusion": "cat", "num_aligned": 3,
        "decoder_channels": [32, 16, 16, 8, 8], "image_size": 64, "encoder_head": None}


@pytest.fixture
def images(tmp_path) -> tuple[Path, Path]:
    prompt, query = tmp_path / "p.png", tmp_path / "q.png"
    prompt.write_bytes(encode(rgb_image(64, 64, 1), "PNG"))
    query.write_bytes(encode(rgb_image(64, 64, 2), "PNG"))
    return prompt, query


def one_error_line(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("metauas: error: "), lines
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def crafted_model(path: Path, config, extra: dict | None = None) -> Path:
    metadata = {"metauas_config": config if isinstance(config, str) else json.dumps(config), **(extra or {})}
    save_file({"mask_head.bias": torch.zeros(1)}, str(path), metadata=metadata)
    return path


# ---------------------------------------------------------------------------- model metadata
@pytest.mark.parametrize("change,needle", [
    ({"decoder_channels": [20000] * 5}, "decoder_channels"),
    ({"decoder_channels": [-4, 8]}, "decoder_channels"),
    ({"decoder_channels": "wide"}, "decoder_channels"),
    ({"image_size": -64}, "image_size"),
    ({"image_size": "256"}, "image_size"),
    ({"image_size": 10**9 * 32}, "image_size"),
    ({"num_aligned": True}, "num_aligned"),
    ({"encoder": ["efficientnet-lite0"]}, "encoder"),
    ({"encoder_head": "yes"}, "encoder_head"),
])
def test_hostile_model_metadata_is_one_line(change, needle, tmp_path, images, capsys):
    model = crafted_model(tmp_path / "m.safetensors", {**TINY, **change})
    prompt, query = images
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"),
                 "--model", str(model)])
    one_error_line(code, capsys.readouterr().err, "invalid model config", needle)


@pytest.mark.parametrize("config", ["not json {", "[1, 2]", "null"])
def test_model_metadata_that_is_not_an_object(config, tmp_path):
    from metauas.models.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(crafted_model(tmp_path / "m.safetensors", config))


def test_model_with_other_decoder_sizes_or_missing_keys(tmp_path, images, capsys):
    model = crafted_model(tmp_path / "m.safetensors", TINY)  # valid config, but one tensor only
    prompt, query = images
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"),
                 "--model", str(model)])
    one_error_line(code, capsys.readouterr().err, "does not fit the model", "missing")


def test_huge_decoder_metadata_fails_under_a_memory_limit(tmp_path, images):
    """Decoder widths of 20000 would need ~14 GB; under a 3 GiB address-space limit the CLI
    still ends with the one-line error (the config is refused before anything is allocated)."""
    model = crafted_model(tmp_path / "m.safetensors", {**TINY, "decoder_channels": [20000] * 5})
    prompt, query = images
    limit = 3 * 2**30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "metauas.cli", "segment", "--prompt", str(prompt), "--query",
                           str(query), "--out", str(tmp_path / "o"), "--model", str(model)],
                          capture_output=True, text=True, env=env, preexec_fn=cap, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "decoder_channels" in lines[0] and "MemoryError" not in proc.stderr


# ---------------------------------------------------------------------------- ONNX folders
@pytest.mark.parametrize("meta", [
    "{not json", "[]", {"format_version": 1}, "deep",
    {"format_version": 1, "model": "m", "model_digest": "d", "size": -32, "shots": 1, "encoder": "e",
     "aligned_levels": [5, 4, 3], "has_keys": True, "opset": 17, "torch_version": "x", "created": "now"},
    {"format_version": 1, "model": "m", "model_digest": "d", "size": 64, "shots": "1", "encoder": "e",
     "aligned_levels": [5, 4, 3], "has_keys": True, "opset": 17, "torch_version": "x", "created": "now"},
])
def test_crafted_onnx_folder_is_one_line(meta, tmp_path, images, capsys):
    folder = tmp_path / "onnx"
    folder.mkdir()
    for name in ("encoder.onnx", "prompt.onnx", "decoder.onnx"):
        (folder / name).write_bytes(b"not an onnx graph")
    text = "[" * 100_000 + "]" * 100_000 if meta == "deep" else meta if isinstance(meta, str) else json.dumps(meta)
    (folder / "metauas_onnx.json").write_text(text)
    prompt, query = images
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime", "--onnx", str(folder)])
    one_error_line(code, capsys.readouterr().err, "metauas_onnx.json")


def test_valid_metadata_with_garbage_graphs_is_one_line(tmp_path, images, capsys):
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "onnx"
    folder.mkdir()
    for name in ("encoder.onnx", "prompt.onnx", "decoder.onnx"):
        (folder / name).write_bytes(b"\x08\x07garbage")
    meta = {"format_version": 1, "model": "m", "model_digest": "d", "size": 64, "shots": 1, "encoder": "e",
            "aligned_levels": [5, 4, 3], "has_keys": True, "opset": 17, "torch_version": "x", "created": "now"}
    (folder / "metauas_onnx.json").write_text(json.dumps(meta))
    prompt, query = images
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime", "--onnx", str(folder)])
    one_error_line(code, capsys.readouterr().err, "onnxruntime")


# ---------------------------------------------------------------------------- YAML training configs
@pytest.mark.parametrize("text,needle", [
    ("steps: -5\n", "steps"), ("steps: five\n", "steps"), ("batch_size: 0\n", "batch_size"),
    ("lr: [1, 2]\n", "lr"), ("image_size: 100\n", "image_size"), ("decoder_channels: [20000]\n", "decoder_channels"),
    ("amp: 3\n", "amp"), ("synthesis: 7\n", "synthesis"), ("- a\n- b\n", "mapping"), ("steps: [\n", "YAML"),
])
def test_bad_training_config_is_one_line(text, needle, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code = main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    one_error_line(code, capsys.readouterr().err, needle)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bad_override_is_one_line(tmp_path, capsys):
    code = main(["train", "--steps", "-3", "--run-dir", str(tmp_path / "run")])
    one_error_line(code, capsys.readouterr().err, "steps")


# ---------------------------------------------------------------------------- threshold files
BAD_STORES = ["{", "null", "[]", '{"entries": null}', '{"entries": [null]}', '{"entries": [[1, 2]]}',
              '{"entries": [{"image": "0.5", "pixel": 0.5}]}', '{"entries": [{"image": 0.5}]}',
              '{"entries": [{"image": 0.5, "pixel": 0.5, "size": "big"}]}',
              '{"entries": [{"image": 0.5, "pixel": 0.5, "good_scores": {"a": {"b": {"c": {"d": 1}}}}}]}',
              '{"entries": ' + "[" * 50_000 + "]" * 50_000 + "}"]


@pytest.mark.parametrize("text", BAD_STORES)
def test_bad_thresholds_file_option_is_one_line(text, tmp_path, tiny_model, images, capsys):
    bad = tmp_path / "t.json"
    bad.write_text(text)
    prompt, query = images
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"),
                 "--model", str(tiny_model), "--thresholds", str(bad)])
    one_error_line(code, capsys.readouterr().err, "threshold")


@pytest.mark.parametrize("text", BAD_STORES[:3] + BAD_STORES[-2:])
def test_corrupt_store_is_reported_and_ignored(text, tmp_path, tiny_model, images, capsys):
    from metauas.inference.calibration import store_path

    prompt, query = images
    store = store_path(str(tiny_model), "tiny")
    store.write_text(text)
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"),
                 "--model", str(tiny_model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "ignoring stored thresholds" in err and "Traceback" not in err
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        (good / f"g{i}.png").write_bytes(encode(rgb_image(64, 64, 10 + i), "PNG"))
    code = main(["calibrate", "--prompt", str(prompt), "--good", str(good), "--model", str(tiny_model)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "image threshold:" in captured.out and f"saved to {store}" in captured.out
    assert "WARNING" in captured.err and "corrupt" in captured.err and "Traceback" not in captured.err
    assert len(json.loads(store.read_text())["entries"]) == 1
    assert store.with_name(store.name + ".corrupt").read_text() == text


def test_corrupt_store_in_the_web_app_is_ignored(tmp_path):
    from metauas.inference.calibration import store_path
    from metauas.inference.segmenter import Segmenter
    from metauas.models import MetaUAS, ModelConfig

    pytest.importorskip("fastapi")
    from metauas.web.app import SegmentService

    store_path(None, "tiny-web").parent.mkdir(parents=True, exist_ok=True)
    store_path(None, "tiny-web").write_text('{"entries": [{"image": "x"}]}')
    torch.manual_seed(0)
    service = SegmentService(Segmenter(MetaUAS(ModelConfig(image_size=64)).eval()), "tiny-web")
    payload, _ = service.run([("p.png", encode(rgb_image(64, 64, 1), "PNG"))],
                             [("q.png", encode(rgb_image(64, 64, 2), "PNG"))], None, False)
    assert payload["threshold"] is None and len(payload["results"]) == 1


# ---------------------------------------------------------------------------- races
SAVER = """
import sys
from metauas.inference.calibration import Thresholds, save_thresholds
tag, path = sys.argv[1], sys.argv[2]
for i in range(25):
    save_thresholds(Thresholds(image=0.5, pixel=0.5, model_digest="d", size=64,
                               prompt_fingerprint=f"{tag}-{i}"), path)
"""


def test_concurrent_calibrations_keep_every_entry(tmp_path):
    store = tmp_path / "store.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, tag, str(store)], env=env) for tag in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    keys = {e["prompt_fingerprint"] for e in json.loads(store.read_text())["entries"]}
    assert keys == {f"{t}-{i}" for t in ("a", "b") for i in range(25)}


def test_second_segment_into_the_same_out_refuses(tmp_path, tiny_model, images, capsys):
    from filelock import FileLock

    prompt, query = images
    out = tmp_path / "o"
    out.mkdir()
    with FileLock(str(out / ".metauas.lock")):  # another run in progress
        code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(out),
                     "--model", str(tiny_model)])
        one_error_line(code, capsys.readouterr().err, "in use by another")
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(out),
                 "--model", str(tiny_model), "--quiet"])
    assert code == 0 and (out / "results.json").is_file()


EXPORTER = """
import sys, torch
from metauas.inference.export import OnnxExportConfig, OnnxMetadata, export_onnx
from metauas.models import MetaUAS, ModelConfig
torch.set_num_threads(1)
torch.manual_seed(0)
model = MetaUAS(ModelConfig(image_size=64)).eval()
export_onnx(model, sys.argv[1], OnnxExportConfig(size=64), model_name="m", overwrite=True, verify=False)
OnnxMetadata.read(sys.argv[1])
"""


def test_concurrent_onnx_exports_into_one_folder_both_succeed(tmp_path):
    pytest.importorskip("onnx")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", EXPORTER, str(tmp_path / "x")], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    assert not list((tmp_path / "x").glob(".*.tmp"))


# ---------------------------------------------------------------------------- training checkpoints
def _state(path: Path) -> None:
    from metauas.training.state import save_training_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_training_state(path, model=model, optimizer=opt, scheduler=sched, step=7, best=0.5, config={"a": 1})


def test_flipped_bytes_in_a_training_checkpoint_are_refused(tmp_path):
    from metauas.training.state import load_training_state

    path = tmp_path / "last.pt"
    _state(path)
    assert load_training_state(path)["step"] == 7
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_training_state(path)
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(CheckpointError):
        load_training_state(path)


def test_training_checkpoint_missing_keys_is_refused(tmp_path):
    from metauas.training.state import atomic_torch_save, load_training_state

    atomic_torch_save({"model": {}, "step": 3}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="lacks 'optimizer'"):
        load_training_state(tmp_path / "last.pt")


def test_resume_from_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _state(run / "last.pt")
    data = bytearray((run / "last.pt").read_bytes())
    data[-100] ^= 0xFF
    (run / "last.pt").write_bytes(bytes(data))
    try:
        code = main(["train", "--data", "toy", "--steps", "2", "--run-dir", str(run), "--resume"])
    finally:
        torch.set_flush_denormal(False)  # train() sets it process-wide on CPU (hypothesis needs subnormals)
    one_error_line(code, capsys.readouterr().err, "corrupt")


def test_stale_temporary_files_are_cleaned_up(tmp_path):
    from metauas.atomic import STALE_TEMP_SECONDS, atomic_write_text

    stale = tmp_path / ".results.json.abc123.tmp"
    fresh = tmp_path / ".results.json.def456.tmp"
    stale.write_text("half")
    fresh.write_text("writing")
    old = time.time() - STALE_TEMP_SECONDS - 10
    os.utime(stale, (old, old))
    atomic_write_text(tmp_path / "results.json", "{}")
    assert not stale.exists() and fresh.exists()  # a concurrent writer's fresh file is kept
    assert (tmp_path / "results.json").read_text() == "{}"


def test_thresholds_from_dict_rejects_wrong_types():
    from metauas.inference.calibration import Thresholds

    for bad in ({"image": None, "pixel": 0.5}, {"image": [0.5], "pixel": 0.5}, {"image": 0.5, "pixel": True}):
        with pytest.raises(InputError):
            Thresholds.from_dict(bad)


def test_resume_from_a_checkpoint_of_another_model_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _state(run / "last.pt")  # intact, but the weights of another network
    try:
        code = main(["train", "--data", "toy", "--steps", "2", "--run-dir", str(run), "--resume"])
    finally:
        torch.set_flush_denormal(False)
    one_error_line(code, capsys.readouterr().err, "does not fit the model")


def test_training_checkpoint_stays_a_plain_torch_file_and_survives_a_kill_between_writes(tmp_path):
    from metauas.training.state import digest_path, load_training_state

    path = tmp_path / "last.pt"
    _state(path)
    assert torch.load(path, map_location="cpu", weights_only=True)["step"] == 7  # plain torch.save file
    import hashlib

    first = digest_path(path).read_text().split()
    assert first == [hashlib.sha256(path.read_bytes()).hexdigest()]
    _state(path)  # new weights: the sidecar lists the new digest and the replaced file's
    assert digest_path(path).read_text().split() == [hashlib.sha256(path.read_bytes()).hexdigest(), first[0]]
    # a kill after the sidecar of the next save was written but before the file was replaced:
    current = hashlib.sha256(path.read_bytes()).hexdigest()
    digest_path(path).write_text("0" * 64 + "\n" + current + "\n")
    assert load_training_state(path)["step"] == 7
