"""Photometric augmentations of the VD-VAE student (reference facts, release stage 2).

The student branch sees augmented frames while the EMA teacher sees the clean transition (paper
Algorithm 2 line 9), so the action latents must ignore lighting and sensor noise. Per image, in
this order (torchvision's ColorJitter conventions, clamped to [0, 1] after every step):

    brightness  x * b,                         b ~ U(1 - 0.2, 1 + 0.2)
    contrast    (x - m) * c + m,               c ~ U(1 - 0.2, 1 + 0.2), m = mean luma of the image
    grayscale   luma replicated to RGB,         with probability 0.1 (ITU-R 601 weights)
    noise       x + 0.02 * N(0, 1),             sigma on the [0, 1] scale

Each image draws its parameters from a generator seeded with its own seed, so an image's result
depends only on (pixels, seed, config) — not on the batch it arrives in or its position there.
The feature cache uses this to store augmented views that training can reproduce exactly.

Per-clip augmentation (the release's: one draw for a whole clip, so both frames of a transition
get the same brightness, contrast and grayscale) passes the clip's seed as `seeds` for both frames
and a seed per frame as `noise_seeds`: the parameters are shared, the sensor noise is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clap_vla.errors import ConfigError

LUMA_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class AugmentConfig:
    brightness: float = 0.2
    """Brightness factor ~ U(1 - brightness, 1 + brightness)."""
    contrast: float = 0.2
    """Contrast factor ~ U(1 - contrast, 1 + contrast), around the image's mean luma."""
    grayscale_p: float = 0.1
    """Probability of converting the image to grayscale (kept as 3 equal channels)."""
    noise_std: float = 0.02
    """Std of additive Gaussian noise on the [0, 1] pixel scale."""

    def __post_init__(self) -> None:
        for field in ("brightness", "contrast"):
            v = getattr(self, field)
            if not 0 <= v < 1:
                raise ConfigError(f"AugmentConfig.{field} must be in [0, 1) so the factor stays positive, got {v}")
        if not 0 <= self.grayscale_p <= 1:
            raise ConfigError(f"AugmentConfig.grayscale_p must be in [0, 1], got {self.grayscale_p}")
        if not self.noise_std >= 0:
            raise ConfigError(f"AugmentConfig.noise_std must be >= 0, got {self.noise_std}")


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 1, h, w)."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def augment_frames(
    images: torch.Tensor,
    seeds: np.ndarray | torch.Tensor,
    config: AugmentConfig | None = None,
    noise_seeds: np.ndarray | None = None,
) -> torch.Tensor:
    """uint8 (N, 3, h, w), int64 seeds (N,) -> augmented uint8 (N, 3, h, w) on the images' device.
    `noise_seeds` (N,), when given, seed the noise apart from the parameters (per-clip augmentation)."""
    cfg = config or AugmentConfig()
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"augment_frames expects uint8 images (N, 3, h, w), got {images.dtype} {tuple(images.shape)}")
    seeds = np.asarray(seeds.cpu() if isinstance(seeds, torch.Tensor) else seeds)
    if seeds.shape != (images.shape[0],) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(
            f"augment_frames needs one integer seed per image: seeds {seeds.dtype} {seeds.shape} "
            f"for {images.shape[0]} images"
        )
    if noise_seeds is not None:
        noise_seeds = np.asarray(noise_seeds)
        if noise_seeds.shape != seeds.shape or not np.issubdtype(noise_seeds.dtype, np.integer):
            raise ValueError(f"augment_frames: noise_seeds {noise_seeds.dtype} {noise_seeds.shape} must match seeds")
    n, _, h, w = images.shape
    b = torch.empty(n)
    c = torch.empty(n)
    gray = torch.empty(n, dtype=torch.bool)
    noise = torch.empty(n, 3, h, w)
    for i, s in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed(s & _U64)  # negative seeds map into the uint64 range
        u = torch.rand(3, generator=g)  # fixed draw order: brightness, contrast, grayscale, noise
        b[i] = 1 + cfg.brightness * (2 * u[0] - 1)
        c[i] = 1 + cfg.contrast * (2 * u[1] - 1)
        gray[i] = u[2] < cfg.grayscale_p
        if noise_seeds is not None:
            g = torch.Generator().manual_seed(int(noise_seeds[i]) & _U64)
        noise[i] = torch.randn(3, h, w, generator=g)
    dev = images.device
    b, c, gray = b.to(dev).view(n, 1, 1, 1), c.to(dev).view(n, 1, 1, 1), gray.to(dev).view(n, 1, 1, 1)
    x = images.float() / 255  # (N, 3, h, w)
    x = (x * b).clamp_(0, 1)
    m = _luma(x).mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
    x = ((x - m) * c + m).clamp_(0, 1)
    x = torch.where(gray, _luma(x).expand(-1, 3, -1, -1), x)
    x = (x + cfg.noise_std * noise.to(dev)).clamp_(0, 1)
    return (x * 255).round_().to(torch.uint8)
