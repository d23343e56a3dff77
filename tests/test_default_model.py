"""The bundled default model: loads offline from the package and finds the example defects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from metauas.models import DEFAULT_MODEL, MetaUAS, available_models
from metauas.models.hub import model_card, weights_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "metauas" / "examples"


@pytest.fixture(scope="module")
def segmenter():
    from metauas.inference import Segmenter

    assert DEFAULT_MODEL in available_models(), "the default model must be bundled in src/metauas/weights"
    return Segmenter(MetaUAS.from_pretrained(DEFAULT_MODEL))


def test_default_model_loads_offline_with_its_card(segmenter):
    cfg = segmenter.model.config
    assert (cfg.encoder, cfg.image_size) == ("efficientnet-lite0", 256)
    card = model_card(DEFAULT_MODEL)
    assert card["name"] == DEFAULT_MODEL and card["steps"] > 0
    assert {"p_auroc", "p_ap"} <= set(card["validation"])
    assert json.loads((weights_dir() / f"{DEFAULT_MODEL}.json").read_text()) == card


def test_default_model_segments_the_example_defects(segmenter):
    from PIL import Image

    segmenter.set_prompt(EXAMPLES / "prompt.png")
    defect, same = segmenter.segment([EXAMPLES / "query.png", EXAMPLES / "prompt.png"])
    mask = np.asarray(Image.open(EXAMPLES / "query_mask.png")) > 0
    assert defect.anomaly_map.shape == mask.shape
    assert roc_auc_score(mask.ravel(), defect.anomaly_map.ravel()) > 0.9
    # separation, independent of the map's background level (patch matching's Euclidean distance
    # between two different normal images is not 0): 3/4 of the defect's pixels score above 99 %
    # of the normal ones
    assert np.percentile(defect.anomaly_map[mask], 25) > np.percentile(defect.anomaly_map[~mask], 99)
    assert same.score < defect.score  # the normal image itself is less anomalous than the defect
