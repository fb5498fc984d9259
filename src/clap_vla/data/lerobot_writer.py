"""Write LeRobot v3.0 datasets: many episodes per parquet and per mp4, written atomically.

    with LeRobotWriter("out/ds", fps=30, robot_type="toy") as w:
        w.add_episode(task="put the block on the goal", images={"main": frames},
                      action=actions, state=states, subtasks=per_frame_text)

Nothing appears at the target path until the `with` block ends without an error; a crash or an
exception leaves the previous dataset (if any) untouched (clap_vla.data.atomic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_vla.data import lerobot_format as lf
from clap_vla.data.atomic import atomic_directory
from clap_vla.data.stats import aggregate_stats, image_stats, sample_frame_indices, to_json, vector_stats
from clap_vla.data.video import CODEC_INFO_NAME, VideoEncoding, VideoFileWriter
from clap_vla.errors import DatasetError

_MB = 1024 * 1024


class LeRobotWriter:
    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        robot_type: str | None = None,
        encoding: VideoEncoding | None = None,
        overwrite: bool = False,
        feature_names: dict[str, list[str]] | None = None,
        data_file_size_in_mb: int = lf.DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_file_size_in_mb: int = lf.DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        chunks_size: int = lf.DEFAULT_CHUNK_SIZE,
    ):
        if int(fps) != fps or fps <= 0:
            raise DatasetError(f"fps must be a positive integer, got {fps!r}")
        self.root = Path(root)
        self.fps = int(fps)
        self.robot_type = robot_type
        self.encoding = encoding or VideoEncoding()
        self.overwrite = overwrite
        self.feature_names = feature_names or {}
        self.data_mb, self.video_mb, self.chunks_size = (
            data_file_size_in_mb,
            video_file_size_in_mb,
            chunks_size,
        )
        self._ctx = None
        self._tmp: Path | None = None
        self.features: dict[str, dict[str, Any]] | None = None
        self._tasks: dict[str, int] = {}
        self._subtasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._ep_stats: dict[str, list[dict[str, np.ndarray]]] = {}
        self._frames_total = 0
        # open data file
        self._data_pos = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._data_bytes = 0
        # open video file per camera key: position, writer
        self._video_pos: dict[str, tuple[int, int]] = {}
        self._video: dict[str, VideoFileWriter] = {}
        self._video_info: dict[str, dict[str, Any]] = {}

    # -- context management ------------------------------------------------------------------
    def __enter__(self) -> LeRobotWriter:
        self._ctx = atomic_directory(self.root, overwrite=self.overwrite)
        self._tmp = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._ctx is not None
        try:
            if exc_type is None:
                self._finalize()
        except BaseException as e:
            self._close_files()
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        if exc_type is not None:
            self._close_files()
        return bool(self._ctx.__exit__(exc_type, exc, tb))

    # -- episodes ------------------------------------------------------------------------------
    def add_episode(
        self,
        *,
        task: str,
        images: dict[str, np.ndarray] | None = None,
        action: np.ndarray | None = None,
        state: np.ndarray | None = None,
        subtasks: list[str] | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Append one episode; returns its index. Arrays are (T, ...) with one row per frame."""
        if self._tmp is None:
            raise RuntimeError("use LeRobotWriter inside a `with` block")
        ep = len(self._episodes)
        vectors: dict[str, np.ndarray] = {}
        if action is not None:
            vectors[lf.ACTION] = np.asarray(action)
        if state is not None:
            vectors[lf.STATE] = np.asarray(state)
        for k, v in (extra or {}).items():
            vectors[k] = np.asarray(v)
        videos = {lf.IMAGES_PREFIX + k: np.asarray(v) for k, v in (images or {}).items()}
        lengths = {k: len(v) for k, v in {**vectors, **videos}.items()}
        if subtasks is not None:
            lengths[lf.SUBTASK_INDEX] = len(subtasks)
        if not lengths:
            raise DatasetError(f"episode {ep}: no data given (need images, action or state)")
        length = next(iter(lengths.values()))
        if length == 0 or any(n != length for n in lengths.values()):
            raise DatasetError(f"episode {ep}: every key needs the same number of frames (> 0), got {lengths}")
        for k, v in vectors.items():
            if v.ndim == 1:
                vectors[k] = v = v[:, None]
            if v.ndim != 2:
                raise DatasetError(f"episode {ep}, key {k!r}: expected (T, n) values, got shape {v.shape}")
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                bad = np.argwhere(~np.isfinite(v))[0]
                raise DatasetError(f"episode {ep}, key {k!r}: non-finite value {v[tuple(bad)]} at frame {bad[0]}")
        for k, v in videos.items():
            if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
                raise DatasetError(
                    f"episode {ep}, key {k!r}: frames must be uint8 (T, h, w, 3), got {v.dtype} {v.shape}"
                )
            if self.encoding.pix_fmt == "yuv420p" and (v.shape[1] % 2 or v.shape[2] % 2):
                raise DatasetError(
                    f"episode {ep}, key {k!r}: yuv420p video needs even height and width, got {v.shape[1]}x{v.shape[2]}"
                )

        first = self.features is None
        if first:
            self.features = self._make_features(vectors, videos, subtasks is not None)
        try:
            self._check_matches_features(ep, vectors, videos, subtasks is not None)
        except DatasetError:
            if first:
                self.features = None
            raise

        task_index = self._tasks.setdefault(task, len(self._tasks))
        columns: dict[str, np.ndarray] = dict(vectors)
        if subtasks is not None:
            columns[lf.SUBTASK_INDEX] = np.array([self._subtasks.setdefault(s, len(self._subtasks)) for s in subtasks])
        frame_index = np.arange(length, dtype=np.int64)
        columns[lf.TIMESTAMP] = (frame_index / self.fps).astype(np.float32)
        columns[lf.FRAME_INDEX] = frame_index
        columns[lf.EPISODE_INDEX] = np.full(length, ep, dtype=np.int64)
        columns[lf.INDEX] = self._frames_total + frame_index
        columns[lf.TASK_INDEX] = np.full(length, task_index, dtype=np.int64)

        row: dict[str, Any] = {"episode_index": ep, "tasks": [task], "length": length}
        row.update(self._write_data(columns))
        row["dataset_from_index"] = self._frames_total
        row["dataset_to_index"] = self._frames_total + length
        for k, frames in videos.items():
            row.update(self._write_video(k, frames))

        stats: dict[str, dict[str, np.ndarray]] = {}
        for k, spec in self.features.items():
            if spec["dtype"] == "video":
                stats[k] = image_stats(videos[k][sample_frame_indices(length)])
            else:
                stats[k] = vector_stats(columns[k])
            self._ep_stats.setdefault(k, []).append(stats[k])
        for k, s in stats.items():
            for name, v in to_json(s).items():
                row[f"stats/{k}/{name}"] = v
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self._episodes.append(row)
        self._frames_total += length
        return ep

    def write_file(self, relpath: str, data: bytes) -> None:
        """Put an extra file into the dataset; it appears atomically with everything else."""
        if self._tmp is None:
            raise RuntimeError("use LeRobotWriter inside a `with` block")
        path = self._tmp / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def _make_features(self, vectors: dict[str, np.ndarray], videos: dict[str, np.ndarray], subtask: bool):
        feats: dict[str, dict[str, Any]] = {}
        for k, v in vectors.items():
            dtype = "float32" if np.issubdtype(v.dtype, np.floating) else np.dtype(v.dtype).name
            names = self.feature_names.get(k)
            if names is not None and len(names) != v.shape[1]:
                raise DatasetError(f"feature {k!r}: {len(names)} names for {v.shape[1]} values")
            feats[k] = {"dtype": dtype, "shape": [int(v.shape[1])], "names": names}
        for k, v in videos.items():
            feats[k] = {
                "dtype": "video",
                "shape": [int(v.shape[1]), int(v.shape[2]), 3],
                "names": ["height", "width", "channels"],
                "info": None,
            }
        if subtask:
            feats[lf.SUBTASK_INDEX] = {"dtype": "int64", "shape": [1], "names": None}
        feats.update(json.loads(json.dumps(lf.DEFAULT_FEATURES)))
        return feats

    def _check_matches_features(self, ep, vectors, videos, subtask) -> None:
        assert self.features is not None
        given = set(vectors) | set(videos) | ({lf.SUBTASK_INDEX} if subtask else set())
        declared = {k for k in self.features if k not in lf.DEFAULT_FEATURES}
        if given != declared:
            raise DatasetError(
                f"episode {ep}: keys {sorted(given)} differ from the dataset's features {sorted(declared)} "
                f"(fixed by episode 0)"
            )
        for k, v in vectors.items():
            if [v.shape[1]] != self.features[k]["shape"]:
                raise DatasetError(f"episode {ep}, key {k!r}: shape {[v.shape[1]]} != {self.features[k]['shape']}")
            declared = np.dtype(self.features[k]["dtype"])
            if not np.issubdtype(declared, np.floating) and np.issubdtype(v.dtype, np.floating):
                raise DatasetError(
                    f"episode {ep}, key {k!r}: float values for a feature stored as {declared} (fixed by episode 0)"
                )
        for k, v in videos.items():
            if list(v.shape[1:]) != self.features[k]["shape"]:
                raise DatasetError(
                    f"episode {ep}, key {k!r}: frame shape {list(v.shape[1:])} != {self.features[k]['shape']}"
                )

    # -- files -------------------------------------------------------------------------------
    def _write_data(self, columns: dict[str, np.ndarray]) -> dict[str, int]:
        assert self.features is not None and self._tmp is not None
        arrays, fields = [], []
        for k, spec in self.features.items():
            if spec["dtype"] == "video":
                continue
            t = lf.arrow_type(spec)
            v = columns[k]
            if pa.types.is_fixed_size_list(t):
                flat = pa.array(np.ascontiguousarray(v, dtype=spec["dtype"]).reshape(-1))
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, t.list_size))
            else:
                arrays.append(pa.array(np.asarray(v, dtype=spec["dtype"]).reshape(-1), t))
            fields.append(pa.field(k, t))
        hf = {"info": {"features": {k: lf.hf_feature(s) for k, s in self.features.items() if s["dtype"] != "video"}}}
        schema = pa.schema(fields, metadata={b"huggingface": json.dumps(hf).encode()})
        table = pa.Table.from_arrays(arrays, schema=schema)
        if self._data_writer is not None and self._data_bytes + table.nbytes >= self.data_mb * _MB:
            self._data_writer.close()
            self._data_writer = None
            self._data_pos = lf.next_chunk_file(*self._data_pos, self.chunks_size)
        if self._data_writer is None:
            path = self._tmp / lf.chunk_file_path(lf.DEFAULT_DATA_PATH, *self._data_pos)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=True)
            self._data_bytes = 0
        self._data_writer.write_table(table)  # one row group per episode, as LeRobot writes
        self._data_bytes += table.nbytes
        return {"data/chunk_index": self._data_pos[0], "data/file_index": self._data_pos[1]}

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        assert self._tmp is not None
        w = self._video.get(key)
        if w is not None and w.frame_count:
            # Bytes of packets muxed so far (the encoder's look-ahead still holds the last frames).
            size = w.bytes_written
            if size and size + size / w.frame_count * len(frames) >= self.video_mb * _MB:
                w.close()
                self._video_pos[key] = lf.next_chunk_file(*self._video_pos[key], self.chunks_size)
                w = None
        if w is None:
            pos = self._video_pos.setdefault(key, (0, 0))
            path = self._tmp / lf.chunk_file_path(lf.DEFAULT_VIDEO_PATH, *pos, video_key=key)
            w = self._video[key] = VideoFileWriter(path, self.fps, frames.shape[1], frames.shape[2], self.encoding)
            self._video_info.setdefault(key, self._describe_video(frames))
        start = w.frame_count / self.fps
        w.write(frames)
        pos = self._video_pos[key]
        return {
            f"videos/{key}/chunk_index": pos[0],
            f"videos/{key}/file_index": pos[1],
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": start + len(frames) / self.fps,
        }

    def _describe_video(self, frames: np.ndarray) -> dict[str, Any]:
        return {
            "video.height": int(frames.shape[1]),
            "video.width": int(frames.shape[2]),
            "video.codec": CODEC_INFO_NAME[self.encoding.encoder],
            "video.pix_fmt": self.encoding.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": self.fps,
            "video.channels": 3,
            "has_audio": False,
        }

    def _close_files(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for w in self._video.values():
            w.close()
        self._video.clear()

    def _finalize(self) -> None:
        assert self._tmp is not None
        self._close_files()
        if not self._episodes or self.features is None:
            raise DatasetError(f"{self.root}: no episodes were added; refusing to write an empty dataset")
        tmp = self._tmp
        lf.write_string_table(tmp / lf.TASKS_PATH, list(self._tasks), "task", lf.TASK_INDEX)
        if self._subtasks:
            lf.write_string_table(tmp / lf.SUBTASKS_PATH, list(self._subtasks), "subtask", lf.SUBTASK_INDEX)
        ep_path = tmp / lf.chunk_file_path(lf.DEFAULT_EPISODES_PATH, 0, 0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), ep_path, compression="snappy")
        stats = {k: to_json(aggregate_stats(v)) for k, v in self._ep_stats.items()}
        _write_json(tmp / lf.STATS_PATH, stats)
        for k, info in self._video_info.items():
            self.features[k]["info"] = info
        has_video = bool(self._video_info)
        info = {
            "codebase_version": lf.CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._frames_total,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_mb,
            "video_files_size_in_mb": self.video_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": lf.DEFAULT_DATA_PATH,
            "video_path": lf.DEFAULT_VIDEO_PATH if has_video else None,
            "features": self.features,
        }
        _write_json(tmp / lf.INFO_PATH, info)


def _write_json(path: Path, obj: Any) -> None:
    # LeRobot's layout: indent 4, UTF-8 kept as is.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False), encoding="utf-8")
