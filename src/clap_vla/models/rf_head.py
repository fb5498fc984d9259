"""CLAP-RF: a rectified-flow action head that reads the VLM (paper §III-E, Algorithm 4).

Time convention (pi0's, also GR00T's and the authors' release, reference facts), stated once here:

    x_t = t * eps + (1 - t) * a,      eps ~ N(0, I),  a = the clean (normalised) action chunk
    t = 1 is pure noise, t = 0 is the data; the head predicts the velocity v = dx_t/dt = eps - a
    training: t = 0.999 * Beta(1.5, 1) + 0.001 (more weight on the noisy end)
    sampling: x_1 ~ N(0, I), then N Euler steps x_{t - 1/N} = x_t - (1/N) * v(x_t, t) down to t = 0

The head is a DiT: each block is AdaLN(t)-modulated self-attention among the action tokens (plus an
optional proprioceptive state token), cross-attention to one selected VLM layer, and an MLP. The
release skips the self-attention among action tokens; we keep it (issue 7). Two context modes:

* ``kv``: the block attends to the VLM's own cached keys/values of its layer (the paper's
  description; nothing is recomputed from the VLM at inference). Queries use the VLM's head count
  and head size; grouped keys/values are repeated as the VLM does.
* ``hidden``: the block has its own K/V projections over that layer's hidden states (the release).

Block i reads VLM layer ``layers[i]``; "layer l" means the input of transformer layer l (its keys and
values are computed from it), so both modes read the same point of the residual stream. Default
layers: the early and middle thirds (Table VI: low + mid level features beat high-level only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clap_vla.errors import ConfigError

LEVELS = ("low", "mid", "high", "low+mid", "all")
TIME_MIN = 0.001  # pi0: t = 0.999 * Beta(1.5, 1) + 0.001


@dataclass(frozen=True)
class RFHeadConfig:
    width: int = 256
    heads: int = 4
    """Heads of the self-attention (and of the cross-attention in `hidden` mode)."""
    ffn_mult: int = 4
    context: Literal["kv", "hidden"] = "kv"
    """kv: attend to the VLM's cached keys/values (paper); hidden: own K/V over hidden states (release)."""
    levels: str = "low+mid"
    """Which VLM layers the blocks read when `layers` is empty: low | mid | high | low+mid | all
    (thirds of the VLM's depth; Table VI)."""
    layers: tuple[int, ...] = ()
    """Explicit VLM layer indices, one DiT block each (overrides `levels`)."""
    max_depth: int = 16
    """At most this many blocks; a longer layer list is thinned evenly (the release uses 16)."""
    state_token: bool = False
    """Add the proprioceptive state as one more token (the paper conditions on images + text)."""
    euler_steps: int = 4
    """Euler steps at inference (release: 4; pi0: 10)."""
    beta_a: float = 1.5
    beta_b: float = 1.0

    def __post_init__(self) -> None:
        if self.context not in ("kv", "hidden"):
            raise ConfigError(f"context must be kv or hidden, got {self.context!r}")
        if self.levels not in LEVELS:
            raise ConfigError(f"levels must be one of {LEVELS}, got {self.levels!r}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.euler_steps < 1 or self.max_depth < 1:
            raise ConfigError(f"euler_steps and max_depth must be >= 1, got {self.euler_steps}, {self.max_depth}")


def select_layers(cfg: RFHeadConfig, num_vlm_layers: int) -> list[int]:
    """The VLM layers the blocks read (one per block)."""
    L = num_vlm_layers
    if cfg.layers:
        bad = [x for x in cfg.layers if not 0 <= x < L]
        if bad:
            raise ConfigError(f"layers {bad} are outside the VLM's {L} layers")
        chosen = list(cfg.layers)
    else:
        a, b = math.ceil(L / 3), math.ceil(2 * L / 3)
        ranges = {"low": (0, a), "mid": (a, b), "high": (b, L), "low+mid": (0, b), "all": (0, L)}
        lo, hi = ranges[cfg.levels]
        chosen = list(range(lo, max(hi, lo + 1)))
    if len(chosen) > cfg.max_depth:
        idx = torch.linspace(0, len(chosen) - 1, cfg.max_depth).round().long().tolist()
        chosen = [chosen[i] for i in idx]
    return chosen


def sample_time(n: int, cfg: RFHeadConfig, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) flow times t = 0.999 * Beta(a, b) + 0.001 (pi0), in fp32."""
    if cfg.beta_b == 1.0:
        # Beta(a, 1) has CDF x^a, so U^(1/a) samples it (and takes a generator, unlike torch's Beta).
        t = torch.rand(n, generator=generator) ** (1.0 / cfg.beta_a)
    else:
        t = torch.distributions.Beta(torch.tensor(cfg.beta_a), torch.tensor(cfg.beta_b)).sample((n,))
    return (t * (1 - TIME_MIN) + TIME_MIN).to(device)


def seeded_noise_and_time(
    seeds: torch.Tensor, shape: tuple[int, ...], cfg: RFHeadConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training noise (B, *shape) and flow times (B,) drawn per sample from its seed (NTPBatch.
    sample_seed), on the CPU in fp32, without touching the global RNG: a sample's draw depends on
    its seed alone, not on which rank holds it or how many samples that rank has."""
    noise, t = [], []
    with torch.random.fork_rng(devices=[]):
        for s in seeds.tolist():
            torch.manual_seed(int(s))
            noise.append(torch.randn(shape))
            t.append(sample_time(1, cfg, "cpu"))
    return torch.stack(noise), torch.cat(t)


def time_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) sinusoidal features, in fp32 (times are scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], -1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class CrossAttention(nn.Module):
    """Action tokens attend to one VLM layer: its cached K/V (`kv`) or own K/V over its states (`hidden`)."""

    def __init__(self, width: int, heads: int, mode: str, vlm_width: int, vlm_heads: int, vlm_kv_heads: int,
                 vlm_head_dim: int):  # fmt: skip
        super().__init__()
        self.mode = mode
        if mode == "kv":
            self.heads, self.head_dim = vlm_heads, vlm_head_dim
            self.group = vlm_heads // vlm_kv_heads
        else:
            self.heads, self.head_dim, self.group = heads, width // heads, 1
            self.ctx_norm = nn.RMSNorm(vlm_width, eps=1e-6)
            self.kv = nn.Linear(vlm_width, 2 * width)
        self.q = nn.Linear(width, self.heads * self.head_dim)
        self.proj = nn.Linear(self.heads * self.head_dim, width)

    def forward(self, x: torch.Tensor, ctx, ctx_mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, W); ctx: (keys, values) each (B, kv_heads, T, hd) in `kv` mode, hidden states
        (B, T, E) in `hidden` mode; ctx_mask (B, T) bool, True = attend."""
        B, N, _ = x.shape
        q = self.q(x).view(B, N, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, N, hd)
        if self.mode == "kv":
            k, v = ctx
            if self.group > 1:
                k = k.repeat_interleave(self.group, 1)
                v = v.repeat_interleave(self.group, 1)
        else:
            k, v = (
                self.kv(self.ctx_norm(ctx)).view(B, ctx.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            )
        k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx_mask[:, None, None, :])  # (B, nh, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


class DiTBlock(nn.Module):
    def __init__(self, cfg: RFHeadConfig, vlm_dims: dict):
        super().__init__()
        W = cfg.width
        self.norm1 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.self_attn = nn.MultiheadAttention(W, cfg.heads, batch_first=True)
        self.norm2 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.cross = CrossAttention(W, cfg.heads, cfg.context, **vlm_dims)
        self.norm3 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(W, cfg.ffn_mult * W), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_mult * W, W)
        )
        # AdaLN-Zero (DiT): shift, scale, gate for each of the three sublayers, gates start at 0.
        self.ada = nn.Linear(W, 9 * W)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c, ctx, ctx_mask):
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.ada(F.silu(c)).chunk(9, -1)
        h = modulate(self.norm1(x), s1, sc1)
        x = x + g1[:, None] * self.self_attn(h, h, h, need_weights=False)[0]
        x = x + g2[:, None] * self.cross(modulate(self.norm2(x), s2, sc2), ctx, ctx_mask)
        return x + g3[:, None] * self.mlp(modulate(self.norm3(x), s3, sc3))


class RFHead(nn.Module):
    """Velocity field v(x_t, t | VLM context) over an action chunk (H, A*D)."""

    def __init__(self, cfg: RFHeadConfig, horizon: int, action_dim: int, vlm_layers: list[int], vlm_dims: dict):
        super().__init__()
        self.cfg, self.horizon, self.action_dim, self.vlm_layers = cfg, horizon, action_dim, list(vlm_layers)
        W = cfg.width
        self.inp = nn.Linear(action_dim, W)
        self.pos = nn.Parameter(torch.randn(1, horizon, W) * 0.02)
        self.state_proj = nn.Linear(action_dim, W) if cfg.state_token else None
        self.time_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList(DiTBlock(cfg, vlm_dims) for _ in self.vlm_layers)
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(W, 2 * W)
        self.out = nn.Linear(W, action_dim)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, contexts: list, ctx_mask: torch.Tensor,
                state: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """x_t (B, H, A*D), t (B,), one context per block (see CrossAttention), ctx_mask (B, T) ->
        velocity (B, H, A*D)."""
        if len(contexts) != len(self.blocks):
            raise ValueError(f"{len(contexts)} contexts for {len(self.blocks)} blocks")
        c = self.time_mlp(time_embedding(t, self.cfg.width).to(x_t.dtype))  # (B, W)
        h = self.inp(x_t) + self.pos  # (B, H, W)
        if self.state_proj is not None:
            if state is None:
                raise ValueError("this head was built with a state token; pass the state")
            h = torch.cat([self.state_proj(state)[:, None], h], 1)
        for blk, ctx in zip(self.blocks, contexts, strict=True):
            h = blk(h, c, ctx, ctx_mask)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, -1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return h[:, -self.horizon :]


def euler_sample(velocity, x1: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 1 (noise x1) to t = 0 with `steps` Euler steps."""
    x, dt = x1, 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), 1.0 - k * dt, device=x.device)
        x = x - dt * velocity(x, t)
    return x


__all__ = ["LEVELS", "RFHead", "RFHeadConfig", "euler_sample", "sample_time", "select_layers", "time_embedding"]
