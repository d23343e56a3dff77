"""Training state on disk: atomic checkpoints, exact resume, step-addressed data order."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from metauas.atomic import atomic_write
from metauas.errors import CheckpointError


class StepSampler(Sampler[int]):
    """Yields dataset indices as a pure function of the global step.

    Step s, rank r, sample j reads item (s * world + r) * batch + j, so after a resume from
    step s the data continues exactly where it stopped (no pair skipped or repeated), and
    ranks never share pairs. Items are generated deterministically from their index.
    """

    def __init__(self, start_step: int, end_step: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.start_step, self.end_step = start_step, end_step
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def indices_for_step(self, step: int) -> list[int]:
        first = (step * self.world + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.end_step):
            yield from self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.batch_size


CHECKPOINT_MAGIC = b"METAUAS-CKPT-SHA256:"  # + 64 hex digits + newline, then the torch.save bytes


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path` atomically, prefixed by the SHA-256 of the saved bytes.

    The digest is part of the same file (no sidecar that a kill could leave out of step), so a
    checkpoint whose bytes changed on disk is refused by `read_checked_torch`.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    header = CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(header + payload))


def read_checked_torch(path: Path) -> Any:
    """Load a file written by `atomic_torch_save` after checking its digest (weights_only=True).

    Files without the digest header (written by earlier versions) are loaded as they are.

    Raises:
        CheckpointError: the digest does not match (flipped bytes, truncation) or the file
            cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    if data.startswith(CHECKPOINT_MAGIC):
        start = len(CHECKPOINT_MAGIC)
        stored, payload = data[start:start + 64], data[start + 65:]
        if hashlib.sha256(payload).hexdigest().encode() != stored or data[start + 64:start + 65] != b"\n":
            raise CheckpointError(f"{path}: checkpoint is corrupt (SHA-256 does not match the one written with "
                                  "it); refusing to resume from it")
        data = payload
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save_training_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, step: int, best: float, config: dict) -> None:
    atomic_torch_save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best": best,
        "torch_rng": torch.get_rng_state(),
        "config": config,
    }, path)


def load_training_state(path: Path) -> dict:
    """A training checkpoint, digest-checked and with every key resume needs.

    Raises:
        CheckpointError: corrupt, unreadable or incomplete checkpoint (one line).
    """
    from metauas.schemas import check_training_state

    try:
        state = read_checked_torch(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable checkpoint
        first = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: cannot resume from this checkpoint ({first})") from None
    return check_training_state(state, str(path))


class CsvLog:
    """Append-only CSV log that can be cut back to a step on resume (no duplicated rows)."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in self.fields})
            handle.flush()
            os.fsync(handle.fileno())

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))
