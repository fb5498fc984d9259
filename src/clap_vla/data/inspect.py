"""`clap data info` and `clap data validate`: describe a dataset, and check every file of it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clap_vla.data import lerobot_format as lf
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.video import TIMESTAMP_TOLERANCE_S, VideoReader
from clap_vla.errors import ClapError


def summarize(ds: RobotDataset) -> dict[str, Any]:
    lengths = np.array([e.length for e in ds.episodes])
    task_counts = Counter(t for e in ds.episodes for t in e.tasks)
    return {
        "path": str(ds.root),
        "codebase_version": ds.version,
        "robot_type": ds.info.get("robot_type"),
        "episodes": ds.num_episodes,
        "frames": ds.num_frames,
        "fps": ds.fps,
        "episode_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "action_free": not ds.has_action,
        "features": {k: {"dtype": f["dtype"], "shape": list(f["shape"])} for k, f in ds.features.items()},
        "cameras": {
            k: {
                "shape": ds.features[k]["shape"],
                "codec": (ds.features[k].get("info") or {}).get("video.codec"),
            }
            for k in ds.cameras
        },
        "tasks": dict(task_counts.most_common()),
        "subtasks": len(ds.subtasks),
    }


def format_summary(s: dict[str, Any]) -> str:
    el = s["episode_length"]
    lines = [
        f"dataset     {s['path']}  (LeRobot {s['codebase_version']}, robot_type={s['robot_type']})",
        f"episodes    {s['episodes']}   frames {s['frames']}   fps {s['fps']}   "
        f"length min/mean/max {el['min']}/{el['mean']:.1f}/{el['max']}",
        f"actions     {'none (action-free video)' if s['action_free'] else s['features'][lf.ACTION]['shape']}",
        "cameras     " + (", ".join(f"{k} {v['shape']} {v['codec']}" for k, v in s["cameras"].items()) or "none"),
        "features    " + ", ".join(f"{k}:{v['dtype']}{v['shape']}" for k, v in s["features"].items()),
        f"tasks       {len(s['tasks'])}" + (f"   subtasks {s['subtasks']}" if s["subtasks"] else ""),
    ]
    lines += [f"  {n:5d} episodes  {t}" for t, n in list(s["tasks"].items())[:20]]
    if len(s["tasks"]) > 20:
        lines.append(f"  ... and {len(s['tasks']) - 20} more")
    return "\n".join(lines)


def validate(
    root: str | Path, *, check_videos: bool = True, progress: bool = True, max_problems: int = 50
) -> list[str]:
    """Every problem found, each naming its file, episode and key; empty when the dataset is sound."""
    problems: list[str] = []
    try:
        ds = RobotDataset(root)
    except ClapError as e:
        return [str(e)]
    info = ds.info
    if int(info.get("total_episodes", ds.num_episodes)) != ds.num_episodes:
        problems.append(
            f"{ds.root / lf.INFO_PATH}: total_episodes={info['total_episodes']} "
            f"but {ds.num_episodes} episodes are listed"
        )
    if int(info.get("total_frames", ds.num_frames)) != ds.num_frames:
        problems.append(
            f"{ds.root / lf.INFO_PATH}: total_frames={info['total_frames']} but episodes sum to {ds.num_frames}"
        )
    if ds.version.startswith("v3") and not (ds.root / lf.STATS_PATH).exists():
        problems.append(f"{ds.root / lf.STATS_PATH}: missing")

    float_keys = [k for k, f in ds.features.items() if f["dtype"] in ("float32", "float64", "float16")]
    bar = tqdm(ds.episodes, desc="checking episodes", unit="ep", disable=not progress)
    for rec in bar:
        if len(problems) >= max_problems:
            break
        ep = rec.index
        try:
            cols = ds.episode_columns(ep)
        except ClapError as e:
            problems.append(str(e))
            continue
        where = f"{rec.data_file}: episode {ep}"
        if not np.array_equal(cols[lf.FRAME_INDEX], np.arange(rec.length)):
            problems.append(f"{where}: frame_index is not 0..{rec.length - 1}")
        ts = cols[lf.TIMESTAMP].astype(np.float64)
        bad_ts = np.abs(ts - np.arange(rec.length) / ds.fps) > TIMESTAMP_TOLERANCE_S + 1e-6
        if bad_ts.any():
            i = int(np.argmax(bad_ts))
            problems.append(f"{where}: timestamp {ts[i]:.5f} at frame {i} != frame_index/fps = {i / ds.fps:.5f}")
        for k in float_keys:
            v = cols[k]
            if not np.isfinite(v).all():
                frame = int(np.argwhere(~np.isfinite(v))[0][0])
                problems.append(f"{where}, key {k!r}: NaN/inf at frame {frame}")
        ti = cols[lf.TASK_INDEX]
        if ti.min() < 0 or ti.max() >= len(ds.tasks):
            problems.append(f"{where}: task_index {int(ti.max())} out of range ({len(ds.tasks)} tasks)")
        if lf.SUBTASK_INDEX in cols and ds.subtasks:
            si = cols[lf.SUBTASK_INDEX]
            if si.min() < 0 or si.max() >= len(ds.subtasks):
                problems.append(f"{where}: subtask_index {int(si.max())} out of range ({len(ds.subtasks)} subtasks)")
    bar.close()

    if check_videos:
        problems += _check_videos(ds, progress)
    return problems[:max_problems]


def _check_videos(ds: RobotDataset, progress: bool) -> list[str]:
    """Decode every video file once; each episode's span must hold exactly `length` frames."""
    problems = []
    for key in ds.cameras:
        h, w, _ = ds.features[key]["shape"]
        by_file: dict[Path, list[int]] = {}
        for rec in ds.episodes:
            by_file.setdefault(rec.video_files[key], []).append(rec.index)
        for file, eps in tqdm(by_file.items(), desc=f"decoding {key}", unit="file", disable=not progress):
            times = []
            try:
                reader = VideoReader(file)
                for t, frame in reader.iter_frames():
                    if frame.shape[:2] != (h, w):
                        problems.append(f"{file}: key {key!r}: frame size {frame.shape[:2]} != info.json {(h, w)}")
                        break
                    times.append(t)
                reader.close()
            except ClapError as e:
                problems.append(f"{e} (episodes {eps[0]}..{eps[-1]}, key {key!r})")
                continue
            times_arr = np.asarray(times)
            for ep in eps:
                rec = ds.episodes[ep]
                lo = rec.video_from_timestamp[key] - TIMESTAMP_TOLERANCE_S
                hi = rec.video_from_timestamp[key] + (rec.length - 1) / ds.fps + TIMESTAMP_TOLERANCE_S
                n = int(((times_arr >= lo) & (times_arr <= hi)).sum())
                if n != rec.length:
                    problems.append(
                        f"{file}: episode {ep}, key {key!r}: {n} decodable frames in "
                        f"[{lo:.3f}s, {hi:.3f}s] but the episode has {rec.length}"
                    )
    return problems
