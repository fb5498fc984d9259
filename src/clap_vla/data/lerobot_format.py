"""LeRobot dataset format: names, feature specs and metadata files (v3.0 written and read, v2.1 read).

Written from the format's definition in LeRobot's public source (docs/data.md lists the details we
follow). Layout of a v3.0 dataset:

    meta/info.json                                   features, fps, path templates, totals
    meta/stats.json                                  per-feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                               task string (pandas index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, tasks, where its
                                                     rows and video spans live, per-episode stats
    data/chunk-000/file-000.parquet                  frames of many episodes (no video columns)
    videos/<camera key>/chunk-000/file-000.mp4       frames of many episodes, concatenated

v2.1: one parquet and one mp4 per episode, meta/episodes.jsonl, meta/tasks.jsonl,
meta/episodes_stats.jsonl.

clap-vla extension: an optional per-frame `subtask_index` (int64) column with its strings in
meta/subtasks.parquet (same layout as tasks.parquet). LeRobot loads it as an ordinary int column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_vla.errors import DatasetError

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
SUBTASKS_PATH = "meta/subtasks.parquet"
EPISODES_DIR = "meta/episodes"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
DEFAULT_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_CHUNK_SIZE = 1000  # files per chunk directory
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"

# Feature keys (named once; see ARCHITECTURE.md "Keys are named once").
ACTION = "action"
STATE = "observation.state"
IMAGES_PREFIX = "observation.images."
TIMESTAMP = "timestamp"
FRAME_INDEX = "frame_index"
EPISODE_INDEX = "episode_index"
INDEX = "index"
TASK_INDEX = "task_index"
SUBTASK_INDEX = "subtask_index"
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    TIMESTAMP: {"dtype": "float32", "shape": [1], "names": None},
    FRAME_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    EPISODE_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    INDEX: {"dtype": "int64", "shape": [1], "names": None},
    TASK_INDEX: {"dtype": "int64", "shape": [1], "names": None},
}
STAT_NAMES = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def chunk_file_path(template: str, chunk_index: int, file_index: int, **kw: Any) -> str:
    return template.format(chunk_index=chunk_index, file_index=file_index, **kw)


def next_chunk_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """Files fill a chunk directory up to `chunks_size`, then the next chunk starts at file 0."""
    return (chunk_index + 1, 0) if file_index == chunks_size - 1 else (chunk_index, file_index + 1)


def hf_feature(spec: dict[str, Any]) -> dict[str, Any]:
    """The `datasets` feature JSON that LeRobot stores in the data parquet schema metadata."""
    shape = list(spec["shape"])
    if shape == [1]:
        return {"dtype": spec["dtype"], "_type": "Value"}
    if len(shape) == 1:
        return {"feature": {"dtype": spec["dtype"], "_type": "Value"}, "length": shape[0], "_type": "List"}
    raise DatasetError(f"feature with shape {shape} is not supported in data parquet (only (1,) and (n,))")


def arrow_type(spec: dict[str, Any]) -> pa.DataType:
    """Scalars as plain columns, (n,) vectors as fixed-size lists (what `datasets` writes for them)."""
    dt = pa.from_numpy_dtype(np.dtype(spec["dtype"]))
    return dt if list(spec["shape"]) == [1] else pa.list_(dt, spec["shape"][0])


def pandas_index_metadata(index_name: str, value_name: str) -> bytes:
    """pandas metadata that makes `pd.read_parquet` restore `index_name` as the frame's index, as
    LeRobot's tasks.parquet (written by `DataFrame.to_parquet`) does."""
    meta = {
        "index_columns": [index_name],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": value_name,
                "field_name": value_name,
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": index_name,
                "field_name": index_name,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return json.dumps(meta).encode()


def write_string_table(path: Path, strings: list[str], index_col: str, value_col: str) -> None:
    """tasks.parquet layout: columns (value_col int64, index_col string) with pandas index metadata."""
    table = pa.table({value_col: pa.array(range(len(strings)), pa.int64()), index_col: pa.array(strings, pa.string())})
    table = table.replace_schema_metadata({b"pandas": pandas_index_metadata(index_col, value_col)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def read_string_table(path: Path, value_col: str) -> list[str]:
    """Strings of a tasks.parquet-style table, positioned by their index column."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: cannot read parquet ({e})") from e
    str_cols = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if value_col not in table.column_names or not str_cols:
        raise DatasetError(f"{path}: expected a string column and an int column {value_col!r}, got {table.schema}")
    idx = table.column(value_col).to_numpy()
    strings = table.column(str_cols[0]).to_pylist()
    out = [""] * len(strings)
    for i, s in zip(idx, strings, strict=True):
        if not 0 <= i < len(out):
            raise DatasetError(f"{path}: {value_col}={i} is out of range for {len(out)} rows")
        out[i] = s
    return out


@dataclass
class EpisodeRecord:
    """Where one episode lives on disk, for either format version."""

    index: int
    length: int
    tasks: list[str]
    data_file: Path
    from_index: int  # global `index` of the episode's first frame
    video_files: dict[str, Path] = field(default_factory=dict)  # camera key -> mp4
    video_from_timestamp: dict[str, float] = field(default_factory=dict)
    video_to_timestamp: dict[str, float] = field(default_factory=dict)


def read_json(path: Path) -> Any:
    if not path.exists():
        raise DatasetError(f"missing metadata file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DatasetError(f"missing metadata file {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n}: invalid JSON line ({e})") from e
    return rows


def load_episode_records(root: Path, info: dict[str, Any]) -> tuple[list[EpisodeRecord], list[str]]:
    """Episode records and the task list of a v3.0 or v2.x dataset."""
    version = str(info.get("codebase_version", ""))
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    if version.startswith("v3"):
        return _load_v3(root, info, video_keys)
    if version.startswith("v2"):
        return _load_v2(root, info, video_keys)
    raise DatasetError(f"{root / INFO_PATH}: unsupported codebase_version {version!r} (expected v3.0 or v2.1)")


def _load_v3(root: Path, info: dict[str, Any], video_keys: list[str]) -> tuple[list[EpisodeRecord], list[str]]:
    tasks_path = root / TASKS_PATH
    if not tasks_path.exists():
        raise DatasetError(f"missing metadata file {tasks_path}")
    tasks = read_string_table(tasks_path, TASK_INDEX)
    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise DatasetError(f"no episode metadata under {root / EPISODES_DIR} (expected chunk-XXX/file-XXX.parquet)")
    records: list[EpisodeRecord] = []
    for f in files:
        try:
            cols = [c for c in pq.read_schema(f).names if not c.startswith("stats/")]
            rows = pq.read_table(f, columns=cols).to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"{f}: cannot read episode metadata ({e})") from e
        for r in rows:
            try:
                rec = EpisodeRecord(
                    index=int(r[EPISODE_INDEX]),
                    length=int(r["length"]),
                    tasks=list(r["tasks"] or []),
                    data_file=root / chunk_file_path(info["data_path"], r["data/chunk_index"], r["data/file_index"]),
                    from_index=int(r["dataset_from_index"]),
                )
                for k in video_keys:
                    rec.video_files[k] = root / chunk_file_path(
                        info["video_path"],
                        r[f"videos/{k}/chunk_index"],
                        r[f"videos/{k}/file_index"],
                        video_key=k,
                    )
                    rec.video_from_timestamp[k] = float(r[f"videos/{k}/from_timestamp"])
                    rec.video_to_timestamp[k] = float(r[f"videos/{k}/to_timestamp"])
            except KeyError as e:
                raise DatasetError(f"{f}: episode row lacks column {e.args[0]!r}") from e
            records.append(rec)
    records.sort(key=lambda r: r.index)
    _check_contiguous(root, records)
    return records, tasks


def _load_v2(root: Path, info: dict[str, Any], video_keys: list[str]) -> tuple[list[EpisodeRecord], list[str]]:
    task_rows = read_jsonl(root / LEGACY_TASKS_PATH)
    tasks = [""] * len(task_rows)
    for n, r in enumerate(task_rows, 1):
        try:
            tasks[int(r[TASK_INDEX])] = r["task"]
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise DatasetError(f"{root / LEGACY_TASKS_PATH}:{n}: bad task row {r!r} ({e!r})") from e
    chunks_size = int(info.get("chunks_size", DEFAULT_CHUNK_SIZE))
    records: list[EpisodeRecord] = []
    start = 0
    rows = read_jsonl(root / LEGACY_EPISODES_PATH)
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or EPISODE_INDEX not in r or "length" not in r:
            raise DatasetError(f"{root / LEGACY_EPISODES_PATH}:{n}: row needs 'episode_index' and 'length', got {r!r}")
    for r in sorted(rows, key=lambda r: r[EPISODE_INDEX]):
        ep = int(r[EPISODE_INDEX])
        chunk = ep // chunks_size
        rec = EpisodeRecord(
            index=ep,
            length=int(r["length"]),
            tasks=list(r.get("tasks", [])),
            data_file=root / info["data_path"].format(episode_chunk=chunk, episode_index=ep),
            from_index=start,
        )
        for k in video_keys:
            rec.video_files[k] = root / info["video_path"].format(episode_chunk=chunk, video_key=k, episode_index=ep)
            rec.video_from_timestamp[k] = 0.0
            rec.video_to_timestamp[k] = rec.length / float(info["fps"])
        records.append(rec)
        start += rec.length
    _check_contiguous(root, records)
    return records, tasks


def _check_contiguous(root: Path, records: list[EpisodeRecord]) -> None:
    for i, r in enumerate(records):
        if r.index != i:
            raise DatasetError(
                f"{root}: episode indices must be 0..N-1 without gaps; position {i} holds episode {r.index}"
            )
        if r.length <= 0:
            raise DatasetError(f"{root}: episode {r.index} has length {r.length}")


def column_to_numpy(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """A scalar column -> (N,), a (fixed-size or variable) list column -> (N, n)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        n = len(col)
        if n == 0:
            return flat.reshape(0, 0)
        if flat.size % n:
            raise DatasetError(f"{where}: list column has rows of different lengths")
        return flat.reshape(n, flat.size // n)
    return col.to_numpy(zero_copy_only=False)
