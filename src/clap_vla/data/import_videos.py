"""Turn a folder of video clips (e.g. Ego4D-style human videos) into an action-free LeRobot v3 dataset.

Each file becomes one episode: frames resampled to the target fps (the latest source frame at or
before each target time), optionally resized, re-encoded into the dataset's mp4 files; no action
or state columns. Instructions come from a JSON object {"clip.mp4": "open the drawer", ...} or a
JSONL file of {"file": ..., "instruction": ...}; without one, the file name is used
("open_the_drawer.mp4" -> "open the drawer").
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from clap_vla.data.lerobot_writer import LeRobotWriter
from clap_vla.data.video import VideoEncoding
from clap_vla.errors import DatasetError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
_MAX_EPISODE_BYTES = 4 * 1024**3


def load_instructions(path: Path) -> dict[str, str]:
    if not path.exists():
        raise DatasetError(f"instructions file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            out = {}
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if "file" not in row or "instruction" not in row:
                        raise DatasetError(f"{path}:{n}: each line needs keys 'file' and 'instruction'")
                    out[row["file"]] = row["instruction"]
            return out
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise DatasetError(f"{path}: expected a JSON object mapping file names to instruction strings")
    return obj


def instruction_from_name(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").strip()


def decode_resampled(path: Path, fps: int, size: tuple[int, int] | None) -> np.ndarray:
    """All frames of `path` at `fps` -> (T, h, w, 3) uint8."""
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise DatasetError(f"{path}: cannot open video ({e})") from e
    frames: list[np.ndarray] = []
    with container:
        if not container.streams.video:
            raise DatasetError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # Each source frame covers [t, next frame's t); the last one covers one source frame period.
        period = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / fps
        next_t, last, last_t, t0 = 0.0, None, 0.0, None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                t0 = t if t0 is None else t0
                t -= t0
                # Emit the previous source frame for every target time it covers.
                while last is not None and next_t < t - 1e-9:
                    frames.append(last)
                    next_t = len(frames) / fps
                img = (
                    frame.reformat(width=size[1], height=size[0], format="rgb24")
                    if size
                    else frame.reformat(format="rgb24")
                )
                last, last_t = img.to_ndarray(), t
                if len(frames) * last.nbytes > _MAX_EPISODE_BYTES:
                    raise DatasetError(
                        f"{path}: clip too large to import at full size; pass --height/--width to resize"
                    )
        except av.error.FFmpegError as e:
            raise DatasetError(f"{path}: video is corrupt or truncated ({e})") from e
        while last is not None and next_t < last_t + period - 1e-9:
            frames.append(last)
            next_t = len(frames) / fps
    if not frames:
        raise DatasetError(f"{path}: no decodable frames")
    return np.stack(frames)


def import_videos(
    src: Path,
    out: Path,
    *,
    fps: int,
    instructions: Path | None = None,
    camera: str = "main",
    size: tuple[int, int] | None = None,
    codec: str = "av1",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"video folder not found: {src}")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise DatasetError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    table = load_instructions(Path(instructions)) if instructions else None
    if table is not None:
        missing = [p.name for p in files if p.name not in table]
        if missing:
            raise DatasetError(f"{instructions}: no instruction for {len(missing)} clip(s): {missing[:5]}")
    if size is not None and (size[0] % 2 or size[1] % 2):
        raise DatasetError(f"--height/--width must be even for yuv420p video, got {size[0]}x{size[1]}")
    with LeRobotWriter(out, fps=fps, robot_type="human", encoding=VideoEncoding(codec=codec), overwrite=overwrite) as w:
        shape = None
        for p in tqdm(files, desc="importing videos", unit="clip", disable=not progress):
            frames = decode_resampled(p, fps, size)
            if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sizes: drop one row/col
                frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
            if shape is None:
                shape = frames.shape[1:]
            elif frames.shape[1:] != shape:
                raise DatasetError(
                    f"{p}: frame size {frames.shape[1:3]} differs from the first clip's {shape[:2]}; "
                    f"pass --height/--width so every clip is resized to one size"
                )
            w.add_episode(task=table[p.name] if table else instruction_from_name(p), images={camera: frames})
    return Path(out)
