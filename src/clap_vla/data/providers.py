"""What the training and evaluation stages attach to a dataset before they read it: frozen frame
features (or raw pixels) as the visual input, and each robot dataset's action normaliser as the
parent Act-VAE fitted it; and the NTP sample sets built from both.

Shared by `clap train vd-vae/ntp/post`, `clap eval vd-vae/ntp` and `clap label`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clap_vla.configs.vd_vae import FeatureConfig


def feature_provider(ds_path, fcfg: FeatureConfig, encoder, progress: bool = True, clean_only: bool = False):
    """The frozen features of one dataset: a feature cache (built once, then reused) or online.
    `clean_only` (evaluation, labelling, NTP): reuse any cache of this dataset and encoder when one
    exists (its view 0 is the clean frames; e.g. the VD-VAE's training cache), else build a
    clean-only one. With `fcfg.dataset_norm` the provider standardises with this dataset's own
    feature statistics."""
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.transitions import StandardizedFeatures

    ds = RobotDataset(ds_path)
    provider = _feature_provider(ds, fcfg, encoder, progress, clean_only)
    return StandardizedFeatures(provider, ds.num_frames, seed=fcfg.seed) if fcfg.dataset_norm else provider


def _feature_provider(ds, fcfg: FeatureConfig, encoder, progress: bool, clean_only: bool):
    from clap_vla.data.augment import AugmentConfig
    from clap_vla.data.feature_cache import build_feature_cache, find_clean_cache
    from clap_vla.data.transitions import CachedFeatures, OnlineFeatures

    camera = ds.camera_key(fcfg.camera) if fcfg.camera else ds.cameras[0]
    augment = AugmentConfig() if fcfg.augment_views else None
    views = 1 + fcfg.augment_views
    if clean_only:
        found = find_clean_cache(ds, camera, encoder)
        if found is not None:
            return CachedFeatures(found, clean_only=True)
        augment, views = None, 1
    if not fcfg.cache:
        # The clean view (the teacher's, and evaluation's) comes from a clean cache when augmenting:
        # only the student's fresh augmentations run through the encoder every step.
        clean = None
        if augment is not None:
            found = find_clean_cache(ds, camera, encoder)
            clean = CachedFeatures(
                found or build_feature_cache(ds, camera, encoder, progress=progress), clean_only=True
            )
        return OnlineFeatures(
            ds, camera, encoder, augment, seed=fcfg.seed, progress=progress, per_clip=fcfg.augment_per_clip, clean=clean
        )
    cache = build_feature_cache(ds, camera, encoder, views=views, augment=augment, seed=fcfg.seed, progress=progress)
    return CachedFeatures(cache)


def visual_provider(ds_path, features: FeatureConfig, encoder, progress: bool):
    """Frozen features (Llama builds, `encoder` given) or uint8 pixels (backbones with their own
    vision tower, `encoder` None)."""
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.ntp import FramePixels

    if encoder is None:
        ds = RobotDataset(ds_path)
        return FramePixels(ds, ds.camera_key(features.camera) if features.camera else ds.cameras[0], progress)
    return feature_provider(ds_path, features, encoder, progress=progress, clean_only=True)


def robot_normalizers(act_vae_dir: Path, act_meta: dict, paths, horizon: int, progress: bool = True):
    """The Act-VAE's own normalisation of each robot dataset it trained on; stats fitted here for
    a dataset it did not see (with a note: its tokens then use a new scaling)."""
    from clap_vla.artifacts import norm_stats_for
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.normalize import ActionNormalizer
    from clap_vla.data.windows import WindowConfig, fit_norm_stats

    out = []
    for p in paths:
        st = norm_stats_for(act_vae_dir, act_meta, p)
        if st is None:
            if progress:
                print(f"note: the Act-VAE did not train on {p}; fitting its normalisation stats here")
            st = fit_norm_stats(RobotDataset(p), WindowConfig(horizon=horizon, cameras=()))
        out.append(ActionNormalizer(st))
    return out


def ntp_samples(
    act_vae_dir: Path,
    act_vae,
    act_meta: dict,
    robot_data,
    video_tokens,
    features: FeatureConfig,
    encoder,
    holdout_every: int | None,
    progress: bool,
):
    """(train sets, held-out sets, robot normalizers) for CLAP-NTP: each robot dataset's samples with
    the Act-VAE's tokens, then each token shard's video samples, all with visual providers attached."""
    from clap_vla.artifacts import parent_entry
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.ntp import robot_samples, video_samples
    from clap_vla.data.tokens import META_FILE

    norms = robot_normalizers(Path(act_vae_dir), act_meta, robot_data, act_vae.cfg.horizon, progress)
    train, held = [], []
    for p, n in zip(robot_data, norms, strict=True):
        tr, he = robot_samples(p, act_vae, n, holdout_every, progress=progress)
        tr.visual = he.visual = visual_provider(p, features, encoder, progress)
        train.append(tr)
        held.append(he)
    sha = parent_entry(act_vae_dir)["sha256"]
    for shard in video_tokens:
        tr, he = video_samples(shard, sha, act_vae.cfg.num_codes, act_vae.cfg.codes_per_arm, holdout_every)
        root = RobotDataset(json.loads((Path(shard) / META_FILE).read_text())["dataset"]["path"]).root
        tr.visual = he.visual = visual_provider(root, features, encoder, progress)
        train.append(tr)
        held.append(he)
    return train, held, norms
