"""Shared test fixtures: small CPU budgets and the official reference files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# One intra-op thread for the whole suite: the test tensors are tiny, and on a shared 2-core
# machine two OpenMP threads spin-waiting on each other were measured up to 10x slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = Path(os.environ.get("METAUAS_OFFICIAL_DIR", REPO.parent / "shared" / "official"))


@pytest.fixture(autouse=True)
def _user_folder(tmp_path, monkeypatch):
    """Every test gets its own user data folder (stored calibrations, exports), never ~/.local."""
    monkeypatch.setenv("METAUAS_HOME", str(tmp_path / "metauas_home"))


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not (OFFICIAL_DIR / "fill.py").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"official reference files missing in CI: {OFFICIAL_DIR}")
        pytest.skip(f"official reference files not found at {OFFICIAL_DIR}")
    return OFFICIAL_DIR


@pytest.fixture(scope="session")
def official_state_dict(official_dir: Path) -> dict:
    sys.path.insert(0, str(official_dir))
    try:
        from fill import digest, make_state_dict  # type: ignore
    finally:
        sys.path.pop(0)
    state = make_state_dict(str(official_dir / "keys.json"))
    assert digest(state) == "55cacd11f77e064a9ec49c2cc43dfc8a1c5c0a14bd5557e57e1948ecda08ceb9"
    return state


@pytest.fixture(scope="session")
def official_model(official_state_dict):
    from metauas.models import official_metauas

    model = official_metauas()
    model.load_state_dict(official_state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small random MetaUAS (Lite0, 64 px) saved as safetensors: for CLI and file-handling tests."""
    from metauas.models import MetaUAS, ModelConfig, save_safetensors

    torch.manual_seed(0)
    model = MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=64)).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_safetensors(model, path)
    return path
