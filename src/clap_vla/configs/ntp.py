"""Configs of `clap train ntp` and `clap eval ntp`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clap_vla.configs.vd_vae import FeatureConfig
from clap_vla.errors import ConfigError
from clap_vla.models.ntp_policy import NTPConfig
from clap_vla.nn.vlm import VLMConfig
from clap_vla.train.loop import TrainConfig


@dataclass(frozen=True)
class NTPTrainConfig:
    """Train CLAP-NTP on robot episodes (true Act-VAE tokens) and labelled videos (pseudo tokens)."""

    act_vae: Path | None = None
    """Act-VAE artifact whose codebook the action tokens index. Required unless --init is given."""
    init: Path | None = None
    """Start from this CLAP-NTP artifact (weights, tokenizer, architecture; its Act-VAE by default)
    instead of a fresh backbone: NTP adaptation, post-training stage 1 (Algorithm 4)."""
    robot_data: tuple[Path, ...] = ()
    """Robot datasets; their chunks are tokenised by the Act-VAE at start-up."""
    video_tokens: tuple[Path, ...] = ()
    """Token shards of action-free videos (`clap label --vd-vae ...`); each names its dataset."""
    weights: tuple[float, ...] = ()
    """Mixture weight per robot dataset then per token shard; default: proportional to size."""
    out: Path = Path("outputs/ntp")
    model: NTPConfig = field(default_factory=NTPConfig)
    features: FeatureConfig = field(default_factory=lambda: FeatureConfig(augment_views=0))
    """Frozen frame features the Llama builds read (ignored by Qwen3-VL, which reads pixels)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    holdout_every: int = 10
    """Every n-th episode of each dataset is held out for evaluation."""
    eval_samples: int = 512
    """Held-out robot samples for teacher-forced token accuracy at each evaluation."""
    eval_generate: int = 32
    """Of those, how many are also decoded free-running (greedy, constrained)."""
    resume: bool = False
    """Continue the run in `out` from its last checkpoint, on the same schedule."""

    def __post_init__(self) -> None:
        if self.holdout_every < 2:
            raise ConfigError(f"holdout_every must be >= 2, got {self.holdout_every}")
        if self.eval_samples < 1 or self.eval_generate < 0:
            raise ConfigError(
                f"need eval_samples >= 1 and eval_generate >= 0, got {self.eval_samples}, {self.eval_generate}"
            )


def _model(name: str, layers: int | None = None, tokenizer: str = "smollm2") -> NTPConfig:
    return NTPConfig(vlm=VLMConfig(name=name, layers=layers, tokenizer=tokenizer))


def _train(**kw) -> TrainConfig:
    return TrainConfig(weight_decay=0.01, grad_clip=1.0, **kw)


NTP_TRAIN_PRESETS: dict[str, NTPTrainConfig] = {
    # Paper §IV-C1 / Table IX: Qwen3-VL-4B, 150k steps of 512, peak lr 5e-5 after a 1000-step linear
    # warmup, constant until 100k, then cosine decay to 5e-6 (= 0.1x) at 150k (needs GPUs and a local
    # copy of the weights).
    "ntp_paper": NTPTrainConfig(
        out=Path("outputs/ntp_paper"),
        model=_model("qwen3-vl:Qwen/Qwen3-VL-4B-Instruct"),
        train=_train(
            steps=150_000,
            batch_size=512,
            lr=5e-5,
            warmup_steps=1000,
            decay_start=100_000,
            min_lr_ratio=0.1,
            precision="auto",
            log_every=50,
            eval_every=5000,
            checkpoint_every=2000,
        ),
    ),
    # Pretrained SmolLM2-135M cut to its first 8 layers: the smallest pretrained LM we can ship.
    "ntp_smollm2": NTPTrainConfig(
        out=Path("outputs/ntp_smollm2"),
        model=_model("smollm2-135m", layers=8),
        train=_train(
            steps=4000,
            batch_size=32,
            lr=2e-4,
            warmup_steps=200,
            precision="auto",
            log_every=50,
            eval_every=500,
            checkpoint_every=250,
        ),
    ),
    # The CPU preset: a 4-layer, 256-wide Llama from scratch on frozen EfficientNet-lite0 features,
    # with a vocabulary fitted to the data's text (see nn/vlm.py, corpus_tokenizer).
    "ntp_small": NTPTrainConfig(
        out=Path("outputs/ntp_small"),
        model=_model("small", tokenizer="corpus"),
        train=_train(
            steps=4000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=200,
            precision="auto",
            log_every=50,
            eval_every=500,
            checkpoint_every=250,
        ),
    ),
    "ntp_tiny": NTPTrainConfig(
        out=Path("outputs/ntp_tiny"),
        model=_model("tiny", tokenizer="corpus"),
        train=_train(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, log_every=5, eval_every=15, checkpoint_every=15),
        eval_samples=16,
        eval_generate=4,
    ),
}
NTP_TRAIN_PRESETS["default"] = NTP_TRAIN_PRESETS["ntp_small"]


@dataclass(frozen=True)
class NTPEvalConfig:
    """Token accuracy of a trained CLAP-NTP artifact on held-out episodes, and decode latency."""

    ntp: Path
    """CLAP-NTP artifact directory."""
    samples: int = 512
    """Held-out robot samples for teacher-forced accuracy."""
    generate: int = 64
    """Samples also decoded free-running (greedy, constrained), with and without the KV cache."""
    out: Path | None = None
    """JSON file for the results (default: <ntp>/eval/ntp_eval.json)."""


__all__ = ["NTP_TRAIN_PRESETS", "NTPEvalConfig", "NTPTrainConfig"]
