"""Configs of `clap train post` (CLAP-RF + Knowledge Matching) and `clap eval latency`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from clap_vla.errors import ConfigError
from clap_vla.models.clap_policy import ClapConfig
from clap_vla.models.rf_head import RFHeadConfig
from clap_vla.train.loop import TrainConfig


@dataclass(frozen=True)
class PostTrainConfig:
    """Post-training (Algorithm 4): stage 1 adapts the NTP policy to the target robot's tokens (and
    video pseudo tokens); stage 2 trains the RF head with Knowledge Matching on robot data only,
    the policy branch starting from stage 1 and the reference a frozen copy of it."""

    ntp: Path | None = None
    """CLAP-NTP artifact to post-train. Required."""
    robot_data: tuple[Path, ...] = ()
    """Target-robot datasets (stage 1 tokens, stage 2 continuous chunks)."""
    video_tokens: tuple[Path, ...] = ()
    """Token shards of action-free videos for stage 1 (`clap label --vd-vae`)."""
    weights: tuple[float, ...] = ()
    """Stage-1 mixture weights, robot datasets then token shards (default: proportional to size)."""
    out: Path = Path("outputs/post")
    """Artifact directory of the CLAP-RF policy; stage 1 writes <out>/stage1_ntp."""
    adapt: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=32, lr=2e-5, warmup_steps=50))
    """Stage 1 (NTP adaptation; paper §IV-C2 / Table IX: 3 epochs at lr 2e-5, 1000-step warmup, no
    decay, which `post_paper` follows; this default and the CPU presets decay to 0.1x)."""
    adapt_stage: bool = True
    """Run stage 1; --no-adapt-stage post-trains the given NTP artifact directly (it is the reference)."""
    model: ClapConfig = field(default_factory=ClapConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, batch_size=32, lr=1e-4, warmup_steps=100)
    )
    """Stage 2 (RF head + KM; paper §IV-C2 / Table IX: 5 epochs at lr 1e-4, 1000-step warmup, cosine decay)."""
    feature_levels: Literal["", "low", "mid", "high", "low+mid", "all"] = ""
    """Shortcut for --model.rf.levels (Table VI ablation)."""
    km: Literal["on", "off"] = "on"
    """off: plain fine-tuning of the VLM through the flow loss (Table VI ablation)."""
    ki: bool = False
    """Knowledge insulation instead of KM: the head reads a detached context (Table VI ablation)."""
    holdout_every: int = 10
    eval_samples: int = 256
    """Held-out robot samples for the evaluation (chunk MSE of sampled actions, token accuracy)."""
    resume: bool = False

    def __post_init__(self) -> None:
        if self.holdout_every < 2 or self.eval_samples < 1:
            raise ConfigError(f"need holdout_every >= 2 and eval_samples >= 1, got {self.holdout_every}, "
                              f"{self.eval_samples}")  # fmt: skip

    def resolved_model(self) -> ClapConfig:
        """The model config with the --km / --ki / --feature-levels shortcuts applied."""
        m = self.model
        if self.feature_levels:
            m = replace(m, rf=replace(m.rf, levels=self.feature_levels, layers=()))
        if self.ki:
            m = replace(m, ki=True, km_weight=0.0)
        elif self.km == "off":
            m = replace(m, km_weight=0.0)
        return m


def _t(**kw) -> TrainConfig:
    return TrainConfig(precision="auto", log_every=50, **kw)


POST_TRAIN_PRESETS: dict[str, PostTrainConfig] = {
    # Paper §IV-C2 / Table IX: batch 128; stage 1 (NTP adaptation) 3 epochs at lr 2e-5 after a
    # 1000-step linear warmup, no decay; stage 2 (RF head + KM) 5 epochs at lr 1e-4 after a 1000-step
    # warmup, cosine decay (the paper gives no floor: 0.1x, as everywhere else). Reference facts: KM
    # alpha 0.005, 16 DiT layers, 4 Euler steps.
    "post_paper": PostTrainConfig(
        out=Path("outputs/post_paper"),
        adapt=_t(
            epochs=3,
            batch_size=128,
            lr=2e-5,
            warmup_steps=1000,
            min_lr_ratio=1.0,
            eval_every=2000,
            checkpoint_every=1000,
        ),
        model=ClapConfig(rf=RFHeadConfig(width=1024, heads=16, max_depth=16, euler_steps=4)),
        train=_t(epochs=5, batch_size=128, lr=1e-4, warmup_steps=1000, eval_every=2000, checkpoint_every=1000),
    ),
    # The CPU preset for the MT10 numbers (small NTP backbone).
    "post_small": PostTrainConfig(
        out=Path("outputs/post_small"),
        adapt=_t(steps=500, batch_size=32, lr=2e-4, warmup_steps=50, eval_every=250, checkpoint_every=250),
        model=ClapConfig(rf=RFHeadConfig(width=256, heads=4, euler_steps=4)),
        train=_t(steps=2000, batch_size=32, lr=5e-4, warmup_steps=100, eval_every=500, checkpoint_every=250),
    ),
    "post_tiny": PostTrainConfig(
        out=Path("outputs/post_tiny"),
        adapt=TrainConfig(
            steps=4, batch_size=8, lr=1e-3, warmup_steps=1, log_every=2, eval_every=4, checkpoint_every=2
        ),
        model=ClapConfig(rf=RFHeadConfig(width=32, heads=2, euler_steps=4)),
        train=TrainConfig(
            steps=6, batch_size=8, lr=1e-3, warmup_steps=1, log_every=2, eval_every=3, checkpoint_every=3
        ),
        eval_samples=8,
    ),
}
POST_TRAIN_PRESETS["default"] = POST_TRAIN_PRESETS["post_small"]


@dataclass(frozen=True)
class LatencyConfig:
    """Per-chunk latency of CLAP-NTP (token decoding) vs CLAP-RF (prefix + Euler steps) on the same
    backbone and inputs, broken into encode, prefix, decode/denoise and post-processing."""

    policy: Path
    """A post-training artifact (`clap train post`); its VLM decodes tokens for the NTP column."""
    data: Path | None = None
    """Dataset whose first frame and instruction feed both policies (default: its first robot dataset)."""
    steps: tuple[int, ...] = (4, 10)
    """Euler steps to report for CLAP-RF."""
    repeats: int = 20
    warmup: int = 3
    out: Path | None = None
    """JSON file (default: <policy>/eval/latency.json)."""
    precision: str = "auto"
    """VLM and head precision at inference: auto (bf16 where the device multiplies it natively), fp32, bf16."""

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.repeats < 1 or self.warmup < 0 or not self.steps or min(self.steps) < 1:
            raise ConfigError(f"need repeats >= 1, warmup >= 0 and steps >= 1, got {self.repeats}, {self.warmup}, "
                              f"{self.steps}")  # fmt: skip
