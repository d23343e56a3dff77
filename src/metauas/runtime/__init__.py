"""The runtime: what turns (prompt, queries) into maps, decisions and result files.

* `predictor`: the `Predictor` contract and the one batching loop (read -> resize -> predict ->
  resize back -> score); `torch_backend.Segmenter` and `onnx_backend.OnnxSegmenter` implement it.
* `engine`: `open_engine(model, backend, size, ...)` without argparse.
* `thresholds`: calibration maths and the threshold store.
* `results`: the decision rule, result rows, results.json/csv and the PNG writer.
* `export` / `onnx_format`: ONNX export with the prompt as an input, and its file format.

The CLI (`metauas.inference.commands`), the web app (`metauas.web`), evaluation and the
held-out benchmark all run through these modules.
"""

from metauas.runtime.engine import Engine, open_engine
from metauas.runtime.onnx_backend import OnnxSegmenter
from metauas.runtime.predictor import Outcome, Predictor, SegmentationResult
from metauas.runtime.results import ResultWriter, decide
from metauas.runtime.thresholds import Thresholds, calibrate, fingerprint
from metauas.runtime.torch_backend import Segmenter

__all__ = ["Engine", "open_engine", "Predictor", "Outcome", "SegmentationResult", "Segmenter", "OnnxSegmenter",
           "ResultWriter", "decide", "Thresholds", "calibrate", "fingerprint"]
