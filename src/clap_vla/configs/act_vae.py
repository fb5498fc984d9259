"""Configs of `clap train act-vae`, `clap eval act-vae` and `clap eval rate-distortion`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from clap_vla.errors import ConfigError
from clap_vla.models.act_vae import ACT_VAE_PRESETS, ActVAEConfig
from clap_vla.train.loop import TrainConfig

# Paper Table IX: VAE lr 2e-5, codebook lr 1e-3 (x50), warmup 1000; the reference facts add
# AdamW weight decay 1e-2 (not on the codebook), cosine to 0.1x, grad clip 1.0.
CODEBOOK_LR = (("codebook", 50.0),)


@dataclass(frozen=True)
class ActVAETrainConfig:
    """Train an Act-VAE on the action chunks of one or more robot datasets."""

    data: tuple[Path, ...] = ()
    """Robot datasets (LeRobot v3/v2.1); single- and dual-arm may mix."""
    out: Path = Path("outputs/act_vae")
    """Artifact directory (config.json, model.safetensors, norm_stats/, meta.json, metrics)."""
    model: ActVAEConfig = field(default_factory=lambda: ACT_VAE_PRESETS["act_vae_small"])
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=20000, batch_size=256, lr=5e-4, warmup_steps=500, lr_multipliers=CODEBOOK_LR, log_every=100
        )
    )
    holdout_every: int = 10
    """Every n-th episode of each dataset is held out for evaluation."""
    eval_batch_size: int = 1024
    resume: bool = False
    """Continue the run in `out` from its last checkpoint, on the same schedule."""

    def __post_init__(self) -> None:
        if self.holdout_every < 2:
            raise ConfigError(f"holdout_every must be >= 2, got {self.holdout_every}")


def _train(**kw) -> TrainConfig:
    return TrainConfig(lr_multipliers=CODEBOOK_LR, **kw)


ACT_VAE_TRAIN_PRESETS = {
    "default": ActVAETrainConfig(),
    "act_vae_small": ActVAETrainConfig(),
    "act_vae_paper": ActVAETrainConfig(
        model=ACT_VAE_PRESETS["act_vae_paper"],
        train=_train(
            steps=100_000,
            batch_size=4096,
            lr=2e-5,
            warmup_steps=1000,
            log_every=100,
            eval_every=5000,
            checkpoint_every=5000,
        ),
    ),
    # What docs/results.md's MT10 CPU result used: the small model at Table V's operating point
    # (Nq = 16, K = 256), batch 64, one CPU thread ~30 min.
    "act_vae_cpu": ActVAETrainConfig(
        model=replace(ACT_VAE_PRESETS["act_vae_small"], codes_per_arm=16, num_codes=256, restart_every=500),
        train=_train(
            steps=5000, batch_size=64, lr=1e-3, warmup_steps=200, log_every=100, eval_every=500, checkpoint_every=500
        ),
    ),
    "act_vae_tiny": ActVAETrainConfig(
        out=Path("outputs/act_vae_tiny"),
        model=ACT_VAE_PRESETS["act_vae_tiny"],
        train=_train(
            steps=60, batch_size=32, lr=2e-3, warmup_steps=5, log_every=10, eval_every=30, checkpoint_every=30
        ),
        eval_batch_size=256,
    ),
}


@dataclass(frozen=True)
class ActVAEEvalConfig:
    """Reconstruction quality of a trained Act-VAE on a dataset's chunks."""

    act_vae: Path
    """Act-VAE artifact directory."""
    data: Path
    """Robot dataset to evaluate on (uses the artifact's norm stats when it trained on it)."""
    out: Path | None = None
    """Directory for eval.json and plots (default: <act_vae>/eval/<dataset name>)."""
    split: str = "heldout"
    """heldout (episodes the training held out), train, or all."""
    plots: int = 4
    """Reconstruction plots of this many chunks."""
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.split not in ("heldout", "train", "all"):
            raise ConfigError(f"split must be heldout, train or all, got {self.split!r}")


# Paper Table V's (Nq, K) points (Nq codes per 32 x 7 chunk, i.e. per arm here).
TABLE_V = ((12, 128), (12, 256), (12, 512), (36, 256), (20, 256), (16, 256), (8, 256), (4, 256))
# Its reported (MSE, PSNR dB, rate) per point, for the side-by-side table.
TABLE_V_RESULTS = {
    (12, 128): (0.0023, 32.40, 0.070),
    (12, 256): (0.0010, 36.02, 0.072),
    (12, 512): (0.0007, 37.57, 0.077),
    (36, 256): (0.0002, 43.01, 0.175),
    (20, 256): (0.0003, 41.25, 0.104),
    (16, 256): (0.0004, 40.00, 0.086),
    (8, 256): (0.0041, 29.89, 0.058),
    (4, 256): (0.1022, 15.93, 0.054),
}


@dataclass(frozen=True)
class RateDistortionConfig:
    """Train one Act-VAE per (Nq, K) point on the same data; tabulate held-out MSE, PSNR and the
    rate of eq. 8; plot PSNR against rate and mark the elbow."""

    data: tuple[Path, ...] = ()
    """Robot datasets, as for `clap train act-vae`."""
    out: Path = Path("outputs/rate_distortion")
    """One sub-directory per point (each a resumable Act-VAE run), plus table.md, table.json, plot.png."""
    grid: tuple[tuple[int, int], ...] = TABLE_V
    """(codes per arm Nq, codebook size K) points; the default is the paper's Table V."""
    base: ActVAETrainConfig = field(default_factory=ActVAETrainConfig)
    """Model and training settings shared by every point (Nq and K are overridden)."""

    def __post_init__(self) -> None:
        if not self.grid:
            raise ConfigError("grid: name at least one (Nq, K) point")
        for nq, k in self.grid:
            if nq < 1 or k < 2:
                raise ConfigError(f"grid point (Nq={nq}, K={k}): need Nq >= 1 and K >= 2")


RATE_DISTORTION_PRESETS = {
    "default": RateDistortionConfig(),
    # Table V's grid on a CPU budget: a narrower, shallower model than act_vae_small (width 64, 2 + 2
    # layers, 0.19 M parameters, ~5x faster per step) for 1500 steps per point, about 3 min each on
    # one thread. Absolute PSNR is below a fully trained model's; the trend across (Nq, K) is what it
    # measures (docs/results.md).
    "cpu": RateDistortionConfig(
        out=Path("outputs/rate_distortion_cpu"),
        base=ActVAETrainConfig(
            model=replace(
                ACT_VAE_PRESETS["act_vae_small"], width=64, ffn=128, enc_layers=2, dec_layers=2, restart_every=500
            ),
            train=_train(
                steps=1500,
                batch_size=64,
                lr=1e-3,
                warmup_steps=150,
                log_every=100,
                eval_every=1500,
                checkpoint_every=500,
            ),
        ),
    ),
    "tiny": RateDistortionConfig(
        out=Path("outputs/rate_distortion_tiny"),
        grid=((2, 16), (4, 16), (4, 64)),
        base=ACT_VAE_TRAIN_PRESETS["act_vae_tiny"],
    ),
}
