"""UNet decoder with SCSE attention (Ronneberger 2015; Roy et al., MICCAI 2018).

Layout and parameter names match the official MetaUAS decoder (shared/official/spec.md §4):
each block upsamples x2 (nearest), concatenates the skip, applies SCSE to the concatenation,
two conv3x3-BN-ReLU, then SCSE on the output. Blocks without a skip have no attention.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 64, 48)


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation: x*cSE(x) + x*sSE(x)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.cSE = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.sSE = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * cSE(x) + x * sSE(x) (Roy et al., MICCAI 2018); (B,C,H,W) -> (B,C,H,W)."""
        return x * self.cSE(x) + x * self.sSE(x)


class Attention(nn.Module):
    """Wrapper kept so parameter names read `attention1.attention.cSE...` as in the checkpoints."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = SCSE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SCSE of x; (B,C,H,W) -> (B,C,H,W)."""
        return self.attention(x)


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias) -> BatchNorm -> ReLU, from `in_ch` to `out_ch`
    channels; keeps the spatial size.
    """
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """One UNet decoder block (Ronneberger 2015) with SCSE attention (Roy et al. 2018).

    Upsample x2 (nearest), concatenate the skip, SCSE, two conv3x3-BN-ReLU, SCSE. A block
    without a skip (``skip_ch == 0``, the last one) has no attention.

    Args:
        in_ch: channels of the input from the deeper block.
        skip_ch: channels of the skip features (0: none).
        out_ch: output channels.
    """
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.has_skip = skip_ch > 0
        # registration order = checkpoint order: conv1, attention1, conv2, attention2
        self.conv1 = conv_bn_relu(in_ch + skip_ch, out_ch)
        self.attention1 = Attention(in_ch + skip_ch) if self.has_skip else nn.Identity()
        self.conv2 = conv_bn_relu(out_ch, out_ch)
        self.attention2 = Attention(out_ch) if self.has_skip else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """(B,in_ch,h,w) and skip (B,skip_ch,2h,2w) or None -> (B,out_ch,2h,2w)."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        x = self.conv2(self.conv1(x))
        return self.attention2(x)


class UnetDecoder(nn.Module):
    """Decodes [f1..f5] (fused where aligned), deepest first, back to full resolution.

    `feature_channels` are the channels of f1..f5 as the decoder receives them.
    """

    def __init__(self, feature_channels: Sequence[int],
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS) -> None:
        super().__init__()
        if len(feature_channels) != 5 or len(decoder_channels) != 5:
            raise ValueError("the UNet decoder expects 5 encoder levels and 5 decoder widths")
        head = feature_channels[-1]
        skips = list(reversed(feature_channels[:-1])) + [0]  # f4, f3, f2, f1, none
        ins = [head] + list(decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels)
        )
        self.out_channels = decoder_channels[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features = [f1, ..., f5]."""
        x = features[-1]
        skips = list(reversed(features[:-1])) + [None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x

    def forward_with_intermediates(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Like `forward`, but returns every block's output, coarsest first.

        Args:
            features: [f1, ..., f5], f_l of shape (B,C_l,H/2**l,W/2**l).
        Returns:
            five tensors, block i of shape (B,decoder_channels[i],H/2**(4-i),W/2**(4-i)); the last
            is `forward`'s output.
        """
        x = features[-1]
        outputs = []
        for block, skip in zip(self.blocks, list(reversed(features[:-1])) + [None]):
            x = block(x, skip)
            outputs.append(x)
        return outputs
