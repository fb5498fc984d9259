"""AdamW with parameter groups and the warmup-constant-cosine schedule (reference facts, Act-VAE:
warmup 1000, cosine to 0.1x; codebook lr x50 and no weight decay; paper §IV-C1 / Table IX, CLAP-NTP:
warmup 1000, constant, cosine after 100k to 0.1x)."""

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


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, decay_start: int = 0) -> float:
    """Multiplier of the peak lr at 0-based `step` of a `total`-step run: linear warmup from
    1/warmup to 1 over the first `warmup` steps, constant 1 until `decay_start`, then half a cosine
    from 1 down to `min_ratio` at `total`.

    decay_start 0 starts the decay where warmup ends (warmup + cosine, the default). min_ratio 1 is
    no decay (Table IX, post-training stage 1). Paper §IV-C1 / Table IX, CLAP-NTP: warmup 1000,
    decay_start 100k, total 150k, min_ratio 5e-6 / 5e-5 = 0.1. A pure function of the step, so a
    resumed run continues the same schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    start = max(warmup, decay_start)
    if total <= start or step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, total - start))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_mult", 1.0) * factor
    return base_lr * factor
