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
        """Dataset indices of this rank's batch at `step`: ``batch_size`` consecutive indices starting
        at ``(step * world + rank) * batch_size`` (a pure function of the step).
        """
        first = (step * self.world + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.end_step):
            yield from self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.batch_size


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_path(path: Path) -> Path:
    """The sidecar `<name>.sha256` that lists the accepted SHA-256 digests of `path`."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def _accepted_digests(path: Path) -> list[str] | None:
    sidecar = digest_path(path)
    if not sidecar.is_file():
        return None
    return [line.strip() for line in sidecar.read_text().split() if line.strip()]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path` atomically, with its SHA-256 in the sidecar `<name>.sha256`.

    The file stays a plain `torch.save` file. The sidecar is written first and lists the new
    digest and the one of the file it replaces, so a kill at any moment leaves a file whose
    digest is listed; changed bytes on disk (bit flips, truncation) are refused by
    `read_checked_torch`.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    accepted = [_sha256(payload)]
    try:
        current = _sha256(path.read_bytes()) if path.is_file() else None
    except OSError:
        current = None
    if current is not None and current in (_accepted_digests(path) or []):
        accepted.append(current)  # the file on disk until the replace below lands
    atomic_write(digest_path(path), lambda tmp: Path(tmp).write_text("\n".join(accepted) + "\n"))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))


def read_checked_torch(path: Path) -> Any:
    """Load a file written by `atomic_torch_save` (weights_only=True) after checking its digest.

    A file without a sidecar (written by earlier versions) is loaded as it is.

    Raises:
        CheckpointError: the digest is not the one written with the file (flipped bytes,
            truncation), or the file cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        accepted = _accepted_digests(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    if accepted is not None and _sha256(data) not in accepted:
        raise CheckpointError(f"{path}: checkpoint is corrupt (its SHA-256 is not the one written with it in "
                              f"{digest_path(path).name}); refusing to resume from it")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save_training_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, step: int, best: float, config: dict) -> None:
    """Write everything needed to resume exactly (model, optimiser, scheduler, step, best P-AP,
    torch RNG state, config) to `path`, atomically.
    """
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
        """Drop the rows of steps after `step` (a resumed run rewrites them)."""
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
        """Append one row (missing fields empty), with the header for a new file; flushed and fsynced."""
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
        """All rows as dicts of strings ([] when the file does not exist)."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))
