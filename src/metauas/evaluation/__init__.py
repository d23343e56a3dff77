"""Benchmark evaluation: runner, patch-matching baseline, reports (`metauas eval`)."""

from metauas.evaluation.patchmatch import patchmatch_map
from metauas.evaluation.runner import EvalConfig, aggregate, predict_maps, run_evaluation, write_reports
from metauas.metrics import evaluate, evaluate_pairs

__all__ = ["EvalConfig", "run_evaluation", "aggregate", "write_reports", "predict_maps",
           "patchmatch_map", "evaluate", "evaluate_pairs"]
