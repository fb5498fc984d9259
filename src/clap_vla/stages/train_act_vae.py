"""`clap train act-vae`: action chunks of robot datasets -> an Act-VAE artifact (train/act_vae.py)."""

from __future__ import annotations

from clap_vla.configs.act_vae import ActVAETrainConfig


def run(cfg: ActVAETrainConfig) -> int:
    from clap_vla.train.act_vae import train_act_vae

    train_act_vae(cfg)
    return 0
