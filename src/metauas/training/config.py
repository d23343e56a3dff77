"""Training configuration: one dataclass, loaded from YAML, every field overridable on the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metauas.errors import InputError
from metauas.models.metauas import ModelConfig

_MODEL = ModelConfig()  # defaults of the model fields come from ModelConfig (one source)
MODEL_FIELDS = ("encoder", "alignment", "fusion", "num_aligned", "decoder_channels", "image_size", "comparison",
                "patchmatch_weight", "patchmatch_neighbourhood", "patchmatch_distance", "input_padding")


@dataclass
class TrainConfig:
    """A training run: run folder and budget, the model (`MODEL_FIELDS`, the `ModelConfig` fields
    with its defaults), optimisation, data and validation/checkpoint cadence.

    Every field can be set in YAML (`from_yaml`) or on the command line (``--field value``,
    `apply_overrides`); types and ranges are checked by `metauas.schemas.check_train_config`.
    """
    # run
    run_dir: str = "runs/metauas-lite0-256"
    seed: int = 0
    steps: int = 2000
    max_minutes: float = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch default
    # model: the ModelConfig fields in MODEL_FIELDS, flat so YAML files and --set overrides stay
    # simple; their defaults are ModelConfig's and `model_config()` builds the ModelConfig
    encoder: str = _MODEL.encoder
    alignment: str = _MODEL.alignment
    fusion: str = _MODEL.fusion
    num_aligned: int = _MODEL.num_aligned
    decoder_channels: list[int] = field(default_factory=lambda: list(_MODEL.decoder_channels))
    image_size: int = _MODEL.image_size
    comparison: str = _MODEL.comparison  # none (paper) | cosine (explicit comparison signals for the decoder)
    # map = (1-w) * network + w * patch matching; no parameters, so training is unchanged, but
    # validation (and best.safetensors selection) measures the fused map and the exports carry w
    patchmatch_weight: float = _MODEL.patchmatch_weight
    patchmatch_neighbourhood: int = _MODEL.patchmatch_neighbourhood
    patchmatch_distance: str = _MODEL.patchmatch_distance  # cosine | l2 (relative Euclidean, PatchCore)
    input_padding: int = _MODEL.input_padding  # reflect padding of the encoder input (px per side)
    comparison_lr_scale: float = 10.0  # lr multiplier of the (zero-initialised) comparison module
    init_from: str = ""  # safetensors/ckpt to start from (e.g. a lower-resolution stage)
    # optimisation
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02  # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0
    loss: str = "bce_dice"  # bce_dice | focal_dice | bce
    dice_weight: float = 1.0
    focal_gamma: float = 2.0
    amp: str = "auto"  # auto (bf16/fp16 autocast on GPU only) | off
    # data
    data: str = "synthetic"  # synthetic | toy (generated shapes, for tests and smoke runs)
    photos: str = "data/train_images/photos"
    objects: str = ""
    textures: str = ""
    val_photos: str = ""  # held-out images (other sources); empty = split by source automatically
    synthesis: dict[str, Any] = field(default_factory=dict)  # SynthesisConfig overrides
    num_workers: int = 0
    fast_encoder: bool = True  # CPU: frozen encoder through its inference-optimised copy (~2x faster)
    cache_features: bool = False  # precompute frozen-encoder features for a fixed pool of pairs
    cache_pool: int = 512
    cache_start: int = 0  # first synthetic item of the pool (a later stage can use fresh pairs)
    # evaluation and checkpoints
    val_pairs: int = 64
    val_seed: int = 12345
    val_every: int = 200
    ckpt_every: int = 50
    log_every: int = 10
    model_name: str = "metauas-lite0-256"

    def model_config(self) -> ModelConfig:
        """The `ModelConfig` of the model this run trains (the MODEL_FIELDS of this config).

        Raises:
            ValueError: an invalid model field (see `ModelConfig.validate`).
        """
        values = {name: getattr(self, name) for name in MODEL_FIELDS}
        values["decoder_channels"] = tuple(values["decoder_channels"])
        return ModelConfig(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """Read a YAML file of config fields (others keep their defaults).

        Raises:
            InputError: missing file, invalid YAML, not a mapping, unknown fields or wrong types.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"{path}: invalid YAML{where}: {problem}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of config fields")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """A config from a dict of fields; `source` names it in messages.

        Raises:
            InputError: unknown fields, wrong types or values out of range.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"{source}: unknown config fields: {', '.join(unknown)}")
        from metauas.schemas import check_train_config

        check_train_config(data, cls(), source)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a dict (stored in checkpoints and model cards)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """All fields as YAML, in declaration order (written to RUN/config.yaml)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {text}")
    if isinstance(current, (list, dict)):
        return json.loads(text) if text.strip()[:1] in "[{" else [int(x) for x in text.split(",")]
    return type(current)(text)


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field value` option per TrainConfig field (names with dashes)."""
    defaults = TrainConfig()
    group = parser.add_argument_group("config overrides (take precedence over --config)")
    for f in dataclasses.fields(TrainConfig):
        current = getattr(defaults, f.name)
        kind = type(current).__name__
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"override_{f.name}", default=None,
                           metavar=kind.upper(), help=f"(default {current!r})")


def apply_overrides(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """`config` with the ``--field value`` options given on the command line applied.

    Raises:
        InputError: a value that cannot be parsed as the field's type or is out of range.
    """
    changes = {}
    for f in dataclasses.fields(TrainConfig):
        raw = getattr(args, f"override_{f.name}", None)
        if raw is None:
            continue
        try:
            changes[f.name] = _parse_value(raw, getattr(config, f.name))
        except (ValueError, json.JSONDecodeError) as exc:
            raise InputError(f"--{f.name.replace('_', '-')}: {exc}") from None
    from metauas.schemas import check_train_config

    check_train_config(changes, TrainConfig(), "command line")
    return dataclasses.replace(config, **changes)
