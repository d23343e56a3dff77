"""Where metauas keeps user data (ground floor).

* `metauas_home()`: thresholds chosen by calibration (``thresholds/``) and cached ONNX exports
  (``onnx/``): ``$METAUAS_HOME``, else ``$XDG_DATA_HOME/metauas``, else ``~/.local/share/metauas``.
* `weights_dir()`: the trained models shipped inside the installed package.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def metauas_home() -> Path:
    """User data folder ($METAUAS_HOME, else $XDG_DATA_HOME/metauas, else ~/.local/share/metauas)."""
    if os.environ.get("METAUAS_HOME"):
        return Path(os.environ["METAUAS_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "metauas"


def onnx_cache_dir(digest: str, size: int, shots: int) -> Path:
    """Cache folder of the ONNX export of the weights with SHA-256 `digest` at `size` px, `shots` prompts."""
    return metauas_home() / "onnx" / f"{digest[:16]}-s{size}-k{shots}"


def weights_dir() -> Path:
    """Folder of the bundled ``*.safetensors`` models (inside the installed package)."""
    return Path(str(resources.files("metauas") / "weights"))


def safe_name(text: str, limit: int | None = None) -> str:
    """A file-system-safe name: letters, digits, ``-_.`` kept, anything else ``_`` ("image" if empty)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:limit] or "image"


EXAMPLE_FILES = ("prompt.png", "query.png")


def examples_dir() -> Path | None:
    """The example images (a normal prompt and a defective query): installed package data
    (``metauas/examples``) or the repository's ``examples/``; None when neither is present."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "examples", here.parents[2] / "examples"):
        if all((candidate / name).is_file() for name in EXAMPLE_FILES):
            return candidate
    return None
