"""The MetaUAS change-segmentation network: encoder -> alignment/fusion -> UNet -> mask head."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Sequence

import torch
from torch import nn

from metauas.constants import STRIDE
from metauas.schemas import MAX_INPUT_PADDING, valid_input_padding
from metauas.models.alignment import ALIGNMENT_TYPES, FUSION_TYPES, Alignment, fuse, fused_channels
from metauas.models.comparison import COMPARISON_TYPES, PATCHMATCH_DISTANCES, Comparison, patchmatch_map
from metauas.models.decoder import DEFAULT_DECODER_CHANNELS, UnetDecoder
from metauas.models.encoders import ENCODERS, build_encoder, encode_padded
from metauas.scoring import DEFAULT_TOP_FRACTION, image_scores


@dataclass
class ModelConfig:
    """Architecture and map options of a `MetaUAS` model (stored in checkpoints).

    Attributes:
        encoder: encoder name (`metauas.models.encoders.available_encoders`).
        alignment: "sa" soft alignment (paper, Sec. 3.2), "ha" hard, "na" none.
        fusion: "cat" (paper), "add" or "absdiff".
        num_aligned: deepest encoder levels that are aligned, 0..5 (3: f5, f4, f3).
        decoder_channels: widths of the five UNet decoder blocks.
        image_size: input size S in px the model was trained for (multiple of 32).
        encoder_head: keep the unused classifier-head conv (official layout).
        comparison: "none" (paper) or "cosine" (explicit comparison signals).
        temperature: map = sigmoid(logits / temperature), in [0.05, 100] (1 = paper).
        patchmatch_weight: map = (1-w) * network + w * patch matching, w in [0, 1].
        patchmatch_neighbourhood: odd side k (1..7) of a PatchCore neighbourhood: for k > 1 the
            patch-matching map averages plain and k x k-averaged feature distances
            (`metauas.models.comparison.patchmatch_map`); 1 = plain only.
        patchmatch_distance: nearest-neighbour distance of the patch matching: "cosine" or
            "l2" (PatchCore's Euclidean distance, relative to the prompt's mean feature norm).
        input_padding: px of reflect padding added on each side of the encoder input; the features
            are cropped back to the unpadded grid (`metauas.models.encoders.encode_padded`), so
            the zero padding of the encoder's convolutions no longer shows at the image border.
            A multiple of 32 from 0 (paper) to 128.
    """
    encoder: str = "efficientnet-lite0"
    alignment: str = "sa"  # sa (soft, paper) | ha (hard) | na (none)
    fusion: str = "cat"  # cat (paper) | add | absdiff
    num_aligned: int = 3  # deepest encoder levels that are aligned (f5, f4, f3 for 3)
    decoder_channels: tuple[int, ...] = field(default=DEFAULT_DECODER_CHANNELS)
    image_size: int = 256  # size the model was trained for (metadata, used by Segmenter)
    encoder_head: bool | None = None  # keep the unused classifier-head conv (official layout)
    comparison: str = "none"  # none (paper) | cosine (explicit comparison signals, models/comparison.py)
    temperature: float = 1.0  # anomaly map = sigmoid(logits / temperature) (calibration; 1 = paper)
    patchmatch_weight: float = 0.0  # anomaly map = (1-w) * model + w * patch matching (0 = model only)
    patchmatch_neighbourhood: int = 1  # k > 1: patch matching also on k x k-averaged features (PatchCore)
    patchmatch_distance: str = "cosine"  # cosine | l2 (relative Euclidean, PatchCore)
    input_padding: int = 0  # reflect padding (px per side) of the encoder input, features cropped back

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: unknown encoder/alignment/fusion/comparison, num_aligned outside 0..5,
                image_size not a multiple of 32, patchmatch_weight outside [0, 1],
                patchmatch_neighbourhood not an odd integer in 1..7, an unknown
                patchmatch_distance, temperature outside [0.05, 100] or input_padding not a
                multiple of 32 in 0..128.
        """
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; available: {sorted(ENCODERS)}")
        if self.alignment not in ALIGNMENT_TYPES:
            raise ValueError(f"unknown alignment {self.alignment!r}; choose from {ALIGNMENT_TYPES}")
        if self.fusion not in FUSION_TYPES:
            raise ValueError(f"unknown fusion {self.fusion!r}; choose from {FUSION_TYPES}")
        if not 0 <= self.num_aligned <= 5:
            raise ValueError("num_aligned must be between 0 and 5")
        if self.image_size % STRIDE:
            raise ValueError(f"image_size must be a multiple of {STRIDE}")
        if not 0.0 <= float(self.patchmatch_weight) <= 1.0:
            raise ValueError(f"patchmatch_weight must be in [0, 1], got {self.patchmatch_weight}")
        if self.patchmatch_neighbourhood not in (1, 3, 5, 7):
            raise ValueError(f"patchmatch_neighbourhood must be 1, 3, 5 or 7, got {self.patchmatch_neighbourhood}")
        if self.patchmatch_distance not in PATCHMATCH_DISTANCES:
            raise ValueError(f"unknown patchmatch_distance {self.patchmatch_distance!r}; "
                             f"choose from {tuple(PATCHMATCH_DISTANCES)}")
        if not 0.05 <= float(self.temperature) <= 100.0:
            raise ValueError(f"temperature must be in [0.05, 100], got {self.temperature}")
        if not valid_input_padding(self.input_padding):
            raise ValueError(f"input_padding must be a multiple of {STRIDE} from 0 to {MAX_INPUT_PADDING}, "
                             f"got {self.input_padding}")
        if self.comparison not in COMPARISON_TYPES:
            raise ValueError(f"unknown comparison {self.comparison!r}; choose from {COMPARISON_TYPES}")

    def to_json(self) -> str:
        """The config as a JSON object string (stored in safetensors metadata)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """A config from a dict (e.g. checkpoint metadata); unknown keys are ignored, missing ones take
        the defaults. Values are not validated here (`MetaUAS` validates).
        """
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "decoder_channels" in known:
            known["decoder_channels"] = tuple(known["decoder_channels"])
        return cls(**known)


OFFICIAL_CONFIG = ModelConfig(encoder="efficientnet-b4", alignment="sa", fusion="cat", num_aligned=3,
                              image_size=256, encoder_head=True)


@dataclass
class PromptFeatures:
    """Encoded prompt(s), reusable for any number of queries.

    `features[l]` is (B,C,h,w) or (B,K,C,h,w) for K prompts; `keys[l]` holds the alignment
    reduction of the prompt for aligned levels (None elsewhere).
    """

    features: list[torch.Tensor]
    keys: list[torch.Tensor | None]

    def expand_to(self, batch: int) -> "PromptFeatures":
        """The same prompt broadcast to a query batch of `batch` (a view, no copy).

        Raises:
            ValueError: the prompt batch is neither 1 nor `batch`.
        """
        def grow(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or t.shape[0] == batch:
                return t
            if t.shape[0] != 1:
                raise ValueError(f"prompt batch {t.shape[0]} does not match query batch {batch}")
            return t.expand(batch, *t.shape[1:])

        return PromptFeatures([grow(f) for f in self.features], [grow(k) for k in self.keys])


class MetaUAS(nn.Module):
    """Segments the changes of a query image with respect to one or more normal prompt images.

    `model(query=q, prompt=p)`: q (B,3,H,W) in [0,1]; p (B,3,H,W) or (B,K,3,H,W) (k-shot) in
    [0,1]; returns anomaly probabilities (B,1,H,W). H, W must be multiples of 32.
    The encoder is frozen and always stays in eval mode (its BatchNorm statistics never move).
    """

    def __init__(self, config: ModelConfig | None = None, pretrained_encoder: bool = False) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        config.validate()
        self.encoder = build_encoder(config.encoder, pretrained=pretrained_encoder,
                                     include_head=config.encoder_head)
        channels = self.encoder.stage_channels  # f0..f5
        self.aligned_levels = [5 - i for i in range(config.num_aligned)]  # alignment.i -> level 5-i
        decoder_in = [fused_channels(c, config.fusion) if level in self.aligned_levels else c
                      for level, c in enumerate(channels)][1:]
        self.decoder = UnetDecoder(decoder_in, config.decoder_channels)
        self.alignment = nn.ModuleList(Alignment(channels[level], config.alignment)
                                       for level in self.aligned_levels)
        self.mask_head = nn.Conv2d(self.decoder.out_channels, 1, kernel_size=1)
        self.comparison = (Comparison([channels[0]] + decoder_in, self.aligned_levels)
                           if config.comparison == "cosine" else None)
        self.freeze_encoder()

    # ------------------------------------------------------------------ encoder
    def freeze_encoder(self) -> None:
        """Make the encoder untrainable (no gradients) and put it in eval mode."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "MetaUAS":
        """`nn.Module.train`, except that the frozen encoder always stays in eval mode (its BatchNorm
        statistics never move). Returns self.
        """
        super().train(mode)
        self.encoder.eval()  # frozen backbone: BatchNorm keeps its ImageNet statistics
        return self

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features f0..f5 of images in [0,1]; accepts (B,3,H,W) or (B,K,3,H,W).

        With ``config.input_padding`` p > 0 the images are reflect-padded by p px per side before
        the encoder and every level is cropped back to the unpadded grid.

        Returns:
            six tensors, level l of shape (B,C_l,H/2**l,W/2**l) (an extra K axis for k-shot input).
        Raises:
            ValueError: not (B,3,H,W)/(B,K,3,H,W), or H, W not multiples of 32.
        """
        if images.dim() == 5:
            b, k = images.shape[:2]
            feats = self.encode(images.flatten(0, 1))
            return [f.unflatten(0, (b, k)) for f in feats]
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        if images.shape[-1] % STRIDE or images.shape[-2] % STRIDE:
            raise ValueError(f"image height and width must be multiples of {STRIDE}, got {tuple(images.shape[-2:])}")
        with torch.no_grad():
            return encode_padded(self.encoder, images, int(self.config.input_padding))

    def prepare_prompt(self, prompt: torch.Tensor) -> PromptFeatures:
        """Encode prompt(s) once; the result is reused by `forward_features` for many queries."""
        return self.prompt_from_features(self.encode(prompt))

    def prompt_from_features(self, features: list[torch.Tensor]) -> PromptFeatures:
        """Wrap encoder features of prompt(s) and compute their alignment keys (with grad)."""
        keys: list[torch.Tensor | None] = [None] * len(features)
        for align, level in zip(self.alignment, self.aligned_levels):
            if align.kind != "na":
                f = features[level]
                keys[level] = align.reduce(f.flatten(0, 1)).unflatten(0, f.shape[:2]) if f.dim() == 5 \
                    else align.reduce(f)
        return PromptFeatures(features, keys)

    # ------------------------------------------------------------------ forward
    def align_features(self, query_features: Sequence[torch.Tensor],
                       prompt: PromptFeatures) -> dict[int, torch.Tensor]:
        """Aligned prompt features {level: (B,C,h,w)} for every aligned level (Sec. 3.2)."""
        return {level: align(query_features[level], prompt.features[level], prompt.keys[level])
                for align, level in zip(self.alignment, self.aligned_levels)}

    def fuse_features(self, query_features: Sequence[torch.Tensor],
                      prompt: PromptFeatures) -> list[torch.Tensor]:
        """Decoder inputs f0..f5: query features, fused with the aligned prompt where aligned."""
        return self._fuse(query_features, self.align_features(query_features, prompt))

    def _fuse(self, query_features: Sequence[torch.Tensor], aligned: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        fused = list(query_features)
        for level, a in aligned.items():
            fused[level] = fuse(query_features[level], a, self.config.fusion)
        return fused

    def forward_features(self, query_features: Sequence[torch.Tensor], prompt: PromptFeatures) -> torch.Tensor:
        """Logits (B,1,H,W) from encoded query features and a prepared prompt.

        With ``config.comparison == "cosine"`` the decoder also receives explicit comparison
        signals (`metauas.models.comparison`); with "none" this is the paper's network.
        """
        prompt = prompt.expand_to(query_features[0].shape[0])
        aligned = self.align_features(query_features, prompt)
        fused = self._fuse(query_features, aligned)
        if self.comparison is None:
            return self.mask_head(self.decoder(fused[1:]))
        signals = self.comparison.signals(query_features, prompt.features, aligned)
        logits = self.mask_head(self.decoder(self.comparison.inject_into(fused, signals)[1:]))
        return logits + self.comparison.logit_term(signals, tuple(logits.shape[-2:]))

    def logits(self, query: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Network logits (B,1,H,W) of queries (B,3,H,W) in [0,1] against prompts (B,3,H,W),
        (1,3,H,W) or (B,K,3,H,W) in [0,1] (before temperature and patch-matching fusion).

        Raises:
            ValueError: wrong shapes or sizes not multiples of 32.
        """
        return self.forward_features(self.encode(query), self.prepare_prompt(prompt))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Anomaly map from logits: sigmoid(logits / config.temperature), values in [0, 1]."""
        t = float(self.config.temperature)
        return torch.sigmoid(logits if t == 1.0 else logits / t)

    def anomaly_map(self, query_features: Sequence[torch.Tensor], prompt: PromptFeatures) -> torch.Tensor:
        """The anomaly map (B,1,H,W) in [0,1] from encoded queries and a prepared prompt.

        ``(1 - w) * sigmoid(logits / T) + w * patchmatch`` with ``w = config.patchmatch_weight``
        (default 0: the network alone) and ``T = config.temperature``; the patch-matching map
        is `metauas.models.comparison.patchmatch_map` on the same encoder features (PatchCore's
        nearest-neighbour distance after ``config.patchmatch_neighbourhood`` averaging, Roth et
        al. 2022), so the fusion costs no extra encoder pass.

        Raises:
            ValueError: a prompt batch that cannot be broadcast to the query batch.
        """
        return self.anomaly_map_from_logits(self.forward_features(query_features, prompt), query_features, prompt)

    def anomaly_map_from_logits(self, logits: torch.Tensor, query_features: Sequence[torch.Tensor],
                                prompt: PromptFeatures) -> torch.Tensor:
        """The map rule of `anomaly_map` applied to logits already computed by `forward_features`
        for the same queries and prompt (training validation needs both, without a second pass).

        Args:
            logits: (B,1,H,W) `forward_features(query_features, prompt)`.
            query_features: `encode` of the queries, f0..f5.
            prompt: the prepared prompt the logits were computed with.
        Returns:
            (B,1,H,W) anomaly map in [0,1].
        Raises:
            ValueError: a prompt batch that cannot be broadcast to the query batch (only when
                ``patchmatch_weight > 0``).
        """
        probs = self.probabilities(logits)
        w = float(self.config.patchmatch_weight)
        if w == 0.0:
            return probs
        features = prompt.expand_to(query_features[0].shape[0]).features
        pm = patchmatch_map(query_features, features, tuple(logits.shape[-2:]),
                            neighbourhood=int(self.config.patchmatch_neighbourhood),
                            distance=self.config.patchmatch_distance).to(probs.dtype)
        return (1.0 - w) * probs + w * pm

    def forward(self, query: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Anomaly map of queries against their prompts (MetaUAS, Gao 2024, Sec. 3: encode,
        align (Eq. 1-2), fuse, decode).

        Args:
            query: (B,3,H,W) in [0,1]; H, W multiples of 32.
            prompt: (B,3,H,W) or (1,3,H,W) (one shared prompt), or (B,K,3,H,W) k-shot, in [0,1].
        Returns:
            (B,1,H,W) probabilities in [0,1] (`anomaly_map`).
        Raises:
            ValueError: wrong shapes or sizes not multiples of 32.
        """
        return self.anomaly_map(self.encode(query), self.prepare_prompt(prompt))

    # ------------------------------------------------------------------ info
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that require gradients (everything but the frozen encoder)."""
        return [p for p in self.parameters() if p.requires_grad]

    def predict(self, query_features: Sequence[torch.Tensor], prompt: PromptFeatures,
                top_fraction: float = DEFAULT_TOP_FRACTION) -> "AnomalyOutput":
        """THE predict entry point: anomaly maps and image scores of encoded queries.

        Args:
            query_features: `encode` of queries (B,3,S,S) in [0,1], S a multiple of 32.
            prompt: `prepare_prompt` of the normal image(s).
            top_fraction: share of pixels averaged into the image score (`metauas.scoring`).
        Returns:
            `AnomalyOutput`: anomaly_map (B,1,S,S) in [0,1] (`anomaly_map`), score (B,) in [0,1]
            (mean of each map's top `top_fraction` pixels).
        Raises:
            ValueError: prompt batch that cannot be broadcast to the query batch.
        """
        maps = self.anomaly_map(query_features, prompt)
        return AnomalyOutput(maps, image_scores_tensor(maps, top_fraction))

    # MetaUAS.from_pretrained(name_or_path) is attached by metauas.models.store (no import cycle)


class AnomalyOutput(NamedTuple):
    """What `MetaUAS.predict` returns: anomaly_map (B,1,H,W) in [0,1], score (B,) in [0,1]."""

    anomaly_map: torch.Tensor
    score: torch.Tensor


def image_scores_tensor(maps: torch.Tensor, top_fraction: float = DEFAULT_TOP_FRACTION) -> torch.Tensor:
    """(B,1,H,W) maps -> (B,) mean of each map's top `top_fraction` pixels (as `metauas.scoring`)."""
    return torch.as_tensor(image_scores(maps.detach().float().cpu().flatten(0, 1), top_fraction), dtype=torch.float32)


def official_metauas() -> MetaUAS:
    """The released MetaUAS configuration (B4, 3 soft alignments, cat, UNet) in eval mode.

    Its state dict has exactly the 820 entries of the official checkpoints.
    """
    return MetaUAS(ModelConfig(**asdict(OFFICIAL_CONFIG))).eval()
