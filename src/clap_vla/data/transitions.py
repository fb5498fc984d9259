"""Frame-pair transitions (o_t, o_t+H) with frozen-backbone features, for the VD-VAE.

Every (episode, t) window of a dataset is one transition; its second frame is min(t + H, T - 1)
(windows.py's convention). Robot datasets also carry the normalised chunk a[t:t+H] (the Act-VAE's
normalisation of that dataset). Episodes are split like the Act-VAE's: every `holdout_every`-th
episode of each dataset is held out.

Features come from a `FeatureProvider`:
- `CachedFeatures`: a precomputed feature cache (data/feature_cache.py) with view 0 = clean frames
  and views 1..V-1 = fixed augmented copies (the student samples one per frame);
- `OnlineFeatures`: decoded frames from the frame cache run through the frozen encoder every batch,
  with a fresh augmentation per frame, or per clip (`per_clip`: both frames of a transition share
  the brightness, contrast and grayscale draw, as the release augments a clip; the no-cache path;
  slower, unlimited augmentations);
- `StandardizedFeatures`: either of those standardised per channel with its own dataset's
  clean-frame statistics (`--features.dataset-norm`).

`TransitionSource.batch(step, rank, world)` is a pure function of the step (resumed runs see the
same batches): each of the B slots draws a dataset by the mixture weights, then a transition
uniformly within it; rank r takes slots r, r + world, ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from clap_vla.data.dataset import RobotDataset
from clap_vla.data.normalize import ActionNormalizer
from clap_vla.data.windows import WindowConfig, WindowDataset
from clap_vla.errors import ConfigError, DatasetError, holdout_hint
from clap_vla.types import ARM_DIM, ARM_NAMES, NUM_ARMS, TransitionBatch


class FeatureProvider(Protocol):
    num_patches: int
    dim: int
    augmented_views: int
    """How many distinct augmented views exist (0 = none: the student sees clean features)."""

    def get(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """Global frame rows (N,) and view ids (N,) (0 = clean) -> features (N, P, C) float32."""
        ...


class CachedFeatures:
    def __init__(self, cache, clean_only: bool = False):
        self.cache = cache
        self.num_patches, self.dim = cache.num_patches, cache.dim
        self.augmented_views = 0 if clean_only else cache.views - 1

    def get(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        return self.cache.get(rows, views)


class OnlineFeatures:
    """Frames from the uint8 frame cache through the encoder per call; view v > 0 is
    `augment_frames` with a seed derived from (seed, v, row), as the feature cache derives its views.
    With `per_clip`, the parameters' seed is derived from (seed, v) alone and the noise's from
    (seed, v, row): frames asked for with the same view share their photometric draw (the
    `TransitionSource` gives both frames of a transition one fresh view id per step)."""

    def __init__(
        self,
        ds: RobotDataset,
        camera: str,
        encoder,
        augment=None,
        seed: int = 0,
        progress: bool = True,
        per_clip: bool = False,
        clean: FeatureProvider | None = None,
    ):
        from clap_vla.data.frame_cache import build_frame_cache

        self.encoder, self.augment, self.seed, self.per_clip = encoder, augment, seed, per_clip
        self.clean = clean  # view 0 from here (a clean feature cache): only augmented frames are encoded
        path = build_frame_cache(ds, camera, progress=progress)
        shape = json.loads(path.with_suffix(".json").read_text())["shape"]
        self.frames = np.memmap(path, dtype=np.uint8, mode="r", shape=tuple(shape))  # (T_total, h, w, 3)
        gh, gw = encoder.grid(shape[1], shape[2])
        self.num_patches, self.dim = gh * gw, encoder.dim
        self.augmented_views = 2**31 if augment is not None else 0

    def get(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        if self.clean is None:
            return self.encoder.encode(self.images(rows, views)).float()
        out = torch.empty(len(rows), self.num_patches, self.dim)
        plain = views == 0
        if plain.any():
            out[plain] = self.clean.get(rows[plain], views[plain])
        if (~plain).any():
            out[~plain] = self.encoder.encode(self.images(rows[~plain], views[~plain])).float()
        return out

    def images(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """The frames the encoder reads: uint8 (N, 3, h, w), view 0 clean, others augmented."""
        from clap_vla.data.augment import augment_frames
        from clap_vla.data.feature_cache import view_seeds

        imgs = torch.from_numpy(np.ascontiguousarray(self.frames[rows].transpose(0, 3, 1, 2)))  # (N, 3, h, w)
        aug = views > 0
        if aug.any():
            per_frame = view_seeds(self.seed, views[aug], rows[aug])
            if self.per_clip:
                clip = view_seeds(self.seed, views[aug], np.zeros_like(rows[aug]))
                imgs[aug] = augment_frames(imgs[aug], clip, self.augment, noise_seeds=per_frame)
            else:
                imgs[aug] = augment_frames(imgs[aug], per_frame, self.augment)
        return imgs


class StandardizedFeatures:
    """Per-dataset feature standardisation: (f - mean) / std per channel, with the mean and std of
    this dataset's own clean frames over all patches (a sample of `sample_frames` rows; float64).

    Not in the paper. Each domain (robot data, arm-masked robot data, human-domain video) is centred
    and scaled by its own statistics, as domain-specific batch-norm statistics are in unsupervised
    domain adaptation (AdaBN, Li et al. 2016): a shift of every channel by an appearance change the
    whole dataset shares (lighting, table colour) is removed without any labels, at training,
    evaluation and labelling alike. Augmented views are standardised with the clean statistics."""

    def __init__(self, inner: FeatureProvider, num_frames: int, sample_frames: int = 2048, seed: int = 0):
        if num_frames < 1:
            raise DatasetError("dataset-norm: the dataset has no frames to take feature statistics from")
        self.inner = inner
        self.num_patches, self.dim, self.augmented_views = inner.num_patches, inner.dim, inner.augmented_views
        self.per_clip = getattr(inner, "per_clip", False)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(num_frames, size=min(sample_frames, num_frames), replace=False)).astype(np.int64)
        total = torch.zeros(self.dim, dtype=torch.float64)
        total_sq = torch.zeros(self.dim, dtype=torch.float64)
        count = 0
        for i in range(0, len(rows), 256):
            f = inner.get(rows[i : i + 256], np.zeros(len(rows[i : i + 256]), np.int64)).double().flatten(0, 1)
            total += f.sum(0)
            total_sq += f.square().sum(0)
            count += f.shape[0]
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0.0)
        self.mean = mean.float()
        self.std = var.sqrt().clamp_min(1e-4).float()  # a constant channel stays constant, not inf

    def get(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        return (self.inner.get(rows, views) - self.mean) / self.std


@dataclass
class TransitionSet:
    """One dataset's transitions of one split."""

    name: str
    rows: np.ndarray  # (N, 2) int64: global frame rows of o_t and o_t+H
    episode: np.ndarray  # (N,) int64
    t: np.ndarray  # (N,) int64
    arm_mask: torch.Tensor  # (A,) bool
    actions: torch.Tensor | None = None  # (N, H, A, D) normalised; None for action-free video
    valid: torch.Tensor | None = None  # (N, H) bool
    features: FeatureProvider | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def has_action(self) -> bool:
        return self.actions is not None


def arm_mask_for(arms: tuple[str, ...], where: str) -> torch.Tensor:
    bad = [a for a in arms if a not in ARM_NAMES]
    if bad or not arms:
        raise ConfigError(f"{where}: arms must be a non-empty subset of {ARM_NAMES}, got {list(arms)}")
    return torch.tensor([a in arms for a in ARM_NAMES])


def load_transitions(
    path: str | Path,
    horizon: int,
    *,
    normalizer: ActionNormalizer | None = None,
    video_arms: tuple[str, ...] = ("right",),
    holdout_every: int | None = 10,
    progress: bool = True,
) -> tuple[TransitionSet, TransitionSet]:
    """(train, held-out) transitions of one dataset. With a normalizer the dataset must have actions
    (robot data); without, it is read as action-free video whose embodiment has `video_arms`.
    `holdout_every=None`: no split, every transition in the first set (labelling)."""

    if holdout_every is not None and holdout_every < 2:
        raise ConfigError(f"holdout_every must be >= 2, got {holdout_every}")
    ds = RobotDataset(path)
    wd = WindowDataset(ds, WindowConfig(horizon=horizon, cameras=()), normalizer)
    index = wd.index  # (N, 2): episode, t
    lengths = np.array([rec.length for rec in ds.episodes], dtype=np.int64)
    ep, t = index[:, 0].astype(np.int64), index[:, 1].astype(np.int64)
    offsets = np.asarray(ds.frame_offsets, dtype=np.int64)
    rows = np.stack([offsets[ep] + t, offsets[ep] + np.minimum(t + horizon, lengths[ep] - 1)], 1)
    held = ep % holdout_every == holdout_every - 1 if holdout_every else np.zeros(len(ep), bool)
    actions = valid = None
    if normalizer is not None:
        if not ds.has_action:
            raise DatasetError(f"{ds.root}: no actions; pass it as video data, not robot data")
        acts, vals = wd.action_chunks(progress=progress)
        actions, valid = torch.from_numpy(acts), torch.from_numpy(vals)
        arm_mask = torch.from_numpy(wd.layout.arm_mask)
    else:
        arm_mask = arm_mask_for(video_arms, f"{ds.root}")
    out = []
    for sel in (~held, held):
        if not sel.any() and (holdout_every or sel is not held):
            raise DatasetError(
                f"{ds.root}: no {'held-out' if sel is held else 'training'} episodes (every {holdout_every}th "
                f"episode is held out; need at least {holdout_every} episodes). " + holdout_hint(holdout_every)
            )
        s = torch.from_numpy(sel)
        out.append(
            TransitionSet(
                name=ds.root.name,
                rows=rows[sel],
                episode=ep[sel],
                t=t[sel],
                arm_mask=arm_mask,
                actions=None if actions is None else actions[s],
                valid=None if valid is None else valid[s],
            )
        )
    return out[0], out[1]


def assemble(sets: list[TransitionSet], src: np.ndarray, idx: np.ndarray, aug_views: np.ndarray) -> TransitionBatch:
    """Slots (source k, index i, two student views) -> a TransitionBatch in slot order."""
    B = len(src)
    first = next(s for s in sets if s.features is not None).features
    P, C = first.num_patches, first.dim
    H = next((s.actions.shape[1] for s in sets if s.actions is not None), 1)
    feats = torch.zeros(B, 2, P, C)
    feats_aug = torch.zeros(B, 2, P, C)
    actions = torch.zeros(B, H, NUM_ARMS, ARM_DIM)
    valid = torch.zeros(B, H, dtype=torch.bool)
    arm = torch.zeros(B, NUM_ARMS, dtype=torch.bool)
    has_action = torch.zeros(B, dtype=torch.bool)
    for k in np.unique(src):
        s = sets[int(k)]
        slots = np.nonzero(src == k)[0]
        i = idx[slots]
        rows = s.rows[i].reshape(-1)  # (n * 2,)
        n = len(slots)
        if s.features.augmented_views:  # clean and augmented views in one call (one encoder pass online)
            both = s.features.get(
                np.concatenate([rows, rows]), np.concatenate([np.zeros_like(rows), aug_views[slots].reshape(-1)])
            )
            feats[slots], feats_aug[slots] = both[: 2 * n].reshape(n, 2, P, C), both[2 * n :].reshape(n, 2, P, C)
        else:
            feats[slots] = feats_aug[slots] = s.features.get(rows, np.zeros_like(rows)).reshape(n, 2, P, C)
        arm[slots] = s.arm_mask
        if s.actions is not None:
            actions[slots], valid[slots] = s.actions[i], s.valid[i]
            has_action[slots] = True
    return TransitionBatch(
        features=feats,
        features_aug=feats_aug,
        actions=actions,
        action_valid=valid,
        arm_mask=arm,
        has_action=has_action,
        source=torch.from_numpy(src.astype(np.int64)),
    )


def mixture_probabilities(weights: list[float], count: int) -> np.ndarray:
    """Sampling probability of each of `count` datasets from their mixture weights."""
    if len(weights) != count:
        raise ConfigError(f"{len(weights)} mixture weights for {count} datasets")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"mixture weights must be >= 0 with a positive sum, got {list(weights)}")
    return np.asarray(weights, dtype=np.float64) / sum(weights)


class TransitionSource:
    """Mixture of transition sets sampled by weight; batches are a pure function of the step."""

    def __init__(self, sets: list[TransitionSet], weights: list[float], batch_size: int, seed: int = 0):
        self.p = mixture_probabilities(weights, len(sets))
        for s in sets:
            if len(s) == 0:
                raise DatasetError(f"{s.name}: no transitions")
            if s.features is None:
                raise ConfigError(f"{s.name}: no feature provider attached")
        self.sets, self.batch_size, self.seed = sets, batch_size, seed
        self.sizes = np.array([len(s) for s in sets])

    def slots(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B = self.batch_size
        rng = np.random.default_rng([self.seed, step])
        src = rng.choice(len(self.sets), size=B, p=self.p)
        idx = (rng.random(B) * self.sizes[src]).astype(np.int64)
        views = np.ones((B, 2), np.int64)
        for k, s in enumerate(self.sets):
            n = s.features.augmented_views
            if n:
                mine = src == k
                views[mine] = 1 + rng.integers(0, n, size=(int(mine.sum()), 2))
                if getattr(s.features, "per_clip", False):
                    views[mine, 1] = views[mine, 0]  # one view (one photometric draw) per transition
        return src, idx, views

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> TransitionBatch:
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by world size {world_size}")
        src, idx, views = self.slots(step)
        mine = slice(rank, None, world_size)
        return assemble(self.sets, src[mine], idx[mine], views[mine])


def iterate(s: TransitionSet, batch_size: int, limit: int | None = None):
    """Clean transitions of one set in order (evaluation, labelling): yields (positions, batch)."""
    n = len(s) if limit is None else min(limit, len(s))
    pick = np.arange(len(s)) if n == len(s) else np.linspace(0, len(s) - 1, n).round().astype(np.int64)
    for a in range(0, n, batch_size):
        i = pick[a : a + batch_size]
        zeros = np.zeros(len(i), np.int64)
        yield i, assemble([s], zeros, i, np.zeros((len(i), 2), np.int64))


__all__ = [
    "CachedFeatures",
    "FeatureProvider",
    "OnlineFeatures",
    "StandardizedFeatures",
    "TransitionSet",
    "TransitionSource",
    "iterate",
    "load_transitions",
]
