"""Models available offline: trained weights shipped inside the installed package.

`load_model("metauas-lite0-256")` reads `metauas/weights/metauas-lite0-256.safetensors`;
any other argument is treated as a file path (our safetensors or an official checkpoint).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from metauas.errors import CheckpointError
from metauas.models.checkpoint import load_checkpoint
from metauas.models.metauas import MetaUAS

DEFAULT_MODEL = "metauas-lite0-256"


def weights_dir() -> Path:
    return Path(str(resources.files("metauas") / "weights"))


def available_models() -> list[str]:
    folder = weights_dir()
    return sorted(p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def model_card(name: str) -> dict:
    card = weights_dir() / f"{name}.json"
    return json.loads(card.read_text()) if card.is_file() else {}


def load_model(name_or_path: str | Path = DEFAULT_MODEL) -> MetaUAS:
    name = str(name_or_path)
    bundled = weights_dir() / f"{name}.safetensors"
    if bundled.is_file():
        return load_checkpoint(bundled)
    path = Path(name).expanduser()
    if path.exists():
        return load_checkpoint(path)
    known = ", ".join(available_models()) or "none installed"
    raise CheckpointError(f"no model named {name!r} and no such file (bundled models: {known})")
