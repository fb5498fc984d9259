"""Frozen-backbone feature cache: every frame of one camera encoded once, as float16 (V, T_total, P, C).

The VD-VAE's frame encoder is frozen (paper §III-C2), so its features are a pure function of the
frame. Running the backbone once per frame instead of once per frame per epoch removes most of the
training cost. Rows use the frame cache's numbering (row = ds.frame_offsets[ep] + t); view 0 holds
the clean frames and view v >= 1 an augmented copy (`augment_frames`) whose seed is derived from
(seed, v, row) by `view_seeds`, so training can draw a different fixed augmentation per view.

The file is keyed by (dataset fingerprint, camera, encoder.name, views, augment config, seed),
written to a temp file and renamed into place, and described by a JSON sidecar. A complete cache
is reused without touching the encoder. Size: V * T_total * P * C * 2 bytes (2 views x 5000 frames
x 64 patches x 112 channels = 143 MB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clap_vla.data.atomic import atomic_write_text
from clap_vla.data.augment import AugmentConfig, augment_frames
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.frame_cache import build_frame_cache, default_cache_dir
from clap_vla.errors import DatasetError
from clap_vla.nn.frame_encoders import FrameEncoder

FORMAT_VERSION = 1
FEATURE_DTYPE = np.float16
_MASK64 = np.uint64((1 << 64) - 1)


def default_feature_cache_dir() -> Path:
    """`$CLAP_CACHE_DIR/features` (beside the frame cache's `frames/`)."""
    return default_cache_dir().parent / "features"


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (Steele et al., SplitMix64); uint64 arrays wrap silently."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def view_seeds(seed: int, view: int | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Augmentation seed of each (view, row) pair: a hash of (seed, view, row) -> int64 (N,) >= 0.

    `view` is one int or one per row (N,); the cache's view v of row r uses view_seeds(seed, v, [r]).
    """
    rows = np.asarray(rows, dtype=np.int64)
    views = np.broadcast_to(np.asarray(view, dtype=np.int64), rows.shape)
    base = _splitmix64(np.array([seed & ((1 << 64) - 1)], dtype=np.uint64))  # (1,)
    mixed = _splitmix64(base ^ views.astype(np.uint64))  # (N,)
    return (_splitmix64(mixed ^ rows.astype(np.uint64)) >> np.uint64(1)).astype(np.int64)


def _key(
    ds: RobotDataset, camera_key: str, encoder: FrameEncoder, views: int, augment: AugmentConfig | None, seed: int
) -> dict[str, Any]:
    # A clean-only cache does not depend on the augmentation settings: share it across them.
    aug = dataclasses.asdict(augment) if views > 1 and augment is not None else None
    return {
        "format": FORMAT_VERSION,
        "fingerprint": ds.fingerprint(),
        "camera": camera_key,
        "encoder": encoder.name,
        "views": views,
        "augment": aug,
        "seed": seed if views > 1 else None,
    }


def feature_cache_path(
    ds: RobotDataset,
    camera: str,
    encoder: FrameEncoder,
    *,
    views: int = 1,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Path:
    """Where `build_feature_cache` keeps these features: `<dir>/<fingerprint>/<camera>-<hash>.f16`."""
    key = ds.camera_key(camera)
    if views > 1 and augment is None:
        augment = AugmentConfig()
    spec = _key(ds, key, encoder, views, augment, seed)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return (cache_dir or default_feature_cache_dir()) / spec["fingerprint"] / f"{key}-{digest}.f16"


class FeatureCache:
    """Read side of a feature cache: `get(rows, views)` -> float32 (N, P, C)."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.shape: tuple[int, int, int, int] = tuple(int(n) for n in meta["shape"])  # (V, T_total, P, C)
        self._mm: np.memmap | None = None

    @classmethod
    def open(cls, path: str | Path) -> FeatureCache:
        """Open a cache by its data file (`.f16`) or its sidecar (`.json`)."""
        path = Path(path)
        data, meta_path = path.with_suffix(".f16"), path.with_suffix(".json")
        if not data.exists() or not meta_path.exists():
            raise DatasetError(
                f"feature cache {data} is missing or incomplete (needs {data.name} and {meta_path.name})"
            )
        meta = json.loads(meta_path.read_text())
        shape = meta.get("shape")
        if meta.get("dtype") != "float16" or not isinstance(shape, list) or len(shape) != 4:
            raise DatasetError(
                f"{meta_path}: expected dtype 'float16' and a 4-D shape, got {meta.get('dtype')} {shape}"
            )
        want = int(np.prod(shape)) * np.dtype(FEATURE_DTYPE).itemsize
        if data.stat().st_size != want:
            raise DatasetError(
                f"{data}: holds {data.stat().st_size} bytes but its shape {shape} needs {want}; the file is truncated"
            )
        return cls(data, meta)

    # Memmaps are re-opened in each DataLoader worker instead of being pickled (which would copy them).
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mm": None}

    @property
    def array(self) -> np.memmap:
        """The raw (V, T_total, P, C) float16 memmap."""
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=FEATURE_DTYPE, mode="r", shape=self.shape)
        return self._mm

    @property
    def views(self) -> int:
        return self.shape[0]

    @property
    def num_frames(self) -> int:
        return self.shape[1]

    @property
    def num_patches(self) -> int:
        return self.shape[2]

    @property
    def dim(self) -> int:
        return self.shape[3]

    @property
    def encoder(self) -> str:
        return str(self.meta["encoder"])

    def get(self, rows: np.ndarray, views: np.ndarray | int = 0) -> torch.Tensor:
        """Features of global frame rows (N,) in views (N,) or one view -> float32 (N, P, C)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        v = np.asarray(views, dtype=np.int64)
        if v.ndim == 0:
            v = np.full(rows.shape, int(v))
        if v.shape != rows.shape:
            raise ValueError(f"{self.path}: views {v.shape} must be one int or match rows {rows.shape}")
        bad = np.nonzero((rows < 0) | (rows >= self.num_frames))[0]
        if bad.size:
            raise IndexError(f"{self.path}: row {int(rows[bad[0]])} is out of range (the cache has {self.num_frames})")
        bad = np.nonzero((v < 0) | (v >= self.views))[0]
        if bad.size:
            raise IndexError(f"{self.path}: view {int(v[bad[0]])} is out of range (the cache has {self.views} views)")
        return torch.from_numpy(self.array[v, rows].astype(np.float32))  # (N, P, C)


def find_clean_cache(
    ds: RobotDataset, camera: str, encoder: FrameEncoder, cache_dir: Path | None = None
) -> FeatureCache | None:
    """A complete cache of this dataset, camera and encoder, whatever its views, augmentation and
    seed (the one with the fewest views), or None. View 0 holds the clean frames encoded exactly as a
    clean-only cache encodes them, so the VD-VAE's training cache serves evaluation, labelling and
    the NTP stages without running the backbone again."""
    key = ds.camera_key(camera)
    fp = ds.fingerprint()
    found: list[tuple[int, Path]] = []
    for meta_path in sorted(((cache_dir or default_feature_cache_dir()) / fp).glob(f"{key}-*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        same = (meta.get("format"), meta.get("fingerprint"), meta.get("camera"), meta.get("encoder"))
        if same == (FORMAT_VERSION, fp, key, encoder.name) and int(meta.get("views", 0)) >= 1:
            found.append((int(meta["views"]), meta_path))
    for _, meta_path in sorted(found):
        try:
            return FeatureCache.open(meta_path)
        except DatasetError:
            continue  # a data file still being written or truncated: try the next
    return None


def build_feature_cache(
    ds: RobotDataset,
    camera: str,
    encoder: FrameEncoder,
    *,
    views: int = 1,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    frame_cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> FeatureCache:
    """Encode every frame of `camera` (view 0 clean, views 1.. augmented); reuse a complete cache.

    Frames are read from the decoded-frame cache, built first when missing (`frame_cache_dir`,
    default `$CLAP_CACHE_DIR/frames`). `augment` defaults to AugmentConfig() when views > 1.
    """
    key = ds.camera_key(camera)  # DatasetError naming the available cameras
    if views < 1:
        raise ValueError(f"views must be >= 1 (view 0 = clean frames), got {views}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if views > 1 and augment is None:
        augment = AugmentConfig()
    path = feature_cache_path(ds, key, encoder, views=views, augment=augment, seed=seed, cache_dir=cache_dir)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return FeatureCache.open(path)

    h, w = ds.image_shape(key)
    gh, gw = encoder.grid(h, w)
    shape = (views, ds.num_frames, gh * gw, encoder.dim)  # (V, T_total, P, C)
    frames = np.memmap(
        build_frame_cache(ds, key, frame_cache_dir, progress), dtype=np.uint8, mode="r", shape=(ds.num_frames, h, w, 3)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    out = np.memmap(tmp, dtype=FEATURE_DTYPE, mode="w+", shape=shape)
    bar = tqdm(total=ds.num_frames, desc=f"features {key} {encoder.name}", unit="frame", disable=not progress)
    try:
        for start in range(0, ds.num_frames, batch_size):
            rows = np.arange(start, min(start + batch_size, ds.num_frames))
            clean = torch.from_numpy(np.ascontiguousarray(frames[rows])).permute(0, 3, 1, 2)  # (N, 3, h, w) uint8
            for v in range(views):
                imgs = clean if v == 0 else augment_frames(clean, view_seeds(seed, v, rows), augment)
                feats = encoder.encode(imgs).cpu().numpy()  # (N, P, C) float32
                half = feats.astype(FEATURE_DTYPE)
                if not np.isfinite(half).all():
                    raise DatasetError(
                        f"{ds.root}: {encoder.name} features of {key!r} rows {rows[0]}..{rows[-1]} (view {v}) "
                        f"overflow float16 (max |x| = {np.abs(feats).max():.3g})"
                    )
                out[v, rows[0] : rows[-1] + 1] = half
            bar.update(len(rows))
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    meta = {
        **_key(ds, key, encoder, views, augment, seed),
        "dataset": str(ds.root),
        "shape": list(shape),
        "dtype": "float16",
        "grid": [gh, gw],
        "image_shape": [h, w],
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return FeatureCache.open(path)
