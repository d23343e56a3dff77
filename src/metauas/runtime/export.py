"""ONNX export with the prompt as an *input*, so a deployment encodes the normal image once.

Three graphs are written (all float32, fixed input size S, dynamic query batch):

* `encoder.onnx`  image (B,3,S,S) in [0,1] -> f1..f5 (the frozen encoder, normalisation inside)
* `prompt.onnx`   the aligned-level features of the K prompt images (K,C,h,w) -> prompt tensors
                  `p<l>` and alignment keys `k<l>` in the layout the decoder expects
* `decoder.onnx`  query features q1..q5 + prompt tensors -> anomaly probabilities (B,1,S,S)

A deployment runs encoder+prompt once per normal image, then encoder+decoder per query,
which is what `metauas segment --backend onnxruntime` does (see onnx_backend.py). The number
of prompts K (k-shot) is fixed at export time; the metadata file `metauas_onnx.json` records
it with the size, the aligned levels and the input/output names.

The graphs wrap the model's own methods (encode, Alignment.reduce, forward_features), so the
exported maths is the PyTorch maths; `verify_export` checks that outputs agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from metauas.atomic import atomic_write, atomic_write_text
from metauas.constants import check_size
from metauas.errors import InputError, MetaUASError
from metauas.models import MetaUAS, PromptFeatures
from metauas.io.images import read_image, to_model_tensor
from metauas.models.store import model_digest
from metauas.paths import examples_dir
from metauas.runtime.onnx_backend import OnnxRunner
from metauas.runtime.onnx_format import (DECODER_FILE, DEFAULT_OPSET, ENCODER_FILE, EXPORT_FILES, FORMAT_VERSION,
                                         META_FILE, PARITY_TOLERANCE, PROMPT_FILE, OnnxMetadata)

@dataclass
class OnnxExportConfig:
    """What to export: input size (multiple of 32), number of prompts K, ONNX opset."""

    size: int = 256
    shots: int = 1
    opset: int = DEFAULT_OPSET

    def validate(self) -> None:
        """Check the export options.

        Raises:
            InputError: size not a positive multiple of 32, or shots outside 1..64.
        """
        check_size(self.size, "--size")
        if not 1 <= self.shots <= 64:
            raise InputError(f"--shots must be between 1 and 64, got {self.shots}")


def _has_keys(model: MetaUAS) -> bool:
    return model.config.alignment != "na" and bool(model.aligned_levels)


def prompt_names(model: MetaUAS) -> list[str]:
    """Names of the prompt graph's outputs (= the decoder's prompt inputs): ``p<l>`` per aligned
    level l, then ``k<l>`` (alignment keys) unless the model has no keys (alignment "na").
    """
    names = [f"p{level}" for level in model.aligned_levels]
    if _has_keys(model):
        names += [f"k{level}" for level in model.aligned_levels]
    return names


class EncoderGraph(nn.Module):
    """image -> f1..f5 (f0, the normalised image, is not used by the decoder)."""

    def __init__(self, model: MetaUAS) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B,3,S,S) image in [0,1] -> f1..f5, f_l of shape (B,C_l,S/2**l,S/2**l)."""
        return tuple(self.model.encode(image)[1:])


class PromptGraph(nn.Module):
    """Aligned-level features of K prompt images -> decoder prompt inputs (as prepare_prompt)."""

    def __init__(self, model: MetaUAS, shots: int) -> None:
        super().__init__()
        self.model = model
        self.shots = shots

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Aligned-level features (K,C_l,h_l,w_l) of the K prompts, deepest level first -> prompt
        tensors ``p<l>`` and keys ``k<l>`` (`prompt_names`); with K > 1 a leading axis of 1 is added
        (the k-shot layout of `PromptFeatures`).
        """
        prompts, keys = [], []
        for align, f in zip(self.model.alignment, features):
            key = align.reduce(f) if align.kind != "na" else None
            if self.shots > 1:  # (K,C,h,w) -> (1,K,C,h,w), the k-shot layout of PromptFeatures
                f = f.unsqueeze(0)
                key = key.unsqueeze(0) if key is not None else None
            prompts.append(f)
            if key is not None:
                keys.append(key)
        return tuple(prompts + keys)


class DecoderGraph(nn.Module):
    """q1..q5 + prompt tensors -> probabilities, through MetaUAS.forward_features."""

    def __init__(self, model: MetaUAS) -> None:
        super().__init__()
        self.model = model
        self.levels = list(model.aligned_levels)
        self.has_keys = _has_keys(model)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """q1..q5 (B,C_l,S/2**l,S/2**l), then the prompt tensors and keys in `prompt_names` order ->
        anomaly map (B,1,S,S) in [0,1] (`MetaUAS.anomaly_map`).
        """
        query = list(inputs[:5])
        rest = inputs[5:]
        n = len(self.levels)
        features: list[torch.Tensor | None] = [None] * 6
        keys: list[torch.Tensor | None] = [None] * 6
        for i, level in enumerate(self.levels):
            features[level] = rest[i]
            if self.has_keys:
                keys[level] = rest[n + i]
        # f0 is never fused or decoded; its slot only carries the batch size for expand_to
        return self.model.anomaly_map([query[0]] + query, PromptFeatures(features, keys))  # type: ignore[arg-type]


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
            output_names: list[str], dynamic: dict[str, dict[int, str]], opset: int) -> None:
    """Trace `module` to `path` through `metauas.atomic.atomic_write`: the exporter writes a
    unique temporary file beside `path`, which replaces `path` only once it is complete and
    fsynced, so an interrupted export leaves the old file (or none), never a partial graph."""
    module.eval()  # the exporter restores the wrapper's mode afterwards; a fresh wrapper would
    # otherwise be "training" and put the wrapped model (BatchNorm!) into training mode

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer/deprecation chatter; the parity check is the proof
            torch.onnx.export(module, args, tmp, dynamo=False, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic, opset_version=opset,
                              do_constant_folding=True)

    atomic_write(path, write)


@contextlib.contextmanager
def _single_attention_chunk(model: MetaUAS, size: int) -> Iterator[None]:
    """Trace the attention as one chunk: the tracer records chunking as a Split with a fixed
    chunk length, which onnxruntime rejects when the length exceeds the positions present."""
    saved = [align.chunk_size for align in model.alignment]
    try:
        for align, level in zip(model.alignment, model.aligned_levels):
            align.chunk_size = (size // 2 ** level) ** 2
        yield
    finally:
        for align, chunk in zip(model.alignment, saved):
            align.chunk_size = chunk


def _check_prompt_levels(model: MetaUAS) -> None:
    """The decoder graph receives prompt features of the aligned levels only: every level that
    the comparison signals or the patch-matching fusion read must be one of them."""
    from metauas.models.comparison import PATCHMATCH_LEVELS

    needed = set(model.comparison.levels) if model.comparison is not None else set()
    if model.config.patchmatch_weight > 0:
        needed |= set(PATCHMATCH_LEVELS)
    missing = sorted(needed - set(model.aligned_levels))
    if missing:
        raise InputError(f"this model reads prompt features of levels {missing}, which are not aligned levels; "
                         "ONNX export supports models whose comparison/patch-matching levels are aligned")


def export_onnx(model: MetaUAS, out_dir: str | os.PathLike, config: OnnxExportConfig | None = None,
                model_name: str = "", overwrite: bool = False, verify: bool = True) -> OnnxMetadata:
    """Write encoder/prompt/decoder graphs and metadata to `out_dir`; returns the metadata.

    Raises:
        InputError: invalid config, levels the export cannot feed, an existing export without
            `overwrite`, or an output folder that cannot be created or written.
        MetaUASError: the ONNX exporter fails, or the export differs from PyTorch by more than
            PARITY_TOLERANCE.
    """
    config = config or OnnxExportConfig()
    config.validate()
    _check_prompt_levels(model)
    out = Path(out_dir)
    existing = [out / name for name in EXPORT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out} already holds an export ({existing[0].name}); use --overwrite or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    model = model.eval().cpu()
    s, k = config.size, config.shots
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # not inference_mode: the tracer cannot use inference tensors
        example_query = torch.rand(2, 3, s, s, generator=gen)
        q_feats = model.encode(example_query)[1:]
        p_feats = [f[:1].expand(k, *f.shape[1:]).contiguous() for f in q_feats]
        prompt_in = [p_feats[level - 1] for level in model.aligned_levels]
        prompt_out = PromptGraph(model, k)(*prompt_in)
    names_q = [f"q{i}" for i in range(1, 6)]
    names_prompt_in = [f"f{level}" for level in model.aligned_levels]
    try:
        with _single_attention_chunk(model, s):
            _export(EncoderGraph(model), (example_query[:1],), out / ENCODER_FILE, ["image"],
                    [f"f{i}" for i in range(1, 6)],
                    {"image": {0: "batch"}, **{f"f{i}": {0: "batch"} for i in range(1, 6)}}, config.opset)
            _export(PromptGraph(model, k), tuple(prompt_in), out / PROMPT_FILE, names_prompt_in,
                    prompt_names(model), {}, config.opset)
            _export(DecoderGraph(model), tuple(q_feats) + tuple(prompt_out), out / DECODER_FILE,
                    names_q + prompt_names(model), ["prob"],
                    {**{n: {0: "batch"} for n in names_q}, "prob": {0: "batch"}}, config.opset)
    except PermissionError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror}") from None
    except RuntimeError as exc:  # torch.onnx errors derive from RuntimeError
        raise MetaUASError(f"ONNX export failed: {str(exc).splitlines()[0][:300]}") from None
    meta = OnnxMetadata(
        format_version=FORMAT_VERSION, model=model_name, model_digest=model_digest(model), size=s, shots=k,
        encoder=model.config.encoder, aligned_levels=list(model.aligned_levels), has_keys=_has_keys(model),
        opset=config.opset, torch_version=torch.__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        files={"encoder": ENCODER_FILE, "prompt": PROMPT_FILE, "decoder": DECODER_FILE})
    if verify:
        meta.max_abs_diff = verify_export(model, out, meta)
        if meta.max_abs_diff > PARITY_TOLERANCE:
            raise MetaUASError(f"ONNX export in {out} differs from PyTorch by {meta.max_abs_diff:.2e} "
                               f"(tolerance {PARITY_TOLERANCE:g})")
    atomic_write_text(out / META_FILE, json.dumps(asdict(meta), indent=2))
    return meta


def parity_images(size: int, shots: int, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts (K,3,S,S), queries (B,3,S,S)) in [0,1] for parity checks: the bundled example
    photographs (prompt and defective query, plus flipped copies) when installed, else seeded
    smooth random images (low-frequency noise, closer to photographs than white noise)."""
    folder = examples_dir()
    if folder is not None:
        prompt = to_model_tensor(read_image(folder / "prompt.png").rgb, size)
        query = to_model_tensor(read_image(folder / "query.png").rgb, size)
        pool = [prompt, query, prompt.flip(-1), query.flip(-2)]
        prompts = torch.cat([pool[i % 2 * 2] if i else prompt for i in range(shots)])
        queries = torch.cat([pool[1 + i % 3] for i in range(batch)])
        return prompts, queries
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(shots + batch, 3, max(1, size // 16), max(1, size // 16), generator=gen)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return images[:shots], images[shots:]


def verify_export(model: MetaUAS, folder: Path, meta: OnnxMetadata, batch: int = 2, seed: int = 1) -> float:
    """Max |p_onnx - p_torch| over anomaly maps of real images (`parity_images`), with the
    prompt path `Segmenter` uses. A correct export stays far below PARITY_TOLERANCE (1e-3);
    a wrong graph differs by 0.1 or more.

    Raises:
        InputError: the export cannot be loaded by onnxruntime.
    """
    runner = OnnxRunner(folder, meta=meta)
    prompts, queries = parity_images(meta.size, meta.shots, batch, seed)
    with torch.inference_mode():
        prepared = model.prepare_prompt(prompts[None] if meta.shots > 1 else prompts)
        expected = model.anomaly_map(model.encode(queries), prepared).numpy()
    runner.set_prompt_tensor(prompts.numpy())
    got = runner.predict(queries.numpy())
    return float(np.abs(got - expected).max())
