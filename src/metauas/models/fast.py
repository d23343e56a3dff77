"""Inference-only rewrites of a MetaUAS model that compute the same function faster.

`optimize_for_inference(model)` returns a *copy* (the original keeps training / checkpoint
layout) with these exact-maths rewrites, each of which changes only float rounding:

* BatchNorm folding (Ioffe & Szegedy 2015; the standard inference rewrite): in eval mode
  `BN(conv(x)) = conv'(x)` with `w' = w * g/sqrt(v+eps)` and `b' = beta + (b - m) * g/sqrt(v+eps)`.
  Folded in float64, stored in float32. Removes one full read+write of every activation per BN.
* SCSE as one product: `x*cSE(x) + x*sSE(x) = x * (cSE(x) + sSE(x))` (Roy et al. 2018),
  one full-resolution multiply instead of two plus an add.
* Nearest-x2-upsample + 3x3 conv -> four 2x2 convolutions on the low-resolution map
  (sub-pixel decomposition, Shi et al. CVPR 2016 / Odena et al. 2016 "checkerboard"): after
  nearest upsampling each output pixel parity sees only 2x2 distinct source pixels, so the
  3x3 taps that read the same source pixel can be summed beforehand. Used for the last UNet
  block, which has no skip connection (2.25x fewer multiply-adds in its largest conv).
* 1x1 convolutions on pooled (B,C,1,1) maps (squeeze-excite gates of the encoder and of
  SCSE) as matrix-vector products: same sums, without the convolution call overhead.
* In-place activations, squeeze-excite gating and residual adds in the encoder blocks and
  in-place SCSE products: after folding, each of these acts on a fresh tensor that nothing
  else reads, so overwriting it is safe and saves an allocation and a memory pass.
* Convolution weights pre-packed once into oneDNN's blocked layout, with the following
  activation (SiLU / ReLU / ReLU6) fused into the convolution; eager PyTorch re-lays-out the
  weights on every call (measured: 17.4 -> 10.8 ms for the 1216->256 3x3 conv at 16x16).
  This uses the `torch.ops.mkldnn._convolution_pointwise` kernels that torch.compile's CPU
  backend uses; they are self-checked against F.conv2d once and skipped when unavailable.
* channels_last memory format, which oneDNN convolutions run faster on CPUs.
* Soft-alignment attention without subnormal numbers: scores more than 64 below their row
  maximum are raised to max - 64 before the softmax. Their weights were < e^-64 ~ 1.6e-28 and
  stay < 1.6e-28, but are no longer subnormal floats, which x86 CPUs process up to ~30x slower
  (measured: a 1024x1024 @ 1024x56 product took 34 ms instead of 1.2 ms on peaked attention).

The parity checks in tests/test_models.py and benchmarks/speed.py compare the optimized copy
with the eager official-style forward pass (max |diff| of the probabilities <= 1e-4).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from metauas.models.alignment import Alignment
from metauas.models.decoder import SCSE, Attention, DecoderBlock
from metauas.models.efficientnet import EfficientNet, MBConvBlock, SameConv2d, tf_same_padding
from metauas.models.metauas import MetaUAS

# (conv attribute, batch-norm attribute) pairs whose forward is bn(conv(x)), per module type.
_CONV_BN_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    EfficientNet: (("_conv_stem", "_bn0"), ("_conv_head", "_bn1")),
    MBConvBlock: (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")),
}


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make `conv` compute bn(conv(x)) in eval mode (statistics frozen)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    dtype = conv.weight.dtype
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(shift.to(dtype), requires_grad=False)


def _fold_module(module: nn.Module) -> int:
    folded = 0
    for kind, pairs in _CONV_BN_PAIRS.items():
        if isinstance(module, kind):
            for conv_name, bn_name in pairs:
                conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    _fold_into(conv, bn)
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    if isinstance(module, nn.Sequential):  # decoder conv -> BN -> ReLU
        items = list(module)
        for i in range(len(items) - 1):
            if isinstance(items[i], nn.Conv2d) and isinstance(items[i + 1], nn.BatchNorm2d):
                _fold_into(items[i], items[i + 1])
                module[i + 1] = nn.Identity()
                folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with every conv->BatchNorm pair folded into the conv."""
    folded_model = copy.deepcopy(model).eval()
    for module in list(folded_model.modules()):
        _fold_module(module)
    return folded_model


class FusedSCSE(nn.Module):
    """SCSE computed as x * (cSE(x) + sSE(x)), in place; shares the original's convolutions.

    Only used where x is a temporary (the concatenation, or a conv-BN-ReLU output).
    """

    def __init__(self, scse: SCSE) -> None:
        super().__init__()
        self.cSE = scse.cSE
        self.sSE = scse.sSE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * (cSE(x) + sSE(x)), overwriting x; (B,C,H,W) -> (B,C,H,W)."""
        return x.mul_(self.cSE(x) + self.sSE(x))


_PACKED_OK: bool | None = None
# activation name -> (oneDNN post-op, scalars, eager equivalent)
_POST_OPS = {
    None: ("none", [], lambda y: y),
    "silu": ("swish", [], lambda y: F.silu(y, inplace=True)),
    "relu": ("relu", [], lambda y: F.relu(y, inplace=True)),
    "relu6": ("hardtanh", [0.0, 6.0], lambda y: F.hardtanh(y, 0.0, 6.0, inplace=True)),
}


def packed_convolutions_available() -> bool:
    """Whether oneDNN pre-packed convolutions exist here and agree with F.conv2d (checked once)."""
    global _PACKED_OK
    if _PACKED_OK is None:
        try:
            ok = torch.backends.mkldnn.is_available()
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, 8, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
            for groups in (1, 8):
                conv = PackedConv2d(torch.randn(8, 8 // groups, 3, 3, generator=g), torch.randn(8, generator=g),
                                    padding=(1, 1), groups=groups)
                for act in _POST_OPS:
                    conv.activation = act
                    expected = _POST_OPS[act][2](F.conv2d(x, conv.weight, conv.bias, padding=1, groups=groups))
                    got = conv._packed_forward(x)
                    ok = ok and got.shape == expected.shape and float((got - expected).abs().max()) < 1e-5
        except (RuntimeError, AttributeError, NotImplementedError):
            ok = False
        _PACKED_OK = bool(ok)
    return _PACKED_OK


class PackedConv2d(nn.Module):
    """A convolution (+ optional fused activation) running on weights packed once for oneDNN.

    Falls back to F.conv2d + activation for inputs the packed kernel does not take (not CPU,
    not float32, gradients wanted) or when packed kernels are unavailable. The packed weight
    works for any input size and batch (checked in tests); it is cached, not saved.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, same_pad: bool = False, activation: str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.same_pad = same_pad  # TF "same" padding computed from the input size (stride > 1)
        self.activation = activation
        self._packed: tuple | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str | None = None) -> "PackedConv2d":
        """A packed copy of `conv` (weights shared), optionally with a fused activation.

        Raises:
            ValueError: `conv` uses string padding.
        """
        if not isinstance(conv.padding, tuple):
            raise ValueError("string padding is not supported")
        same_pad = isinstance(conv, SameConv2d) and conv.stride[0] > 1
        return cls(conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                   same_pad, activation)

    def __getstate__(self) -> dict:  # deepcopy / pickle: drop the packed cache
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_packed"] = None
        return state

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same_pad:
            return x
        kh, kw = self.weight.shape[-2:]
        top, bottom = tf_same_padding(x.shape[-2], kh, self.stride[0])
        left, right = tf_same_padding(x.shape[-1], kw, self.stride[1])
        return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight.device, self.weight.dtype)
        if self._packed is None or self._packed[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.contiguous(), self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            self._packed = (key, packed)
        attr, scalars, _ = _POST_OPS[self.activation]
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last), self._packed[1], self.bias, self.padding,
            self.stride, self.dilation, self.groups, attr, scalars, "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution (plus activation): oneDNN packed weights for float32 CPU inference, else
        `F.conv2d`; same shapes as the wrapped `nn.Conv2d`.
        """
        x = self._pad(x)
        if (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and not (torch.is_grad_enabled() and x.requires_grad) and packed_convolutions_available()):
            return self._packed_forward(x)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return _POST_OPS[self.activation][2](y)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _act_name(act) -> str | None:
    return {F.silu: "silu", F.relu6: "relu6"}.get(act)


def _inplace(act):
    if act is F.silu:
        return lambda x: F.silu(x, inplace=True)
    if act is F.relu6:
        return lambda x: F.relu6(x, inplace=True)
    return act


class FastMBConv(nn.Module):
    """MBConv forward of a BN-folded block with in-place activation, gating and skip add."""

    def __init__(self, block: MBConvBlock, pack: bool = False) -> None:
        super().__init__()
        if any(isinstance(m, nn.BatchNorm2d) for m in block.children()):
            raise ValueError("fold BatchNorm before building FastMBConv")
        self.expand = block.expand
        name = _act_name(block.act)
        fuse = pack and name is not None
        wrap = (lambda conv: PackedConv2d.from_conv(conv, name)) if fuse else (lambda conv: conv)
        if block.expand != 1:
            self._expand_conv = wrap(block._expand_conv)
        self._depthwise_conv = wrap(block._depthwise_conv)
        self.has_se = block.has_se
        if block.has_se:
            self._se_reduce = block._se_reduce
            self._se_expand = block._se_expand
        self._project_conv = block._project_conv
        self.use_skip = block.use_skip
        self.act = block.act
        self.act_ = _inplace(block.act)
        self.conv_act = _identity if fuse else self.act_  # activation after expand/depthwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped MBConv block (BatchNorm folded, in place): same shapes and values within float rounding."""
        y = self.conv_act(self._expand_conv(x)) if self.expand != 1 else x
        y = self.conv_act(self._depthwise_conv(y))  # a fresh tensor even when expand == 1
        if self.has_se:
            gate = self._se_expand(self.act_(self._se_reduce(y.mean(dim=(2, 3), keepdim=True))))
            y = y.mul_(gate.sigmoid_())
        y = self._project_conv(y)
        return y.add_(x) if self.use_skip else y


class UpsampleConv3x3(nn.Module):
    """conv3x3(pad 1)(nearest_upsample_x2(x)) computed as four 2x2 convs on x.

    For output row parity a the 3x3 rows (r0, r1, r2) read source rows
    a=0: (i-1, i, i) -> taps [r0, r1+r2] on rows (i-1, i);  a=1: (i, i, i+1) -> [r0+r1, r2] on (i, i+1).
    The same holds for columns; zero padding of x by one pixel reproduces the zero padding of
    the upsampled map.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) \
                or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("UpsampleConv3x3 needs a plain 3x3 stride-1 padding-1 convolution")
        w = conv.weight.detach().double()  # (O, I, 3, 3)
        rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], dim=2),  # parity 0
                torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], dim=2)]  # parity 1, (O,I,2,3)
        phases = []
        for a in (0, 1):
            r = rows[a]
            cols = [torch.stack([r[..., 0], r[..., 1] + r[..., 2]], dim=-1),
                    torch.stack([r[..., 0] + r[..., 1], r[..., 2]], dim=-1)]
            phases.extend(cols)  # order (a, b): (0,0), (0,1), (1,0), (1,1)
        self.out_channels = conv.out_channels
        self.conv = nn.Conv2d(conv.in_channels, 4 * conv.out_channels, 2, bias=True)  # phases (a, c) stacked
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat(phases, dim=0))
            self.conv.bias.copy_(bias.repeat(4))
        self.conv.requires_grad_(False)

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """Optionally applies ReLU while interleaving the phases (one pass instead of two)."""
        b, _, h, w = x.shape
        o = self.out_channels
        y = self.conv(F.pad(x, (1, 1, 1, 1)))  # (B, 4*O, h+1, w+1)
        y = y.contiguous(memory_format=torch.channels_last)  # memory order [b][i][j][phase][o]
        # Output pixel (2i+a, 2j+c), channel k, is y[b, (2a+c)*O + k, i+a, j+c]: an affine
        # function of (i, a, j, c, k), so the interleaved map is a strided view of y.
        sb, _, si, sj = y.stride()
        view = y.as_strided((b, h, 2, w, 2, o), (sb, si, si + 2 * o, sj, sj + o, 1), y.storage_offset())
        out = y.new_empty((b, h, 2, w, 2, o))
        if relu:
            torch.clamp_min(view, 0.0, out=out)
        else:
            out.copy_(view)
        return out.view(b, 2 * h, 2 * w, o).permute(0, 3, 1, 2)  # (B, O, 2h, 2w), channels_last


class FastFinalBlock(nn.Module):
    """A skip-less UNet block (upsample, conv-BN-ReLU x2) with the upsample folded into conv1."""

    def __init__(self, block: DecoderBlock) -> None:
        super().__init__()
        conv1, rest1 = block.conv1[0], block.conv1[1:]
        if any(isinstance(m, nn.BatchNorm2d) for m in rest1):
            raise ValueError("fold BatchNorm before building FastFinalBlock")
        self.up_conv = UpsampleConv3x3(conv1)
        self.rest1 = rest1
        layers = [m for m in rest1 if not isinstance(m, nn.Identity)]
        self.relu_first = len(layers) == 1 and isinstance(layers[0], nn.ReLU)
        self.conv2 = block.conv2
        self.attention2 = block.attention2

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """The last UNet block: (B,C,h,w) -> (B,out,2h,2w); `skip` is unused (the block has none)."""
        if self.relu_first:  # conv1 -> (folded BN) -> ReLU: apply the ReLU while interleaving
            y = self.up_conv(x, relu=True)
        else:
            y = self.rest1(self.up_conv(x))
        return self.attention2(self.conv2(y))


class PooledLinear(nn.Module):
    """A 1x1 convolution applied to globally pooled (B,C,1,1) features, as F.linear."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or conv.padding != (0, 0):
            raise ValueError("PooledLinear needs a plain 1x1 convolution")
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,1,1) -> (B,O,1,1) as a matrix product; other spatial sizes fall back to a 1x1 conv."""
        if x.shape[-2:] != (1, 1):
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        return F.linear(x.flatten(1), self.weight, self.bias)[:, :, None, None]


def _pooled_convs_to_linear(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, MBConvBlock) and module.has_se:
            module._se_reduce = PooledLinear(module._se_reduce)
            module._se_expand = PooledLinear(module._se_expand)
        if isinstance(module, SCSE):
            for i in (1, 3):  # cSE = pool, conv, ReLU, conv, sigmoid
                if isinstance(module.cSE[i], nn.Conv2d):
                    module.cSE[i] = PooledLinear(module.cSE[i])


# exp(-64) / 16384 positions ~ 1e-32: far above float32's smallest normal number (1.2e-38).
SCORE_FLOOR = 64.0


class FastAlignment(Alignment):
    """Soft alignment whose softmax never produces subnormal weights (same result to ~1e-28)."""

    @classmethod
    def from_alignment(cls, align: Alignment) -> "FastAlignment":
        """An inference alignment that shares `align`'s layers."""
        channels = align.alignment_layer.dimensionality_reduction.in_channels if align.kind != "na" else 2
        fast = cls(channels, align.kind, align.chunk_size)  # type: ignore[arg-type]
        if align.kind != "na":
            fast.alignment_layer = align.alignment_layer
        return fast

    def _align_one(self, query: torch.Tensor, prompt: torch.Tensor,
                   prompt_keys: torch.Tensor | None) -> torch.Tensor:
        """Same maths as Alignment._align_one, on position-major (channels_last) views, so no
        layout copies are needed and the result comes out channels_last for the decoder."""
        if self.kind == "na":
            return super()._align_one(query, prompt, prompt_keys)
        b, c, h, w = query.shape

        def rows(t: torch.Tensor) -> torch.Tensor:  # (B,C,h,w) -> (B, h*w, C); a view if channels_last
            return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])

        q = rows(self.reduce(query))  # (B, hw, d)
        k = rows(self.reduce(prompt) if prompt_keys is None else prompt_keys).transpose(1, 2)  # (B, d, n)
        v = rows(prompt)  # (B, n, C)
        chunks = [self._attend(q_part, k, v) for q_part in q.split(self.chunk_size, dim=1)]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)  # (B, hw, C)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.kind == "ha" and not torch.is_grad_enabled():  # argmax match, no softmax needed
            index = torch.bmm(q, k).argmax(dim=-1, keepdim=True)
            return torch.gather(v, 1, index.expand(-1, -1, v.shape[-1]))
        if self.kind != "sa":
            return super()._attend(q, k, v)
        scores = torch.bmm(q, k)
        scores = scores.clamp_(min=scores.amax(dim=-1, keepdim=True) - SCORE_FLOOR)
        return torch.bmm(torch.softmax(scores, dim=-1), v)


def _pack_convolutions(fast: MetaUAS) -> None:
    """Fuse ReLU/SiLU into the convolution before them, then pack every remaining conv."""
    encoder = fast.encoder
    name = _act_name(encoder.act)
    if name is not None:  # stem conv -> (folded BN) -> activation
        encoder._conv_stem = PackedConv2d.from_conv(encoder._conv_stem, name)
        encoder.act = _identity
    for module in fast.decoder.modules():  # conv -> (folded BN) -> ReLU
        if isinstance(module, nn.Sequential):
            layers = list(module)
            real = [(i, m) for i, m in enumerate(layers) if not isinstance(m, nn.Identity)]
            for (i, conv), (j, act) in zip(real, real[1:]):
                if type(conv) is nn.Conv2d and isinstance(act, nn.ReLU):
                    module[i] = PackedConv2d.from_conv(conv, "relu")
                    module[j] = nn.Identity()

    def replace(parent: nn.Module) -> None:
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, PackedConv2d.from_conv(child))
            elif not isinstance(child, PackedConv2d):
                replace(child)

    replace(fast)


def optimize_for_inference(model: MetaUAS, channels_last: bool = True, subpixel: bool = True,
                           fuse_scse: bool = True, pack: bool = True) -> MetaUAS:
    """An eval-mode copy of `model` with the rewrites above; the original is left untouched.

    The copy is for inference only (its parameters do not require gradients and its state
    dict no longer has BatchNorm entries); use the original model for training and saving.
    """
    fast = fold_batchnorm(model)
    assert isinstance(fast, MetaUAS)
    _pooled_convs_to_linear(fast)
    pack = pack and packed_convolutions_available()
    blocks = fast.encoder._blocks
    for i, block in enumerate(blocks):
        if isinstance(block, MBConvBlock):
            blocks[i] = FastMBConv(block, pack=pack)
    if fuse_scse:
        for module in fast.modules():
            if isinstance(module, Attention) and isinstance(module.attention, SCSE):
                module.attention = FusedSCSE(module.attention)
    for i, align in enumerate(fast.alignment):
        fast.alignment[i] = FastAlignment.from_alignment(align)
    if subpixel:
        blocks = fast.decoder.blocks
        for i, block in enumerate(blocks):
            if isinstance(block, DecoderBlock) and not block.has_skip:
                blocks[i] = FastFinalBlock(block)
    if pack:
        _pack_convolutions(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    fast.eval()
    fast.optimized_for_inference = True  # type: ignore[attr-defined]
    fast.prefers_channels_last = channels_last  # type: ignore[attr-defined]
    fast.packed_convolutions = pack  # type: ignore[attr-defined]
    return fast


def prepare_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Put an input batch in the memory format the (optimized) model prefers."""
    if getattr(model, "prefers_channels_last", False) and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images
