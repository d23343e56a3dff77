"""Atomic file writes: a temporary file in the target's folder, fsync, then rename.

A reader (or a crash at any moment) sees either the old file or the complete new one, never
a half-written result. The file gets normal permissions (0666 minus umask), unlike the 0600
that mkstemp uses.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

STALE_TEMP_SECONDS = 24 * 3600  # a temporary file this old belongs to a killed writer


def remove_stale_temps(path: str | os.PathLike, older_than_s: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete `.<name>.*.tmp` files beside `path` left by writers that were killed; returns them.

    Only files older than `older_than_s` seconds are removed, so a concurrent writer's fresh
    temporary file is never touched.
    """
    path = Path(path)
    removed = []
    now = time.time()
    try:
        candidates = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call `writer(tmp_path)` to produce the content, then move it into place.

    The temporary file has a unique name, so concurrent writers of the same target never share
    one; stale temporary files of killed writers (older than a day) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (`atomic_write`); returns the path.

    Raises:
        OSError: the folder cannot be created or written.
    """
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (`atomic_write`), newlines untranslated; returns the path.

    Raises:
        OSError: the folder cannot be created or written.
    """
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding=encoding, newline="") as handle:
            handle.write(text)

    return atomic_write(path, write)
