"""AdamW with parameter groups and the warmup + cosine schedule (reference facts, Act-VAE:
warmup 1000, cosine to 0.1x; codebook lr x50 and no weight decay)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

# Parameters whose name contains one of these get no weight decay, as do all 0-D/1-D tensors
# (biases, norm scales) and learned token/positional embeddings.
NO_DECAY_KEYS = ("codebook", "norm", "bias", "register", "query", "_emb", "embed_tokens", "latents")


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_multipliers: Iterable[tuple[str, float]] = ()
) -> list[dict]:
    """One group per (lr multiplier, decay?) combination. A parameter takes the multiplier of the
    first key contained in its name."""
    mults = list(lr_multipliers)
    groups: dict[tuple[float, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = next((m for key, m in mults if key in name), 1.0)
        decay = p.ndim >= 2 and not any(k in name for k in NO_DECAY_KEYS)
        g = groups.setdefault(
            (mult, decay),
            {"params": [], "names": [], "lr_mult": mult, "weight_decay": weight_decay if decay else 0.0},
        )
        g["params"].append(p)
        g["names"].append(name)
    for g in groups.values():
        g["lr"] = lr * g["lr_mult"]
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, lr_multipliers=(), betas=(0.9, 0.95)):
    groups = param_groups(model, lr, weight_decay, lr_multipliers)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=lr, betas=betas)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine from 1 to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_mult", 1.0) * factor
    return base_lr * factor
