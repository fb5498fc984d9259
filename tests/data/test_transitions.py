"""Transition batches: the online (no-cache) feature path equals the feature cache, view for view;
split, pairing and mixture sampling."""

from __future__ import annotations

import numpy as np
import torch

from clap_vla.data.augment import AugmentConfig
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.feature_cache import build_feature_cache
from clap_vla.data.transitions import CachedFeatures, OnlineFeatures, TransitionSource, assemble, load_transitions
from clap_vla.nn.frame_encoders import build_frame_encoder


def test_online_features_equal_the_cache_and_pairs_are_t_and_t_plus_h(tmp_path, monkeypatch):
    from tests.conftest import write_toy

    monkeypatch.setenv("CLAP_CACHE_DIR", str(tmp_path / "cache"))
    write_toy(tmp_path / "ds", n=10, length=12, size=32)
    ds = RobotDataset(tmp_path / "ds")
    enc = build_frame_encoder("pixels:16")
    train, held = load_transitions(tmp_path / "ds", 4, holdout_every=5)
    assert set(held.episode.tolist()) == {4, 9} and not set(train.episode.tolist()) & {4, 9}
    ep, t = int(train.episode[7]), int(train.t[7])
    T = ds.episodes[ep].length
    assert train.rows[7].tolist() == [ds.frame_offsets[ep] + t, ds.frame_offsets[ep] + min(t + 4, T - 1)]

    cached = CachedFeatures(
        build_feature_cache(ds, ds.cameras[0], enc, views=2, augment=AugmentConfig(), progress=False)
    )
    online = OnlineFeatures(ds, ds.cameras[0], enc, AugmentConfig(), progress=False)
    idx = np.arange(0, 40, 3)
    src = np.zeros(len(idx), np.int64)
    views = np.ones((len(idx), 2), np.int64)  # view 1 exists in both
    train.features = cached
    a = assemble([train], src, idx, views)
    train.features = online
    b = assemble([train], src, idx, views)
    torch.testing.assert_close(a.features, b.features, atol=1e-2, rtol=1e-2)  # fp16 cache
    torch.testing.assert_close(a.features_aug, b.features_aug, atol=1e-2, rtol=1e-2)
    assert not torch.allclose(a.features, a.features_aug)  # the student's view is augmented
    # Online augmentation over a clean cache: view 0 is read from the cache, only the rest is encoded.
    train.features = OnlineFeatures(ds, ds.cameras[0], enc, AugmentConfig(), progress=False, clean=cached)
    calls = []
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda imgs: calls.append(len(imgs)) or real(imgs))
    c = assemble([train], src, idx, views)
    assert torch.equal(c.features, a.features) and calls == [2 * len(idx)]  # the student's frames only
    torch.testing.assert_close(c.features_aug, b.features_aug)


def test_mixture_sampling_follows_weights_and_is_a_function_of_the_step(tmp_path, monkeypatch):
    from tests.conftest import write_toy

    monkeypatch.setenv("CLAP_CACHE_DIR", str(tmp_path / "cache"))
    write_toy(tmp_path / "ds", n=10, length=12, size=32)
    ds = RobotDataset(tmp_path / "ds")
    enc = build_frame_encoder("pixels:16")
    a, _ = load_transitions(tmp_path / "ds", 4)
    b, _ = load_transitions(tmp_path / "ds", 4)
    a.features = b.features = CachedFeatures(build_feature_cache(ds, ds.cameras[0], enc, progress=False))
    src = TransitionSource([a, b], [3.0, 1.0], batch_size=64)
    counts = np.bincount(np.concatenate([src.slots(s)[0] for s in range(50)]), minlength=2)
    assert abs(counts[0] / counts.sum() - 0.75) < 0.03
    x, y = src.batch(7), src.batch(7)
    assert torch.equal(x.features, y.features) and torch.equal(x.source, y.source)
    r0, r1 = src.batch(7, 0, 2), src.batch(7, 1, 2)  # ranks split the global batch
    assert torch.equal(torch.stack([r0.source, r1.source], 1).reshape(-1), x.source)


class _ArrayFeatures:
    """A feature provider over an in-memory (T, P, C) array; view v > 0 adds v (a stand-in augmentation)."""

    def __init__(self, feats: np.ndarray):
        self.feats = feats
        self.num_patches, self.dim, self.augmented_views = feats.shape[1], feats.shape[2], 3

    def get(self, rows, views):
        return torch.from_numpy(self.feats[rows]).float() + torch.as_tensor(views, dtype=torch.float32)[:, None, None]


def test_standardized_features_match_a_float64_reference_and_undo_a_per_channel_affine_shift():
    from clap_vla.data.transitions import StandardizedFeatures

    rng = np.random.default_rng(0)
    f = (rng.normal(size=(300, 6, 5)) * [1.0, 3.0, 0.2, 5.0, 1.0] + [0.0, 4.0, -2.0, 10.0, 1.0]).astype(np.float32)
    f[:, :, 4] = 2.5  # a constant channel: standardised to 0, not inf/nan
    std = StandardizedFeatures(_ArrayFeatures(f), num_frames=300, sample_frames=1000)  # all frames
    ref = f.astype(np.float64).reshape(-1, 5)
    mean, sd = ref.mean(0), ref.std(0)
    np.testing.assert_allclose(std.mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.std.numpy()[:4], sd[:4], rtol=1e-4)
    rows, views = np.array([0, 17, 299]), np.zeros(3, np.int64)
    out = std.get(rows, views)
    expect = (f[rows].astype(np.float64) - mean) / np.maximum(sd, 1e-4)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(out).all() and (out[..., 4] == 0).all()
    # augmented views use the clean statistics (the +v stand-in augmentation survives, scaled)
    torch.testing.assert_close(std.get(rows, np.full(3, 2)) - out, 2 / std.std.expand(3, 6, 5))
    # A domain whose every channel is scaled and shifted (a light or tint change) reads the same.
    a = np.array([0.5, 2.0, 1.5, 0.7, 3.0], np.float32)
    b = np.array([10.0, -3.0, 0.5, 2.0, 7.0], np.float32)
    shifted = StandardizedFeatures(_ArrayFeatures(f * a + b), num_frames=300, sample_frames=1000)
    torch.testing.assert_close(shifted.get(rows, views), out, rtol=1e-4, atol=1e-3)
    # with a sample of the frames the statistics are close but not the exact ones
    part = StandardizedFeatures(_ArrayFeatures(f), num_frames=300, sample_frames=100, seed=1)
    assert 0 < (part.mean - std.mean).abs().max() < 0.5
    assert (std.num_patches, std.dim, std.augmented_views) == (6, 5, 3)


def _brightness_factor(aug: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per image, sum(aug) / sum(clean) over unsaturated pixels: the brightness factor when contrast,
    grayscale and noise are off."""
    a, c = aug.double().flatten(1), clean.double().flatten(1)
    ok = (c > 8) & (c < 200)
    return (a * ok).sum(1) / (c * ok).sum(1)


def test_per_clip_augmentation_shares_a_transitions_draw_and_changes_every_step(tmp_path, monkeypatch):
    from tests.conftest import write_toy

    monkeypatch.setenv("CLAP_CACHE_DIR", str(tmp_path / "cache"))
    write_toy(tmp_path / "ds", n=4, length=40, size=32)
    ds = RobotDataset(tmp_path / "ds")
    enc = build_frame_encoder("pixels:16")
    only_brightness = AugmentConfig(brightness=0.3, contrast=0.0, grayscale_p=0.0, noise_std=0.0)
    train, _ = load_transitions(tmp_path / "ds", 8, holdout_every=4)
    factors = {}
    for per_clip in (True, False):
        train.features = OnlineFeatures(ds, ds.cameras[0], enc, only_brightness, progress=False, per_clip=per_clip)
        src = TransitionSource([train], [1.0], batch_size=16)
        out = []
        for step in (0, 1):
            _, idx, views = src.slots(step)
            assert (views[:, 0] == views[:, 1]).all() == per_clip  # one view id per transition, or per frame
            rows = train.rows[idx].reshape(-1)
            clean = train.features.images(rows, np.zeros_like(rows))
            aug = train.features.images(rows, views.reshape(-1))
            out.append(_brightness_factor(aug, clean).reshape(-1, 2))  # (B, 2): frames t and t+H
        factors[per_clip] = out
    same, other = factors[True], factors[False]
    torch.testing.assert_close(same[0][:, 0], same[0][:, 1], atol=0.01, rtol=0)  # both frames, one draw
    assert (other[0][:, 0] - other[0][:, 1]).abs().max() > 0.05  # per frame: independent draws
    assert (same[0][:, 0] - same[1][:, 0]).abs().max() > 0.05  # a new draw at every step
    assert (same[0] - 1).abs().max() > 0.05 and (same[0] - 1).abs().max() <= 0.31


def test_per_clip_noise_differs_between_frames_while_parameters_are_shared():
    from clap_vla.data.augment import augment_frames

    img = torch.full((2, 3, 8, 8), 120, dtype=torch.uint8)
    cfg = AugmentConfig(noise_std=0.05)
    shared = augment_frames(img, np.array([5, 5]), cfg, noise_seeds=np.array([1, 2]))
    assert not torch.equal(shared[0], shared[1])  # the noise is drawn per frame
    # ... around the same brightness and contrast (the means agree within the noise's spread)
    assert abs(shared[0].float().mean() - shared[1].float().mean()) < 3
    no_noise = augment_frames(img, np.array([5, 5]), AugmentConfig(noise_std=0.0), noise_seeds=np.array([1, 2]))
    assert torch.equal(no_noise[0], no_noise[1])
    torch.testing.assert_close(augment_frames(img, np.array([5, 6]), cfg), augment_frames(img, np.array([5, 6]), cfg))


def test_per_clip_augmentation_needs_the_online_path():
    import pytest

    from clap_vla.configs.vd_vae import FeatureConfig
    from clap_vla.errors import ConfigError

    with pytest.raises(ConfigError, match="no-cache"):
        FeatureConfig(augment_per_clip=True)
    with pytest.raises(ConfigError, match="augment_views"):
        FeatureConfig(augment_per_clip=True, cache=False, augment_views=0)
    assert FeatureConfig(augment_per_clip=True, cache=False).augment_per_clip
