"""Student augmentations (per-image seeds, ranges) and the frozen-feature cache (equality with direct
encoding of clean and augmented frames, reuse, atomic writes, bounds checks) on a real LeRobot dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import write_toy

from clap_vla.data.augment import AugmentConfig, augment_frames
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.feature_cache import (
    FeatureCache,
    build_feature_cache,
    feature_cache_path,
    find_clean_cache,
    view_seeds,
)
from clap_vla.data.frame_cache import attach_frame_caches
from clap_vla.errors import ConfigError, DatasetError
from clap_vla.nn.frame_encoders import EfficientNetLite0Encoder, PixelPatchEncoder

# -- augmentations ----------------------------------------------------------------------------------------


def frames(n: int, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def test_augment_is_deterministic_and_independent_of_the_batch():
    x = frames(6)
    seeds = np.array([3, -7, 11, 2**62, 0, 5], dtype=np.int64)
    out = augment_frames(x, seeds)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment_frames(x, torch.from_numpy(seeds)))
    perm = np.array([4, 2, 0, 5, 1, 3])
    assert torch.equal(augment_frames(x[perm], seeds[perm]), out[perm])
    assert torch.equal(augment_frames(x[2:3], seeds[2:3]), out[2:3])  # alone = inside a batch
    assert not torch.equal(augment_frames(x, seeds + 1), out)


def test_brightness_and_contrast_stay_in_range():
    """Noise and grayscale off: a flat image only sees the brightness factor (contrast keeps a flat
    image flat), which must cover and stay inside [0.8, 1.2]."""
    cfg = AugmentConfig(grayscale_p=0.0, noise_std=0.0)
    flat = torch.full((400, 3, 4, 4), 100, dtype=torch.uint8)
    ratio = augment_frames(flat, np.arange(400), cfg).float() / 100  # (N, 3, 4, 4)
    assert (ratio == ratio[:, :1, :1, :1]).all()  # every pixel of an image scaled alike
    r = ratio[:, 0, 0, 0]
    assert r.min() >= 0.8 - 0.006 and r.max() <= 1.2 + 0.006
    assert r.min() < 0.82 and r.max() > 1.18
    # Two-level image, brightness off: the contrast factor scales the gap between the levels.
    two = torch.full((400, 3, 4, 4), 100, dtype=torch.uint8)
    two[:, :, :2] = 140
    gap = augment_frames(two, np.arange(400), AugmentConfig(brightness=0.0, grayscale_p=0.0, noise_std=0.0)).float()
    c = (gap[:, 0, 0, 0] - gap[:, 0, 3, 0]) / 40
    assert c.min() >= 0.8 - 0.03 and c.max() <= 1.2 + 0.03 and c.min() < 0.85 and c.max() > 1.15


def test_grayscale_rate_and_noise_level():
    x = frames(1000, 4, 4)
    out = augment_frames(x, np.arange(1000), AugmentConfig(brightness=0.0, contrast=0.0, noise_std=0.0))
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert 0.07 < gray.float().mean() < 0.13  # p = 0.1, binomial std 0.0095
    assert torch.equal(out[~gray], x[~gray])
    mid = torch.full((20, 3, 32, 32), 128, dtype=torch.uint8)
    noisy = augment_frames(mid, np.arange(20), AugmentConfig(brightness=0.0, contrast=0.0, grayscale_p=0.0))
    std = ((noisy.float() - 128) / 255).std()
    assert 0.018 < std < 0.022  # sigma 0.02 on the [0, 1] scale (plus rounding to uint8)


def test_augment_input_checks():
    with pytest.raises(ValueError, match="one integer seed per image"):
        augment_frames(frames(3), np.arange(2))
    with pytest.raises(ValueError, match="expects uint8 images"):
        augment_frames(frames(2).float(), np.arange(2))
    with pytest.raises(ConfigError, match=r"AugmentConfig.grayscale_p must be in \[0, 1\], got 1.5"):
        AugmentConfig(grayscale_p=1.5)
    with pytest.raises(ConfigError, match="AugmentConfig.brightness"):
        AugmentConfig(brightness=1.0)


def test_view_seeds_are_distinct_and_stable():
    rows = np.arange(1000)
    a = view_seeds(0, 1, rows)
    assert a.dtype == np.int64 and (a >= 0).all() and len(np.unique(a)) == 1000
    assert np.array_equal(a, view_seeds(0, 1, rows))
    assert not np.intersect1d(a, view_seeds(0, 2, rows)).size
    assert not np.intersect1d(a, view_seeds(1, 1, rows)).size
    views = np.array([1, 2, 1, 3])
    per_row = view_seeds(0, views, rows[:4])  # one view per row, as training draws them
    assert all(per_row[i] == view_seeds(0, int(v), rows[i : i + 1])[0] for i, v in enumerate(views))


# -- feature cache ----------------------------------------------------------------------------------------


class CountingPixels(PixelPatchEncoder):
    """The real pixel encoder, counting its calls."""

    def __init__(self, patch: int = 16):
        super().__init__(patch)
        self.calls = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().encode(images)


class FailingPixels(CountingPixels):
    """Fails on its second batch, like a run killed half-way."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.calls == 1:
            raise RuntimeError("backbone failed")
        return super().encode(images)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> RobotDataset:
    root = tmp_path_factory.mktemp("feat") / "ds"
    write_toy(root, n=3, length=12, size=64)  # 12 + 15 + 18 = 45 frames
    return RobotDataset(root)


def test_views_equal_direct_encoding(dataset, tmp_path):
    enc = EfficientNetLite0Encoder()
    cache = build_feature_cache(
        dataset, "main", enc, views=2, seed=5, cache_dir=tmp_path / "f", frame_cache_dir=tmp_path / "fr", batch_size=16
    )
    assert cache.shape == (2, 45, 16, 112) and cache.views == 2
    assert (cache.num_patches, cache.dim, cache.num_frames) == (16, 112, 45)
    assert cache.encoder == "efficientnet-lite0/stage5"
    # Frames of episode 1 (rows 12..26) read through the dataset, encoded in one different batch.
    attach_frame_caches(dataset, ["main"], cache_dir=tmp_path / "fr", progress=False)
    t = np.array([0, 3, 14])
    rows = dataset.frame_offsets[1] + t
    imgs = torch.from_numpy(dataset.frames(1, "main", t)).permute(0, 3, 1, 2)  # (3, 3, 64, 64)
    clean = enc.encode(imgs)
    aug = enc.encode(augment_frames(imgs, view_seeds(5, 1, rows), AugmentConfig()))
    tol = dict(rtol=2e-3, atol=2e-3 * clean.abs().max().item())
    torch.testing.assert_close(cache.get(rows), clean, **tol)
    torch.testing.assert_close(cache.get(rows, 1), aug, **tol)
    mixed = cache.get(rows, np.array([1, 0, 1]))
    torch.testing.assert_close(mixed[[0, 2]], aug[[0, 2]], **tol)
    torch.testing.assert_close(mixed[1], clean[1], **tol)
    assert not torch.allclose(cache.get(rows, 1), cache.get(rows, 0), **tol)  # view 1 is augmented


def test_second_build_reuses_the_cache(dataset, tmp_path):
    kw = dict(views=2, cache_dir=tmp_path / "f", frame_cache_dir=tmp_path / "fr", batch_size=20, progress=False)
    first = CountingPixels()
    cache = build_feature_cache(dataset, "observation.images.main", first, **kw)
    assert first.calls == 3 * 2  # 45 frames in batches of 20, two views
    mtime = cache.path.stat().st_mtime_ns
    again = CountingPixels()
    reused = build_feature_cache(dataset, "main", again, **kw)
    assert again.calls == 0 and reused.path == cache.path and cache.path.stat().st_mtime_ns == mtime
    assert torch.equal(reused.get(np.arange(45), 1), cache.get(np.arange(45), 1))
    # The key covers the seed and augmentation of augmented views, but not of a clean-only cache.
    other = feature_cache_path(dataset, "main", first, views=2, seed=1, cache_dir=tmp_path / "f")
    assert other != cache.path
    strong = feature_cache_path(dataset, "main", first, views=2, augment=AugmentConfig(0.4), cache_dir=tmp_path / "f")
    assert strong != cache.path
    a = feature_cache_path(dataset, "main", first, views=1, seed=1, cache_dir=tmp_path / "f")
    b = feature_cache_path(dataset, "main", first, views=1, augment=AugmentConfig(0.4), cache_dir=tmp_path / "f")
    assert a == b
    assert feature_cache_path(dataset, "main", PixelPatchEncoder(8), cache_dir=tmp_path / "f") != a
    # A cache can be opened by path, and pickled (for DataLoader workers) without its data.
    opened = FeatureCache.open(cache.path.with_suffix(".json"))
    assert opened.shape == cache.shape
    clone = pickle.loads(pickle.dumps(opened))
    assert len(pickle.dumps(opened)) < 10_000
    assert torch.equal(clone.get([3, 4]), cache.get([3, 4]))


def test_clean_readers_reuse_any_cache_of_the_same_encoder(dataset, tmp_path):
    """A clean-only reader (evaluation, labelling, NTP) finds the VD-VAE's augmented-view cache and
    reads its view 0, which equals a clean-only build; other encoders and truncated files do not match."""
    kw = dict(cache_dir=tmp_path / "f", frame_cache_dir=tmp_path / "fr", batch_size=20, progress=False)
    assert find_clean_cache(dataset, "main", CountingPixels(), cache_dir=tmp_path / "f") is None
    two = build_feature_cache(dataset, "main", CountingPixels(), views=2, seed=3, **kw)
    counter = CountingPixels()
    found = find_clean_cache(dataset, "main", counter, cache_dir=tmp_path / "f")
    assert found is not None and found.path == two.path and counter.calls == 0
    clean = build_feature_cache(dataset, "main", CountingPixels(), views=1, cache_dir=tmp_path / "g",
                                frame_cache_dir=tmp_path / "fr", batch_size=20, progress=False)  # fmt: skip
    assert torch.equal(found.get(np.arange(45)), clean.get(np.arange(45)))
    assert find_clean_cache(dataset, "main", PixelPatchEncoder(8), cache_dir=tmp_path / "f") is None
    one = build_feature_cache(dataset, "main", CountingPixels(), views=1, **kw)
    assert find_clean_cache(dataset, "main", CountingPixels(), cache_dir=tmp_path / "f").path == one.path
    one.path.write_bytes(one.path.read_bytes()[:-2])  # truncated: skipped for the next complete one
    assert find_clean_cache(dataset, "main", CountingPixels(), cache_dir=tmp_path / "f").path == two.path


def test_writes_are_atomic(dataset, tmp_path):
    kw = dict(cache_dir=tmp_path / "f", frame_cache_dir=tmp_path / "fr", batch_size=20, progress=False)
    with pytest.raises(RuntimeError, match="backbone failed"):
        build_feature_cache(dataset, "main", FailingPixels(), **kw)
    assert [p for p in (tmp_path / "f").rglob("*") if p.is_file()] == []  # nothing half-written left
    cache = build_feature_cache(dataset, "main", CountingPixels(), **kw)
    files = sorted(p.name for p in cache.path.parent.iterdir())
    assert files == [cache.path.name, cache.path.with_suffix(".json").name]
    # A truncated data file is detected on open.
    data = cache.path.read_bytes()
    cache.path.write_bytes(data[:-2])
    with pytest.raises(DatasetError, match="is truncated"):
        FeatureCache.open(cache.path)


def test_errors_name_the_offending_value(dataset, tmp_path):
    kw = dict(cache_dir=tmp_path / "f", frame_cache_dir=tmp_path / "fr", progress=False)
    with pytest.raises(DatasetError, match=r"camera 'wrist' does not exist; available cameras"):
        build_feature_cache(dataset, "wrist", CountingPixels(), **kw)
    with pytest.raises(ValueError, match="views must be >= 1"):
        build_feature_cache(dataset, "main", CountingPixels(), views=0, **kw)
    cache = build_feature_cache(dataset, "main", CountingPixels(), **kw)
    with pytest.raises(IndexError, match=rf"{cache.path}: row 45 is out of range \(the cache has 45\)"):
        cache.get(np.array([0, 45]))
    with pytest.raises(IndexError, match=r"row -1 is out of range"):
        cache.get(np.array([-1]))
    with pytest.raises(IndexError, match=rf"{cache.path}: view 1 is out of range \(the cache has 1 views\)"):
        cache.get(np.array([0]), 1)
    with pytest.raises(DatasetError, match="missing or incomplete"):
        FeatureCache.open(Path(tmp_path / "nothing.f16"))
