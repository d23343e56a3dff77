"""Checks for every structured file metauas reads: model metadata, ONNX export metadata,
threshold stores, training configs and training checkpoints.

Files come from users, downloads and crashed runs, so their content is checked field by field
*before* anything is allocated or used. Each check raises one error class of metauas.errors
with a one-line message naming the file and the field.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from metauas.errors import CheckpointError, InputError, MetaUASError

# Bounds on architecture numbers read from files. The largest model we build uses decoder
# widths of 256 and 512 px inputs; the bounds leave room for experiments while keeping a
# crafted file from asking for gigabytes (decoder widths of 20000 need about 14 GB).
MAX_DECODER_CHANNELS = 1024
MAX_DECODER_LEVELS = 8
MAX_IMAGE_SIZE = 2048
MAX_SHOTS = 64
MAX_INPUT_PADDING = 128  # px per side of the encoder input (ModelConfig.input_padding)
MAX_DEPTH = 4  # nesting of JSON objects we accept (threshold entries are flat)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(float(value))


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH + 1:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def valid_input_padding(value: Any) -> bool:
    """True for an allowed `ModelConfig.input_padding`: an int, multiple of 32, 0..MAX_INPUT_PADDING."""
    return _is_int(value) and value % 32 == 0 and 0 <= value <= MAX_INPUT_PADDING


def check_model_config(data: Any, source: str) -> dict[str, Any]:
    """Validate the `metauas_config` metadata of a model file before building the model.

    Returns the known fields (unknown ones are dropped, as before).

    Raises:
        CheckpointError: not a mapping, a field of the wrong type, or a size out of bounds.
    """
    from metauas.models.alignment import ALIGNMENT_TYPES, FUSION_TYPES
    from metauas.models.comparison import COMPARISON_TYPES, PATCHMATCH_DISTANCES
    from metauas.models.encoders import ENCODERS

    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: invalid model config in metadata: {field} {why}")

    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: invalid model config in metadata: expected a JSON object")
    out = dict(data)
    if "encoder" in data and (not isinstance(data["encoder"], str) or data["encoder"] not in ENCODERS):
        raise bad("encoder", f"must be one of {sorted(ENCODERS)}, got {str(data['encoder'])[:40]!r}")
    if "alignment" in data and data["alignment"] not in ALIGNMENT_TYPES:
        raise bad("alignment", f"must be one of {list(ALIGNMENT_TYPES)}")
    if "fusion" in data and data["fusion"] not in FUSION_TYPES:
        raise bad("fusion", f"must be one of {list(FUSION_TYPES)}")
    if "num_aligned" in data and not (_is_int(data["num_aligned"]) and 0 <= data["num_aligned"] <= 5):
        raise bad("num_aligned", "must be an integer from 0 to 5")
    if "image_size" in data:
        size = data["image_size"]
        if not (_is_int(size) and 32 <= size <= MAX_IMAGE_SIZE and size % 32 == 0):
            raise bad("image_size", f"must be a multiple of 32 from 32 to {MAX_IMAGE_SIZE}, got {str(size)[:40]}")
    if "decoder_channels" in data:
        channels = data["decoder_channels"]
        if not (isinstance(channels, list) and 1 <= len(channels) <= MAX_DECODER_LEVELS
                and all(_is_int(c) and 1 <= c <= MAX_DECODER_CHANNELS for c in channels)):
            raise bad("decoder_channels", f"must be a list of 1 to {MAX_DECODER_LEVELS} integers from 1 to "
                                          f"{MAX_DECODER_CHANNELS}, got {str(channels)[:60]}")
    if "encoder_head" in data and data["encoder_head"] is not None and not isinstance(data["encoder_head"], bool):
        raise bad("encoder_head", "must be true, false or null")
    if "comparison" in data and data["comparison"] not in COMPARISON_TYPES:
        raise bad("comparison", f"must be one of {list(COMPARISON_TYPES)}")
    if "patchmatch_weight" in data:
        w = data["patchmatch_weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
            raise bad("patchmatch_weight", f"must be a number from 0 to 1, got {str(w)[:40]}")
    if "patchmatch_neighbourhood" in data and (not _is_int(data["patchmatch_neighbourhood"])
                                               or data["patchmatch_neighbourhood"] not in (1, 3, 5, 7)):
        raise bad("patchmatch_neighbourhood", f"must be 1, 3, 5 or 7, got {str(data['patchmatch_neighbourhood'])[:40]}")
    if "patchmatch_distance" in data and data["patchmatch_distance"] not in PATCHMATCH_DISTANCES:
        raise bad("patchmatch_distance", f"must be one of {list(PATCHMATCH_DISTANCES)}")
    if "input_padding" in data and not valid_input_padding(data["input_padding"]):
        raise bad("input_padding", f"must be a multiple of 32 from 0 to {MAX_INPUT_PADDING}, "
                                   f"got {str(data['input_padding'])[:40]}")
    if "temperature" in data:
        t = data["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.05 <= float(t) <= 100.0:
            raise bad("temperature", f"must be a number from 0.05 to 100, got {str(t)[:40]}")
    return out


def check_onnx_metadata(data: Any, source: str) -> dict[str, Any]:
    """Validate metauas_onnx.json before its numbers are used to size inputs.

    Raises:
        InputError: missing fields, wrong types or values out of bounds.
    """
    def bad(why: str) -> InputError:
        return InputError(f"{source}: invalid ONNX export metadata: {why}; export again")

    if not isinstance(data, dict):
        raise bad("expected a JSON object")
    fields: dict[str, Callable[[Any], bool]] = {
        "format_version": _is_int,
        "model": lambda v: isinstance(v, str),
        "model_digest": lambda v: isinstance(v, str),
        "size": lambda v: _is_int(v) and 32 <= v <= MAX_IMAGE_SIZE and v % 32 == 0,
        "shots": lambda v: _is_int(v) and 1 <= v <= MAX_SHOTS,
        "encoder": lambda v: isinstance(v, str),
        "aligned_levels": lambda v: isinstance(v, list) and len(v) <= 5 and all(_is_int(x) and 1 <= x <= 5 for x in v),
        "has_keys": lambda v: isinstance(v, bool),
        "opset": lambda v: _is_int(v) and 7 <= v <= 100,
        "torch_version": lambda v: isinstance(v, str),
        "created": lambda v: isinstance(v, str),
    }
    for name, ok in fields.items():
        if name not in data:
            raise bad(f"'{name}' missing")
        if not ok(data[name]):
            raise bad(f"'{name}' has an invalid value {str(data[name])[:40]!r}")
    if data.get("max_abs_diff") is not None and not _is_number(data["max_abs_diff"]):
        raise bad("'max_abs_diff' must be a number or null")
    files = data.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise bad("'files' must map names to file names")
    return data


THRESHOLD_FIELDS: dict[str, Callable[[Any], bool]] = {
    "image": _is_number, "pixel": _is_number, "method": lambda v: isinstance(v, str),
    "model": lambda v: isinstance(v, str), "model_digest": lambda v: isinstance(v, str),
    "size": lambda v: _is_int(v) and 0 <= v <= 1_000_000, "prompt_fingerprint": lambda v: isinstance(v, str),
    "tile": lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "quantile": lambda v: v is None or _is_number(v), "num_good": _is_int, "num_bad": _is_int,
    "good_scores": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items()),
    "image_f1": lambda v: v is None or _is_number(v), "pixel_f1": lambda v: v is None or _is_number(v),
    "good_flagged": lambda v: v is None or _is_number(v), "created": lambda v: isinstance(v, str),
}


def check_threshold_entry(entry: Any, source: str) -> dict[str, Any]:
    """One threshold entry (a store entry or a bare threshold file).

    Raises:
        InputError: not an object, 'image'/'pixel' missing, or a field of the wrong type.
    """
    if not isinstance(entry, dict):
        raise InputError(f"{source}: threshold entry must be a JSON object")
    if "image" not in entry or "pixel" not in entry:
        raise InputError(f"{source}: threshold entry lacks 'image'/'pixel' values")
    for name, ok in THRESHOLD_FIELDS.items():
        if name in entry and not ok(entry[name]):
            raise InputError(f"{source}: threshold field '{name}' has an invalid value {str(entry[name])[:40]!r}")
    return entry


def check_threshold_store(data: Any, source: str) -> list[dict[str, Any]]:
    """A threshold store {"version": 1, "entries": [...]}: the checked entries.

    Raises:
        InputError: wrong structure, nesting deeper than expected, or a bad entry.
    """
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise InputError(f"threshold file {source} is not a metauas threshold file (no 'entries' list)")
    if _depth(data) > MAX_DEPTH:
        raise InputError(f"threshold file {source} is nested too deeply to be a metauas threshold file")
    return [check_threshold_entry(e, f"threshold file {source}") for e in data["entries"]]


def check_train_config(data: Mapping[str, Any], defaults: Any, source: str) -> None:
    """Types and ranges of a training config (YAML or overrides) against the dataclass defaults.

    Raises:
        InputError: a field of the wrong type, or a count/size that cannot run.
    """
    for name, value in data.items():
        default = getattr(defaults, name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value)
        elif isinstance(default, float):
            ok = _is_number(value)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(_is_int(v) for v in value)
        elif isinstance(default, dict):
            ok = isinstance(value, dict)
        else:
            ok = True
        if not ok:
            raise InputError(f"{source}: {name} must be {type(default).__name__}, got {str(value)[:40]!r}")
    positive = ("steps", "batch_size", "image_size", "val_every", "ckpt_every", "log_every", "cache_pool")
    for name in positive:
        if name in data and data[name] < 1:
            raise InputError(f"{source}: {name} must be at least 1, got {data[name]}")
    non_negative = ("max_minutes", "threads", "num_workers", "warmup_steps", "val_pairs", "cache_start", "lr",
                    "weight_decay", "grad_clip", "dice_weight", "focal_gamma", "min_lr_ratio")
    for name in non_negative:
        if name in data and data[name] < 0:
            raise InputError(f"{source}: {name} must not be negative, got {data[name]}")
    if "image_size" in data and data["image_size"] % 32:
        raise InputError(f"{source}: image_size must be a multiple of 32, got {data['image_size']}")
    if "patchmatch_weight" in data and not 0.0 <= data["patchmatch_weight"] <= 1.0:
        raise InputError(f"{source}: patchmatch_weight must be from 0 to 1, got {data['patchmatch_weight']}")
    if "patchmatch_neighbourhood" in data and data["patchmatch_neighbourhood"] not in (1, 3, 5, 7):
        raise InputError(f"{source}: patchmatch_neighbourhood must be 1, 3, 5 or 7, "
                         f"got {data['patchmatch_neighbourhood']}")
    if "input_padding" in data and not valid_input_padding(data["input_padding"]):
        raise InputError(f"{source}: input_padding must be a multiple of 32 from 0 to {MAX_INPUT_PADDING}, "
                         f"got {data['input_padding']}")
    if "patchmatch_distance" in data:
        from metauas.models.comparison import PATCHMATCH_DISTANCES

        if data["patchmatch_distance"] not in PATCHMATCH_DISTANCES:
            raise InputError(f"{source}: patchmatch_distance must be one of {list(PATCHMATCH_DISTANCES)}, "
                             f"got {str(data['patchmatch_distance'])[:40]!r}")
    if "decoder_channels" in data:
        check_model_config({"decoder_channels": data["decoder_channels"]}, source)


def check_training_state(state: Any, source: str) -> dict[str, Any]:
    """A loaded training checkpoint has every key resume needs, with usable types.

    Raises:
        CheckpointError: a key missing or of the wrong type.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: not a metauas training checkpoint")
    needs = {"model": dict, "optimizer": dict, "scheduler": dict, "config": dict, "step": int, "best": (int, float)}
    for key, kind in needs.items():
        if key not in state:
            raise CheckpointError(f"{source}: training checkpoint lacks '{key}'; cannot resume")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"{source}: training checkpoint field '{key}' has the wrong type")
    if state["step"] < 0:
        raise CheckpointError(f"{source}: training checkpoint has a negative step")
    return state


__all__ = ["MetaUASError", "check_model_config", "check_onnx_metadata", "check_threshold_entry",
           "check_threshold_store", "check_train_config", "check_training_state"]
