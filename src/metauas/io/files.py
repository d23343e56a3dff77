"""Turning what a user typed (files, folders, globs) into image paths, and output folders.

Globs match file names case-insensitively (``parts/*.jpg`` finds ``a.JPG``), as folder
listing does. Inputs that name a file already listed (the same path twice, or symlinks to
one file) are processed once and reported in `Resolved.duplicates`.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Sequence

from metauas.constants import IMAGE_SUFFIXES
from metauas.errors import InputError
from metauas.io.images import list_images

WILDCARDS = "*?["


@dataclass
class Resolved:
    """Image paths in order without duplicates, and the inputs dropped as duplicates."""

    paths: list[Path] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (dropped, the kept path it equals)


def glob_images(pattern: str) -> list[Path]:
    """Image files matching `pattern` (``**`` recursive); the file-name part matches any case."""
    pattern = os.path.expanduser(pattern)
    head, tail = os.path.split(pattern)
    if any(c in head for c in WILDCARDS) or not any(c in tail for c in WILDCARDS):
        candidates = glob(pattern, recursive=True)
    else:
        folder = head or "."
        names = os.listdir(folder) if os.path.isdir(folder) else []
        candidates = [os.path.join(head, n) for n in names if fnmatch.fnmatchcase(n.lower(), tail.lower())]
    return sorted(Path(m) for m in candidates if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES)


def resolve_inputs(items: Sequence[str], what: str = "query") -> Resolved:
    """Files, folders (their images) and globs -> `Resolved` image paths, in order.

    Raises:
        InputError: a path that does not exist, or a glob that matches no image.
    """
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            paths.extend(list_images(p))
        elif p.exists():
            paths.append(p)
        elif any(c in item for c in WILDCARDS):
            matches = glob_images(item)
            if not matches:
                raise InputError(f"no {what} images match {item}")
            paths.extend(matches)
        else:
            raise InputError(f"{what} image not found: {item}")
    resolved = Resolved()
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            if path != seen[key]:
                resolved.duplicates.append((path, seen[key]))
            continue
        seen[key] = path
        resolved.paths.append(path)
    return resolved


def resolve_images(items: Sequence[str], what: str = "query") -> list[Path]:
    """Files, folders (their images) and globs -> image paths, in order, without duplicates.

    Raises:
        InputError: as `resolve_inputs`.
    """
    return resolve_inputs(items, what).paths


def prepare_output_dir(out: Path, planned: Sequence[str], overwrite: bool) -> None:
    """Create `out`, prove it is writable, and refuse to replace earlier results silently.

    Raises:
        InputError: `out` is a file, not writable, or holds one of `planned` without `overwrite`.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"output path exists and is not a folder: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".metauas-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    if not overwrite:
        clashes = [name for name in planned if (out / name).exists()]
        if clashes:
            more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
            raise InputError(f"{out} already holds results ({clashes[0]}{more}); use --overwrite to replace "
                             "them or choose another --out")


def lock_output_dir(out: Path):
    """Hold `out/.metauas.lock` for one run (a `filelock.FileLock`; call ``release()``).

    The empty lock file stays after the run: removing it on release would let a run that opened
    the old file just before the removal and a run that creates a new one both hold the lock.

    Raises:
        InputError: another run holds the lock.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / ".metauas.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"{out} is in use by another `metauas segment` run; wait for it to finish or "
                         "choose another --out") from None
    return lock
