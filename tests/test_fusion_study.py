"""benchmarks/fusion_study.py scores rules exactly as `metauas eval` scores the product."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from metauas.data import MakeDatasetConfig, make_mvtec_dataset
from metauas.evaluation import EvalConfig, run_evaluation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fusion_study  # noqa: E402


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("fusion") / "data"
    make_mvtec_dataset(MakeDatasetConfig(out=root, categories=2, n_train=3, n_test_good=2,
                                         n_test_anomalous=3, size=64, seed=5))
    cache = root.parent / "cache"
    return root, fusion_study.dump("metauas-lite0-256", str(root), [1, 3], cache, dtype=np.float32)


def _default_rule() -> str:
    """The bundled default's map rule as a fusion_study expression (its weight and E2/P2 term)."""
    from metauas.models import load_model

    cfg = load_model("metauas-lite0-256").config
    term = {"l2": "E2", "cosine": "P2"}[cfg.patchmatch_distance]
    assert cfg.patchmatch_neighbourhood == 3
    return f"{1 - cfg.patchmatch_weight!r}*sig(L)+{cfg.patchmatch_weight!r}*{term}"


@pytest.mark.parametrize("rule,method", [(_default_rule(), "metauas"), ("P1", "patchmatch"),
                                         ("sig(L)", "network")])
def test_rules_reproduce_eval(dumped: tuple[Path, list[Path]], tmp_path: Path, rule: str,
                              method: str) -> None:
    """The default rule, the baseline and the network alone equal `metauas eval` (no --method,
    --method patchmatch, --method network) per category."""
    root, files = dumped
    study = fusion_study.score(rule, fusion_study.load(files))
    report = run_evaluation(EvalConfig(dataset="mvtec", root=root, out=tmp_path / "eval", seeds=(1, 3),
                                       method=method, progress=False))
    for cat, metrics in study["categories"].items():
        for key in ("I-AUROC", "P-AUROC", "P-AUPRO"):
            assert metrics[key] == pytest.approx(report["per_category"][cat][key], abs=1e-6), (cat, key)
