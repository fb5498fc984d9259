"""Read a LeRobot dataset (v3.0 or v2.1) from disk: episodes, numeric columns, video frames.

    ds = RobotDataset("path/to/dataset")
    cols = ds.episode_columns(3)                      # {"action": (T, 7), "observation.state": ..., ...}
    frames = ds.frames(3, "observation.images.main", [0, 32])   # (2, h, w, 3) uint8

Numeric data is read per parquet file and kept in a small LRU; video frames are decoded on demand
by timestamp (`from_timestamp + frame_index / fps`), or read from the optional decoded-frame cache.
A dataset object can be handed to DataLoader workers: open files are not pickled, each worker
opens its own.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_vla.data import lerobot_format as lf
from clap_vla.data.video import ReaderPool
from clap_vla.errors import DatasetError


class RobotDataset:
    def __init__(
        self,
        root: str | Path,
        *,
        video_threads: int = 1,
        max_open_videos: int = 16,
        max_cached_data_files: int = 4,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset directory not found: {self.root}")
        self.info: dict[str, Any] = lf.read_json(self.root / lf.INFO_PATH)
        for key in ("fps", "features", "data_path", "codebase_version"):
            if key not in self.info:
                raise DatasetError(f"{self.root / lf.INFO_PATH}: missing key {key!r}")
        self.version = str(self.info["codebase_version"])
        if float(self.info["fps"]) != int(self.info["fps"]):
            raise DatasetError(f"{self.root / lf.INFO_PATH}: fps must be a whole number, got {self.info['fps']}")
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        for k, spec in self.features.items():
            if spec.get("dtype") == "image":
                raise DatasetError(
                    f"{self.root / lf.INFO_PATH}: feature {k!r} stores images inside parquet (dtype 'image'); "
                    f"only video features are supported — re-encode the dataset with videos"
                )
        self.episodes, self.tasks = lf.load_episode_records(self.root, self.info)
        sub = self.root / lf.SUBTASKS_PATH
        # Position of each episode's first frame in dataset order (decoded-frame cache rows).
        self.frame_offsets = np.concatenate([[0], np.cumsum([e.length for e in self.episodes])]).astype(np.int64)
        self.subtasks: list[str] = lf.read_string_table(sub, lf.SUBTASK_INDEX) if sub.exists() else []
        self._video_threads, self._max_open = video_threads, max_open_videos
        self._max_cached = max_cached_data_files
        self._pool: ReaderPool | None = None
        self._pool_pid = os.getpid()
        self._data_cache: OrderedDict[Path, dict[str, np.ndarray]] = OrderedDict()
        self._rows: dict[int, tuple[int, int]] = {}  # episode -> checked (start, stop) rows in its data file
        self._frame_caches: dict[str, np.ndarray] = {}
        self._frame_cache_paths: dict[str, Path] = {}

    # -- pickling for DataLoader workers -----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_data_cache"] = OrderedDict()
        state["_frame_caches"] = {}  # memmaps are re-opened from their paths in each worker
        return state

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._data_cache.clear()

    # -- description -----------------------------------------------------------------------------
    @property
    def cameras(self) -> list[str]:
        """Video feature keys, e.g. ["observation.images.main"]."""
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    @property
    def has_action(self) -> bool:
        return lf.ACTION in self.features

    @property
    def has_state(self) -> bool:
        return lf.STATE in self.features

    def dim(self, key: str) -> int:
        return int(self.features[self._key(key)]["shape"][0])

    def image_shape(self, camera: str) -> tuple[int, int]:
        h, w, _ = self.features[self.camera_key(camera)]["shape"]
        return int(h), int(w)

    def camera_key(self, camera: str) -> str:
        """Accepts "main" or "observation.images.main"; raises naming the available cameras."""
        key = camera if camera in self.features else lf.IMAGES_PREFIX + camera
        if key not in self.cameras:
            raise DatasetError(f"{self.root}: camera {camera!r} does not exist; available cameras: {self.cameras}")
        return key

    def _key(self, key: str) -> str:
        if key not in self.features:
            raise DatasetError(f"{self.root}: feature {key!r} does not exist; features: {list(self.features)}")
        return key

    def episode(self, ep: int):
        if not 0 <= ep < len(self.episodes):
            raise DatasetError(f"{self.root}: episode {ep} out of range (dataset has {len(self.episodes)})")
        return self.episodes[ep]

    def fingerprint(self) -> str:
        """Cheap content identity: metadata bytes plus the name and size of every data/video file."""
        h = hashlib.sha256()
        for rel in (lf.INFO_PATH, lf.TASKS_PATH, lf.LEGACY_EPISODES_PATH):
            p = self.root / rel
            if p.exists():
                h.update(p.read_bytes())
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and p.suffix in (".parquet", ".mp4"):
                h.update(f"{p.relative_to(self.root)}:{p.stat().st_size}".encode())
        return h.hexdigest()[:16]

    # -- numeric data ----------------------------------------------------------------------------
    def _load_data_file(self, path: Path) -> dict[str, np.ndarray]:
        cached = self._data_cache.pop(path, None)
        if cached is None:
            if not path.exists():
                raise DatasetError(f"{self.root}: data file missing: {path}")
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowException) as e:
                raise DatasetError(f"{path}: cannot read parquet ({e})") from e
            cached = {}
            for k, spec in self.features.items():
                if spec.get("dtype") in ("video", "string"):
                    continue
                if k not in table.column_names:
                    raise DatasetError(f"{path}: column {k!r} declared in info.json is missing")
                arr = lf.column_to_numpy(table.column(k), f"{path} column {k!r}")
                want = list(spec["shape"])
                got = [1] if arr.ndim == 1 else [arr.shape[1]]
                if got != want:
                    raise DatasetError(f"{path}: feature {k!r} has shape {got} but info.json declares {want}")
                cached[k] = arr
            while len(self._data_cache) >= self._max_cached:
                self._data_cache.popitem(last=False)
        self._data_cache[path] = cached
        return cached

    def episode_columns(self, ep: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Numeric columns of one episode: vectors as (T, n), scalar features as (T,)."""
        rec = self.episode(ep)
        data = self._load_data_file(rec.data_file)
        rows = self._rows.get(ep)
        if rows is None:  # locate and check the episode's rows once; every later sample reuses them
            index = data[lf.INDEX]
            start = int(np.searchsorted(index, rec.from_index))
            stop = start + rec.length
            if (
                stop > len(index)
                or index[start] != rec.from_index
                or index[stop - 1] != rec.from_index + rec.length - 1
            ):
                found = int(np.sum(data[lf.EPISODE_INDEX] == ep))
                raise DatasetError(
                    f"{rec.data_file}: episode {ep} should have {rec.length} rows from index {rec.from_index}, "
                    f"but the file holds {found} rows of it"
                )
            if data[lf.EPISODE_INDEX][start] != ep or data[lf.EPISODE_INDEX][stop - 1] != ep:
                raise DatasetError(f"{rec.data_file}: rows {start}:{stop} are not all episode {ep}")
            rows = self._rows[ep] = (start, stop)
        start, stop = rows
        keys = keys if keys is not None else list(data)
        out = {}
        for k in keys:
            if k not in data:
                raise DatasetError(f"{self.root}: episode {ep} has no numeric feature {k!r}; features: {list(data)}")
            out[k] = data[k][start:stop]
        return out

    def task_of(self, task_index: int) -> str:
        if not 0 <= task_index < len(self.tasks):
            raise DatasetError(f"{self.root}: task_index {task_index} out of range ({len(self.tasks)} tasks)")
        return self.tasks[task_index]

    # -- video -----------------------------------------------------------------------------------
    def frames(self, ep: int, camera: str, frame_indices: np.ndarray | list[int]) -> np.ndarray:
        """Frames of episode `ep` at the given in-episode indices -> (N, h, w, 3) uint8."""
        key = self.camera_key(camera)
        rec = self.episode(ep)
        idx = np.asarray(frame_indices, dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= rec.length)]
        if bad.size:
            raise DatasetError(
                f"{self.root}: episode {ep} has {rec.length} frames; requested frame {int(bad[0])} is out of range"
            )
        cache = self._frame_cache(key)
        if cache is not None:
            return cache[self.frame_offsets[ep] + idx]
        if self._pool is None or self._pool_pid != os.getpid():
            # A forked DataLoader worker must not touch the parent's open files: their read offsets
            # are shared across processes. Drop the inherited pool (unused) and open our own.
            self._pool = ReaderPool(self._max_open, self._video_threads)
            self._pool_pid = os.getpid()
        # LeRobot's query time: the episode's offset in the file plus the row's own timestamp.
        ts = rec.video_from_timestamp[key] + self.episode_columns(ep, [lf.TIMESTAMP])[lf.TIMESTAMP][idx].astype(
            np.float64
        )
        context = f"episode {ep}, key {key!r}"
        try:
            reader = self._pool.get(rec.video_files[key])
        except DatasetError as e:
            raise DatasetError(f"{e} ({context})") from e
        return reader.read(ts, context=context)

    def attach_frame_cache(self, camera: str, path: Path) -> None:
        """Serve `camera` from a decoded-frame memmap (see clap_vla.data.frame_cache)."""
        self._frame_cache_paths[self.camera_key(camera)] = Path(path)

    def _frame_cache(self, key: str) -> np.ndarray | None:
        arr = self._frame_caches.get(key)
        if arr is None and key in self._frame_cache_paths:
            h, w = self.image_shape(key)
            arr = np.memmap(self._frame_cache_paths[key], dtype=np.uint8, mode="r", shape=(self.num_frames, h, w, 3))
            self._frame_caches[key] = arr
        return arr
