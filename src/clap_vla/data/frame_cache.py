"""Decoded-frame cache: every frame of one camera as a uint8 memmap (T_total, h, w, 3).

Decoding two frames per training sample costs milliseconds; reading them from a memmap costs
microseconds. The cache is built once per (dataset fingerprint, camera) by decoding each video file
sequentially, written atomically, and found again by later runs. Size: T_total * h * w * 3 bytes
(50 episodes x 100 frames at 128x128 = 245 MB).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clap_vla.data.atomic import atomic_write_text
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.video import VideoReader
from clap_vla.errors import DatasetError


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLAP_CACHE_DIR", Path.home() / ".cache" / "clap_vla")) / "frames"


def frame_cache_path(ds: RobotDataset, camera: str, cache_dir: Path | None = None) -> Path:
    key = ds.camera_key(camera)
    return (cache_dir or default_cache_dir()) / ds.fingerprint() / f"{key}.u8"


def build_frame_cache(ds: RobotDataset, camera: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Decode every frame of `camera` into a memmap (skipped when a complete cache exists)."""
    key = ds.camera_key(camera)
    path = frame_cache_path(ds, key, cache_dir)
    meta_path = path.with_suffix(".json")
    h, w = ds.image_shape(key)
    if path.exists() and meta_path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # A raw memmap; its shape is kept in the .json sidecar.
    out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(ds.num_frames, h, w, 3))
    # Group episodes by video file so each file is decoded once, front to back.
    by_file: dict[Path, list[int]] = {}
    for rec in ds.episodes:
        by_file.setdefault(rec.video_files[key], []).append(rec.index)
    bar = tqdm(total=ds.num_frames, desc=f"caching {key}", unit="frame", disable=not progress)
    try:
        for file, eps in by_file.items():
            # Row of the cache for each frame number of this file.
            rows: dict[int, int] = {}
            for ep in eps:
                rec = ds.episodes[ep]
                first = int(round(rec.video_from_timestamp[key] * ds.fps))
                for j in range(rec.length):
                    rows[first + j] = int(ds.frame_offsets[ep]) + j
            reader = VideoReader(file)
            try:
                for t, frame in reader.iter_frames():
                    if t != t:  # no presentation time (NaN): cannot be placed
                        continue
                    row = rows.pop(int(round(t * ds.fps)), None)
                    if row is not None:
                        out[row] = frame
                        bar.update(1)
            finally:
                reader.close()
            if rows:
                n = min(rows)
                raise DatasetError(
                    f"{file}: key {key!r} lacks {len(rows)} frames that episodes {eps[0]}..{eps[-1]} need "
                    f"(first missing: frame {n} at {n / ds.fps:.3f}s); the video is truncated"
                )
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    atomic_write_text(
        meta_path, json.dumps({"dataset": str(ds.root), "camera": key, "shape": [ds.num_frames, h, w, 3]})
    )
    return path


def attach_frame_caches(
    ds: RobotDataset, cameras: list[str], cache_dir: Path | None = None, progress: bool = True
) -> None:
    for cam in cameras:
        ds.attach_frame_cache(cam, build_frame_cache(ds, cam, cache_dir, progress))
