"""`clap train ntp`: robot episodes + labelled videos + a frozen Act-VAE -> a CLAP-NTP artifact
(train/ntp.py says what the artifact holds)."""

from __future__ import annotations

from clap_vla.configs.ntp import NTPTrainConfig


def run(cfg: NTPTrainConfig) -> int:
    from clap_vla.train.ntp import train_ntp

    train_ntp(cfg)
    return 0
