"""Training: loss goes down, exact resume after SIGKILL, 2-process DDP, checkpoint round trip."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from metauas.training.config import TrainConfig
from metauas.training.state import StepSampler

TINY = dict(data="toy", image_size=64, batch_size=2, decoder_channels=[32, 16, 16, 16, 8],
            warmup_steps=2, val_pairs=4, val_every=1000, log_every=1, threads=1)


def _cli(run_dir: Path, steps: int, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "metauas.cli", "train", "--no-progress", "--run-dir", str(run_dir),
            "--steps", str(steps)]
    for key, value in TINY.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        args += [f"--{key.replace('_', '-')}", text]
    return args + list(extra)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]


def test_twenty_steps_reduce_the_loss(tmp_path):
    from metauas.training.trainer import train

    cfg = TrainConfig(run_dir=str(tmp_path), steps=20, **{**TINY, "lr": 1e-2, "batch_size": 4})
    summary = train(cfg, progress=False)
    assert summary["finished"]
    with (tmp_path / "train_log.csv").open() as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5  # clearly lower, not noise
    for name in ("last.pt", "last.safetensors", "last.json", "config.yaml"):
        assert (tmp_path / name).is_file()


def test_step_sampler_is_a_function_of_the_step():
    whole = list(StepSampler(0, 6, 3, rank=1, world=2))
    resumed = list(StepSampler(4, 6, 3, rank=1, world=2))
    assert whole[-len(resumed):] == resumed
    assert set(StepSampler(0, 6, 3, 0, 2)).isdisjoint(StepSampler(0, 6, 3, 1, 2))


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 14
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference, steps, "--ckpt-every", "1"), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, steps, "--ckpt-every", "1"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "train_log.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 1 + 6:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert 0 < interrupted_at < steps

    subprocess.run(_cli(killed, steps, "--ckpt-every", "1", "--resume"), check=True, env=env, capture_output=True)
    a, b = _weights(reference), _weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    with log.open() as handle:
        logged = [int(r["step"]) for r in csv.DictReader(handle)]
    assert logged == list(range(1, steps + 1))  # no step lost or repeated


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from metauas.training.trainer import train

    torch.set_num_threads(1)
    summary = train(TrainConfig(run_dir=run_dir, steps=4, **TINY), progress=False, return_model=True)
    torch.save(summary["model"].state_dict(), Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    from metauas.training.trainer import build_model_from_config

    initial = build_model_from_config(TrainConfig(**TINY)).state_dict()
    changed = [k for k in r0 if r0[k].is_floating_point() and not torch.equal(r0[k], initial[k])]
    assert changed, "weights did not move"
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key


def test_checkpoint_round_trip(tmp_path):
    from metauas.models import load_checkpoint, save_safetensors
    from metauas.training.trainer import build_model_from_config

    model = build_model_from_config(TrainConfig(**TINY))
    for p in model.trainable_parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = save_safetensors(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    q, p = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(query=q, prompt=p), loaded(query=q, prompt=p))


def test_config_yaml_and_overrides(tmp_path):
    import argparse

    from metauas.errors import InputError
    from metauas.training.config import add_override_arguments, apply_overrides

    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nlr: 0.01\ndecoder_channels: [8, 8, 8, 8, 8]\n")
    cfg = TrainConfig.from_yaml(path)
    parser = argparse.ArgumentParser()
    add_override_arguments(parser)
    cfg = apply_overrides(cfg, parser.parse_args(["--lr", "0.5", "--cache-features", "true"]))
    assert (cfg.steps, cfg.lr, cfg.cache_features, cfg.decoder_channels) == (7, 0.5, True, [8] * 5)
    path.write_text("stepz: 3\n")
    with pytest.raises(InputError, match="stepz"):
        TrainConfig.from_yaml(path)


def test_feature_cache_mode_trains_and_orders_by_index(tmp_path):
    from metauas.training.toy import ToyChangeDataset
    from metauas.training.trainer import CachedPairs, build_model_from_config, train

    model = build_model_from_config(TrainConfig(**TINY))
    cached = CachedPairs(model, ToyChangeDataset(64, 100, 0), pool=6, seed=3)
    again = CachedPairs(model, ToyChangeDataset(64, 100, 0), pool=6, seed=3)
    assert all(torch.equal(cached[i]["query"][0], again[i]["query"][0]) for i in range(12))
    later = CachedPairs(model, ToyChangeDataset(64, 100, 0), pool=6, seed=3, start=6)
    source = ToyChangeDataset(64, 100, 0)
    assert sorted(float(m.sum()) for m in later.masks) == sorted(float(source[i]["mask"].sum()) for i in range(6, 12))
    epoch0 = sorted(float(cached[i]["mask"].sum()) for i in range(6))
    epoch1 = sorted(float(cached[i]["mask"].sum()) for i in range(6, 12))
    assert epoch0 == epoch1  # every epoch visits the whole pool once
    summary = train(TrainConfig(run_dir=str(tmp_path), steps=4, cache_features=True, cache_pool=6, **TINY),
                    progress=False)
    assert summary["finished"] and (tmp_path / "last.safetensors").is_file()


def test_safetensors_without_encoder_reloads_it_from_the_package(tmp_path):
    from metauas.errors import CheckpointError
    from metauas.models import build_model, load_checkpoint, save_safetensors
    from metauas.models.checkpoint import read_safetensors

    model = build_model("efficientnet-lite0", pretrained=True, image_size=64).eval()
    path = save_safetensors(model, tmp_path / "m.safetensors", encoder_from_package=True)
    state, _ = read_safetensors(path)
    assert state and not any(k.startswith("encoder.") for k in state)
    loaded = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with torch.no_grad():
        model.encoder._conv_stem.weight.add_(1.0)
    with pytest.raises(CheckpointError, match="differs"):
        save_safetensors(model, tmp_path / "bad.safetensors", encoder_from_package=True)


def _validation_setup(**model_fields):
    from metauas.training.toy import ToyChangeDataset
    from metauas.training.trainer import build_model_from_config

    torch.manual_seed(0)
    cfg = TrainConfig(**{**TINY, "batch_size": 3, **model_fields})
    model = build_model_from_config(cfg).train()
    with torch.no_grad():  # a decoder whose maps vary (an untrained one gives ~0.5 everywhere)
        model.mask_head.weight.mul_(20.0)
    pairs = [ToyChangeDataset(cfg.image_size, 5, cfg.val_seed)[i] for i in range(5)]
    return cfg, model, pairs


def test_validation_metrics_are_those_of_the_segmenter_maps():
    """Validation measures the map users get from `Segmenter` (temperature and the model's
    patch-matching fusion included), not the bare network probabilities."""
    import numpy as np

    from metauas.runtime import Segmenter
    from metauas.runtime.maps import paired_maps
    from metauas.training.trainer import validate
    from metauas.training.validation import pixel_metrics

    cfg, model, pairs = _validation_setup(patchmatch_weight=0.5)
    model.config.temperature = 2.0
    assert model.config.patchmatch_weight == 0.5  # the training config reaches the model
    metrics = validate(model, pairs, cfg, torch.device("cpu"))
    assert model.training  # the mode is restored
    segmenter = Segmenter(model, optimize=False, size=cfg.image_size)
    user_maps = []
    for pair in pairs:
        segmenter.set_prompt_tensor(pair["prompt"][None])
        user_maps.append(segmenter.predict_tensor(pair["query"][None])[0, 0].numpy())
        with torch.no_grad():
            mine = paired_maps(model, pair["query"][None], pair["prompt"][None]).anomaly_map[0, 0].numpy()
        assert np.abs(mine - user_maps[-1]).max() < 1e-6
    masks = np.stack([p["mask"][0].numpy() for p in pairs])
    expected = pixel_metrics(masks, np.stack(user_maps))
    for key in ("p_auroc", "p_ap", "p_aupro"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    with torch.no_grad():  # and it is not the network alone: the fusion changes the numbers
        bare = np.stack([model.probabilities(model.logits(p["query"][None], p["prompt"][None]))[0, 0].numpy()
                         for p in pairs])
    assert np.abs(bare - np.stack(user_maps)).max() > 1e-2


def test_validation_without_patchmatch_is_the_previous_computation():
    """With patchmatch_weight 0 the runtime path computes exactly what training validation
    computed before (network logits -> sigmoid(logits / T)): same loss and metrics."""
    import numpy as np

    from metauas.training.losses import change_loss
    from metauas.training.trainer import ChangeStep, collate, validate
    from metauas.training.validation import pixel_metrics

    cfg, model, pairs = _validation_setup()
    metrics = validate(model, pairs, cfg, torch.device("cpu"))
    model.eval()
    probs, masks, losses = [], [], []
    with torch.no_grad():
        for start in range(0, len(pairs), cfg.batch_size):
            batch = collate(pairs[start:start + cfg.batch_size])
            logits = ChangeStep(model)(batch["query"], batch["prompt"]).float()
            losses.append(float(change_loss(logits, batch["mask"], cfg.loss, cfg.dice_weight, cfg.focal_gamma))
                          * len(logits))
            probs.append(model.probabilities(logits)[:, 0].numpy())
            masks.append(batch["mask"][:, 0].numpy())
    before = pixel_metrics(np.concatenate(masks), np.concatenate(probs))
    before["val_loss"] = sum(losses) / len(pairs)
    assert metrics == before


def test_patchmatch_weight_in_the_training_config_is_checked(tmp_path):
    from metauas.errors import InputError

    assert TrainConfig.from_dict({"patchmatch_weight": 0.8}).model_config().patchmatch_weight == 0.8
    with pytest.raises(InputError, match="patchmatch_weight"):
        TrainConfig.from_dict({"patchmatch_weight": 1.5})
    assert TrainConfig.from_dict({"patchmatch_neighbourhood": 3}).model_config().patchmatch_neighbourhood == 3
    with pytest.raises(InputError, match="patchmatch_neighbourhood"):
        TrainConfig.from_dict({"patchmatch_neighbourhood": 2})
    assert TrainConfig.from_dict({"patchmatch_distance": "l2"}).model_config().patchmatch_distance == "l2"
    with pytest.raises(InputError, match="patchmatch_distance"):
        TrainConfig.from_dict({"patchmatch_distance": "manhattan"})
