"""Meta-training of MetaUAS on synthetic change pairs.

Only alignment, decoder and mask head learn; the ImageNet encoder is frozen and stays in eval
mode. AdamW with linear warm-up and cosine decay, gradient clipping, BCE+Dice loss.
Checkpoints are atomic and hold everything needed to continue exactly (model, optimiser,
scheduler, step, RNG); the data order is a pure function of the step (StepSampler), so a
run killed at any moment and resumed produces the same weights as an uninterrupted run.
Multi-process training uses torch.distributed (torchrun; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from metauas.atomic import atomic_write_text
from metauas.errors import CheckpointError
from metauas.models.checkpoint import load_checkpoint, load_state_into, save_safetensors
from metauas.models.metauas import MetaUAS
from metauas.models.store import model_from_config
from metauas.training.config import TrainConfig
from metauas.training.losses import change_loss
from metauas.training.state import CsvLog, StepSampler, load_training_state, save_training_state

TRAIN_FIELDS = ["step", "loss", "lr", "pairs_per_s", "elapsed_s"]
VAL_FIELDS = ["step", "val_loss", "p_auroc", "p_ap", "p_aupro", "elapsed_s"]


# ---------------------------------------------------------------------------- data
def build_datasets(cfg: TrainConfig, length: int) -> tuple[Dataset, Dataset, dict]:
    """(train, validation, description of the data sources).

    Raises:
        ValueError: an unknown data kind.
    """
    if cfg.data == "toy":
        from metauas.training.toy import ToyChangeDataset

        return (ToyChangeDataset(cfg.image_size, length, cfg.seed),
                ToyChangeDataset(cfg.image_size, cfg.val_pairs, cfg.val_seed), {"kind": "toy"})
    if cfg.data != "synthetic":
        raise ValueError(f"unknown data kind {cfg.data!r} (synthetic | toy)")
    from metauas.synthesis import ImageSources, SynthesisConfig, SyntheticPairDataset

    synth = SynthesisConfig(size=cfg.image_size, **cfg.synthesis)
    sources = ImageSources.from_dirs(photos=cfg.photos, objects=cfg.objects or None,
                                     textures=cfg.textures or None)
    if cfg.val_photos:
        train_sources = sources
        val_sources = ImageSources.from_dirs(photos=cfg.val_photos, objects=cfg.objects or None,
                                             textures=cfg.textures or None)
    else:
        train_sources, val_sources = sources.split_by_source(seed=cfg.seed)
    train = SyntheticPairDataset(train_sources, synth, length=length, seed=cfg.seed)
    val = SyntheticPairDataset(val_sources, synth, length=cfg.val_pairs, seed=cfg.val_seed)
    info = {"kind": "synthetic", "train": train_sources.sources(), "validation": val_sources.sources()}
    return train, val, info


class CachedPairs(Dataset):
    """Frozen-encoder features of a fixed pool of pairs, computed once (fp16 in RAM).

    Index i maps to pool item perm_e[i mod P] with a fresh permutation per epoch e, so the
    order stays a pure function of the index (exact resume)."""

    def __init__(self, model: MetaUAS, source: Dataset, pool: int, seed: int, batch: int = 16,
                 num_workers: int = 0, start: int = 0) -> None:
        from torch.utils.data import Subset

        self.pool, self.seed = pool, seed
        self.query: list[list[torch.Tensor]] = []
        self.prompt: list[list[torch.Tensor]] = []
        self.masks: list[torch.Tensor] = []
        # synthesis runs in workers while this process encodes
        loader = DataLoader(Subset(source, range(start, start + pool)), batch_size=batch, num_workers=num_workers,
                            collate_fn=collate)
        for items in loader:
            qf, pf = model.encode(items["query"]), model.encode(items["prompt"])
            for j in range(len(items["mask"])):
                self.query.append([f[j].half() for f in qf[1:]])
                self.prompt.append([f[j].half() for f in pf[1:]])
                self.masks.append(items["mask"][j])

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, offset = divmod(index, self.pool)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.pool)
        k = int(perm[offset])
        return {"query": [f.float() for f in self.query[k]], "prompt": [f.float() for f in self.prompt[k]],
                "mask": self.masks[k]}


# ---------------------------------------------------------------------------- model step
class ChangeStep(nn.Module):
    """query/prompt (images, or cached features f1..f5) -> logits; wrapped by DDP when distributed.

    ``frozen_encoder``: an optional inference copy of the model (`optimize_for_inference`) whose
    encoder computes the frozen features faster (same values within float rounding).
    """

    def __init__(self, model: MetaUAS, frozen_encoder: MetaUAS | None = None) -> None:
        super().__init__()
        self.model = model
        self._fast = [frozen_encoder] if frozen_encoder is not None else []  # not a submodule

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        if not self._fast:
            return self.model.encode(images)
        from metauas.models.fast import prepare_input

        net = self._fast[0]
        with torch.no_grad():
            return [f.contiguous() for f in net.encode(prepare_input(net, images))]

    def forward(self, query: Any, prompt: Any) -> torch.Tensor:
        """Logits (B,1,S,S) of queries against their prompts.

        Args:
            query, prompt: (B,3,S,S) images in [0,1], or cached encoder features [f1..f5].
        """
        m = self.model
        if isinstance(query, torch.Tensor):
            qf, pf = self._encode(query), self._encode(prompt)
        else:  # cached features without f0 (the decoder never reads f0)
            qf, pf = [query[0]] + list(query), [prompt[0]] + list(prompt)
        return m.forward_features(qf, m.prompt_from_features(pf))


def lr_lambda(cfg: TrainConfig):
    """Learning-rate factor per step for `LambdaLR`: linear warm-up over ``warmup_steps``, then
    cosine decay to ``min_lr_ratio`` at ``steps``.
    """
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def build_model_from_config(cfg: TrainConfig) -> MetaUAS:
    """The model to train: `TrainConfig.model_config()` through the model store's one constructor
    (ImageNet encoder when its package ships weights), optionally started from `cfg.init_from`.

    Raises:
        CheckpointError: `init_from` does not fit (only a new comparison module may be missing).
    """
    model = model_from_config(cfg.model_config())
    if cfg.init_from:
        source = load_checkpoint(cfg.init_from)
        result = model.load_state_dict(source.state_dict(), strict=False)
        # only the comparison module may be new (it starts at zero: same outputs as the source)
        missing = [k for k in result.missing_keys if not k.startswith("comparison.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{cfg.init_from} does not fit this model: missing {missing[:5]}, "
                                  f"unexpected {result.unexpected_keys[:5]}")
    return model


def parameter_groups(model: MetaUAS, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the comparison module (zero-initialised, so it must grow from nothing)
    learns ``cfg.comparison_lr_scale`` times faster than the rest."""
    compare = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("comparison.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("comparison.")]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if compare:
        groups.append({"params": compare, "lr": cfg.lr * cfg.comparison_lr_scale})
    return groups


# ---------------------------------------------------------------------------- validation
def collate(items: list[dict]) -> dict[str, Any]:
    """Batch dataset items: tensors stacked, lists of feature tensors stacked level by level,
    other values (e.g. change types) kept as lists.
    """
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], list):  # cached features f1..f5
            out[key] = [torch.stack(v) for v in zip(*values)]
        else:  # metadata such as the change type
            out[key] = values
    return out


@torch.no_grad()
def validate(model: MetaUAS, pairs: list[dict], cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Validation loss and pixel metrics of `model` on fixed (query, prompt, mask) pairs.

    The maps are the ones users get: `metauas.runtime.maps.paired_maps`, the steps of
    `Segmenter.predict_tensor` (temperature and, when ``patchmatch_weight > 0``, the model's
    patch-matching fusion included), with the eager model in eval mode; the loss is
    `change_loss` of the same pass's logits. The model's train/eval mode is restored.

    Args:
        model: the model being trained.
        pairs: items of the validation set: "query"/"prompt" (3,S,S) float in [0,1], "mask"
            (1,S,S) in {0,1}.
        cfg: batch size and loss settings.
        device: where the model lives.
    Returns:
        {"p_auroc", "p_ap", "p_aupro"} (`pixel_metrics`, nan when undefined) and "val_loss"
        (mean per pair).
    """
    from metauas.runtime.maps import paired_maps
    from metauas.training.validation import pixel_metrics

    was_training = model.training
    model.eval()
    probs, masks, losses = [], [], []
    for start in range(0, len(pairs), cfg.batch_size):
        batch = collate(pairs[start:start + cfg.batch_size])
        out = paired_maps(model, batch["query"].to(device), batch["prompt"].to(device))
        logits = out.logits.float().cpu()
        losses.append(float(change_loss(logits, batch["mask"], cfg.loss, cfg.dice_weight, cfg.focal_gamma))
                      * len(logits))
        probs.append(out.anomaly_map.float().cpu()[:, 0].numpy())
        masks.append(batch["mask"][:, 0].numpy())
    model.train(was_training)
    metrics = pixel_metrics(np.concatenate(masks), np.concatenate(probs))
    metrics["val_loss"] = sum(losses) / len(pairs)
    return metrics


# ---------------------------------------------------------------------------- export
def export_model(model: MetaUAS, out_dir: Path, name: str, card: dict, half: bool = False) -> Path:
    """Write ``out_dir/name.safetensors`` (weights + config, fp16 with `half`) and the model card
    ``name.json``; returns the safetensors path.
    """
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_safetensors(model, out_dir / f"{name}.safetensors", half=half,
                            extra_metadata={"name": name})
    atomic_write_text(out_dir / f"{name}.json", json.dumps(card, indent=2, default=str))
    return path


# ---------------------------------------------------------------------------- loop
def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


@dataclass
class _Run:
    """Everything one training run holds between steps (built by `_open_run`)."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: MetaUAS
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step_module: nn.Module
    loader: DataLoader
    val_pairs: list
    data_info: dict
    train_log: CsvLog
    val_log: CsvLog
    command: str
    start_step: int = 0
    best: float = -1.0
    train_seconds: float = 0.0
    metrics: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda" and self.cfg.amp != "off"

    def checkpoint(self, step: int) -> None:
        if self.is_main:
            snapshot = {**self.cfg.to_dict(), "_train_seconds": self.train_seconds}
            save_training_state(self.run_dir / "last.pt", model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, step=step, best=self.best, config=snapshot)

    def card(self, step: int, metrics: dict) -> dict:
        cfg = self.cfg
        return {"name": cfg.model_name, "encoder": cfg.encoder, "image_size": cfg.image_size,
                "model_config": asdict(self.model.config), "steps": step, "batch_size": cfg.batch_size,
                "world_size": self.world, "validation": metrics, "training_seconds": round(self.train_seconds, 1),
                "data": self.data_info, "command": self.command or " ".join(sys.argv), "train_config": cfg.to_dict()}


def _device(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    rank, world = _dist_info()
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if device.type == "cpu":
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Unscaled attention and the sigmoid/softmax tails produce subnormal floats, which x86
        # CPUs process many times slower; flushing them to zero changes values below ~1e-38
        # only (measured 15-30 % faster steps at 256 px).
        torch.set_flush_denormal(True)
    return rank, world, device


def _open_run(cfg: TrainConfig, resume: bool, command: str) -> _Run:
    """Model, optimiser, scheduler (restored from last.pt when resuming), logs and data."""
    rank, world, device = _device(cfg)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    model = build_model_from_config(cfg).to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start_step, best, train_seconds = 0, -1.0, 0.0
    last_path = run_dir / "last.pt"
    if resume and last_path.exists():
        state = load_training_state(last_path)
        load_state_into(model, state["model"], str(last_path))  # one-line CheckpointError on a mismatch
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_step, best = int(state["step"]), float(state["best"])
        train_seconds = float(state["config"].get("_train_seconds", 0.0))
    train_log = CsvLog(run_dir / "train_log.csv", TRAIN_FIELDS)
    val_log = CsvLog(run_dir / "val_log.csv", VAL_FIELDS)
    if rank == 0:
        train_log.truncate_after(start_step)
        val_log.truncate_after(start_step)
    step_module = _step_module(cfg, model, device, world)
    loader, val_pairs, data_info = _data(cfg, model, start_step, rank, world)
    return _Run(cfg, rank, world, device, model, optimizer, scheduler, step_module, loader, val_pairs, data_info,
                train_log, val_log, command, start_step, best, train_seconds)


def _step_module(cfg: TrainConfig, model: MetaUAS, device: torch.device, world: int) -> nn.Module:
    fast = None
    if device.type == "cpu" and cfg.fast_encoder and not cfg.cache_features:
        from metauas.models.fast import optimize_for_inference

        fast = optimize_for_inference(model)  # only its frozen encoder is used
    step_module: nn.Module = ChangeStep(model, fast)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module,
                                                          device_ids=[device.index] if device.type == "cuda" else None)
    return step_module


def _data(cfg: TrainConfig, model: MetaUAS, start_step: int, rank: int, world: int) -> tuple[DataLoader, list, dict]:
    length = (cfg.steps + 1) * cfg.batch_size * world
    train_set, val_set, data_info = build_datasets(cfg, length)
    if cfg.cache_features:
        train_set = CachedPairs(model, train_set, cfg.cache_pool, cfg.seed, num_workers=cfg.num_workers,
                                start=cfg.cache_start)
    val_pairs = [val_set[i] for i in range(len(val_set))] if rank == 0 else []
    sampler = StepSampler(start_step, cfg.steps, cfg.batch_size, rank, world)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=0 if cfg.cache_features else cfg.num_workers,
                        persistent_workers=False)
    return loader, val_pairs, data_info


def _train_step(run: _Run, batch: dict) -> tuple[float, int]:
    """One optimiser step; returns (loss, pairs seen by all processes)."""
    query, prompt = batch["query"], batch["prompt"]
    if isinstance(query, torch.Tensor):
        query, prompt = query.to(run.device), prompt.to(run.device)
    else:
        query, prompt = [f.to(run.device) for f in query], [f.to(run.device) for f in prompt]
    mask = batch["mask"].to(run.device)
    cfg = run.cfg
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        logits = run.step_module(query, prompt)
    loss = change_loss(logits, mask, cfg.loss, cfg.dice_weight, cfg.focal_gamma)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.trainable_parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return float(loss.detach()), len(mask) * run.world


def _validate_and_export_best(run: _Run, step: int) -> None:
    run.metrics = validate(run.model, run.val_pairs, run.cfg, run.device)
    run.val_log.append({"step": step, **{k: f"{v:.5f}" for k, v in run.metrics.items()},
                        "elapsed_s": f"{run.train_seconds:.1f}"})
    score = run.metrics.get("p_ap", 0.0)
    if score > run.best:
        run.best = score
        export_model(run.model, run.run_dir, "best", run.card(step, run.metrics))


def _loop(run: _Run, stop: dict, bar: Any) -> int:
    """The training steps from `run.start_step`; returns the last step done."""
    cfg = run.cfg
    step, window, window_pairs, t_window = run.start_step, [], 0, time.time()
    t_start = time.time()
    for batch in run.loader:
        t0 = time.time()
        loss, pairs = _train_step(run, batch)
        step += 1
        run.train_seconds += time.time() - t0
        window.append(loss)
        window_pairs += pairs
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]:.4f}", refresh=False)
        if run.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.time()
            rate = window_pairs / max(1e-9, now - t_window)
            run.train_log.append({"step": step, "loss": f"{np.mean(window):.5f}",
                                  "lr": f"{run.scheduler.get_last_lr()[0]:.3e}", "pairs_per_s": f"{rate:.2f}",
                                  "elapsed_s": f"{run.train_seconds:.1f}"})
            if bar is not None:
                bar.set_postfix(loss=f"{np.mean(window):.4f}", pairs_s=f"{rate:.2f}")
            window, window_pairs, t_window = [], 0, now
        if run.is_main and (step % cfg.val_every == 0 or step == cfg.steps):
            _validate_and_export_best(run, step)
        out_of_time = cfg.max_minutes > 0 and (time.time() - t_start) > cfg.max_minutes * 60
        if stop["flag"] or out_of_time:
            run.checkpoint(step)
            break
        if run.is_main and step % cfg.ckpt_every == 0:
            run.checkpoint(step)
    return step


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, command: str = "",
          return_model: bool = False) -> dict:
    """Run (or continue) a training run; returns a summary dict. Rank 0 writes all files.

    Raises:
        CheckpointError: last.pt or `init_from` does not fit the configured model.
        InputError: unusable configuration or training images.
    """
    run = _open_run(cfg, resume, command)
    stop = {"flag": False}

    def request_stop(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    previous = signal.signal(signal.SIGTERM, request_stop) if run.is_main and hasattr(signal, "SIGTERM") else None
    bar = None
    if progress and run.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=run.start_step, desc="train", dynamic_ncols=True, mininterval=5)
    try:
        step = _loop(run, stop, bar)
    finally:
        if bar is not None:
            bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if run.world > 1:  # DDP keeps rank 0's BatchNorm statistics (broadcast_buffers); make it final
        for buffer in run.model.buffers():
            dist.broadcast(buffer, src=0)
    if step == cfg.steps or stop["flag"]:
        run.checkpoint(step)
    if run.is_main and step > run.start_step:  # finished or stopped on the time budget / SIGTERM
        if not run.metrics or step % cfg.val_every:  # the card reports the exported weights' metrics
            run.metrics = validate(run.model, run.val_pairs, cfg, run.device)
        export_model(run.model, run.run_dir, "last", run.card(step, run.metrics))
    if run.world > 1:
        dist.barrier()
    summary = {"step": step, "finished": step >= cfg.steps, "best_p_ap": run.best, "metrics": run.metrics,
               "run_dir": str(run.run_dir)}
    if return_model:
        summary["model"] = run.model
    return summary
