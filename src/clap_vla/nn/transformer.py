"""Pre-norm transformer blocks and a stack with U-Net-style long skips.

The Act-VAE release uses 15-layer stacks "with U-Net-style skip connections" (reference facts):
the output of layer i of the first half is concatenated to the input of the mirrored layer
L-1-i of the second half and projected back to the width (as in U-ViT), which shortens the
gradient path through deep stacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, W = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, N, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, nh, N, hs)
        return self.proj(y.transpose(1, 2).reshape(B, N, W))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class SkipTransformer(nn.Module):
    """`depth` blocks; with `skips`, block L-1-i of the second half also reads block i's output."""

    def __init__(self, width: int, depth: int, heads: int, ffn: int, skips: bool = True, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, ffn, dropout) for _ in range(depth))
        self.n_skip = depth // 2 if skips else 0
        # Zero-initialised skip projections start as identity on the main path (`x + W [x; skip]`).
        self.skip_proj = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(self.n_skip))
        for p in self.skip_proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth, saved = len(self.blocks), []
        for i, block in enumerate(self.blocks):
            j = i - (depth - self.n_skip)  # index into the second half's skips
            if j >= 0:
                skip = saved[self.n_skip - 1 - j]
                x = x + self.skip_proj[j](torch.cat([x, skip], dim=-1))
            x = block(x)
            if i < self.n_skip:
                saved.append(x)
        return self.norm(x)
