"""Video encode/decode on PyAV: many episodes per mp4, frame-accurate access by timestamp.

Writing follows LeRobot's defaults (AV1 via SVT-AV1, yuv420p, a key frame every 2 frames so a seek
lands next to any frame, CRF 30); h264 (libx264) is the alternative. Frame i of a file has
presentation time i / fps, so an episode that starts at file frame k has `from_timestamp = k / fps`
and its frame j is at `from_timestamp + j / fps` — the timestamp LeRobot queries.

Reading seeks to the key frame at or before the earliest requested time and decodes forward only
as far as the latest one, so a sample costs a few frames, not the whole file.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from clap_vla.errors import DatasetError

# SVT-AV1 prints a banner per stream unless told otherwise (1 = errors only).
os.environ.setdefault("SVT_LOG", "1")

# LeRobot's tolerance when matching a query timestamp to a decoded frame (seconds).
TIMESTAMP_TOLERANCE_S = 1e-4

CODEC_ALIASES = {"av1": "libsvtav1", "libsvtav1": "libsvtav1", "h264": "libx264", "libx264": "libx264"}
# The codec name that LeRobot records in info.json for each encoder.
CODEC_INFO_NAME = {"libsvtav1": "av1", "libx264": "h264"}


@dataclass(frozen=True)
class VideoEncoding:
    codec: str = "av1"
    pix_fmt: str = "yuv420p"
    crf: int = 30
    gop: int = 2
    preset: int | None = 12  # SVT-AV1 speed preset (0 slowest .. 13 fastest); None = encoder default

    @property
    def encoder(self) -> str:
        try:
            return CODEC_ALIASES[self.codec]
        except KeyError:
            raise DatasetError(f"unknown video codec {self.codec!r}; choose one of {sorted(CODEC_ALIASES)}") from None

    def options(self) -> dict[str, str]:
        opts = {"crf": str(self.crf), "g": str(self.gop)}
        if self.encoder == "libsvtav1" and self.preset is not None:
            opts["preset"] = str(self.preset)
        if self.encoder == "libx264":
            opts["preset"] = "veryfast"
        return opts


class VideoFileWriter:
    """Appends uint8 RGB frames (h, w, 3) to one mp4; `frame_count / fps` is the next timestamp."""

    def __init__(self, path: str | Path, fps: int, height: int, width: int, encoding: VideoEncoding):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.height, self.width = fps, height, width
        if encoding.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise DatasetError(f"{self.path}: yuv420p video needs even height and width, got {height}x{width}")
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(encoding.encoder, rate=fps, options=encoding.options())
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = encoding.pix_fmt
        self._stream.time_base = Fraction(1, fps)
        self.frame_count = 0
        self.bytes_written = 0  # muxed packet bytes; the file on disk lags behind the encoder

    def write(self, frames: np.ndarray) -> None:
        """frames: (N, h, w, 3) or (h, w, 3) uint8."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise DatasetError(
                f"{self.path}: frames must be uint8 (N, {self.height}, {self.width}, 3), "
                f"got {frames.dtype} {frames.shape}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frame_count
            frame.time_base = Fraction(1, self.fps)
            for packet in self._stream.encode(frame):
                self.bytes_written += packet.size
                self._container.mux(packet)
            self.frame_count += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


class VideoReader:
    """An open mp4 that decodes frames by timestamp. Not shareable across processes."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"video file missing: {self.path}")
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as e:
            raise DatasetError(f"{self.path}: cannot open video ({e})") from e
        self._stream.thread_count = threads
        self._time_base = self._stream.time_base

    def close(self) -> None:
        self._container.close()

    def read(
        self,
        timestamps: np.ndarray | list[float],
        *,
        context: str = "",
        tolerance_s: float = TIMESTAMP_TOLERANCE_S,
    ) -> np.ndarray:
        """Frames at `timestamps` (seconds) -> (N, h, w, 3) uint8, in the order asked."""
        ts = np.asarray(timestamps, dtype=np.float64)
        where = f"{self.path}{' (' + context + ')' if context else ''}"
        if ts.size == 0:
            raise DatasetError(f"{where}: no timestamps requested")
        wanted = np.unique(ts)
        found: dict[int, np.ndarray] = {}
        nearest = np.full(len(wanted), np.inf)  # per wanted time: distance to the closest decoded frame
        try:
            self._container.seek(int(wanted[0] / self._time_base), stream=self._stream, backward=True)
            for frame in self._container.decode(self._stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * self._time_base)
                d = np.abs(wanted - t)
                i = int(np.argmin(d))
                nearest = np.minimum(nearest, d)
                if d[i] < tolerance_s and i not in found:
                    found[i] = frame.to_ndarray(format="rgb24")
                    if len(found) == len(wanted):
                        break
                if t > wanted[-1] + tolerance_s:
                    break
        except av.error.FFmpegError as e:
            raise DatasetError(f"{where}: video is corrupt or truncated ({e})") from e
        if len(found) != len(wanted):
            miss = [i for i in range(len(wanted)) if i not in found]
            missing = [round(float(wanted[i]), 4) for i in miss]
            raise DatasetError(
                f"{where}: no frame within {tolerance_s}s of timestamps {missing[:5]} "
                f"(closest decoded frame was {float(nearest[miss].min()):.4f}s away); the video is truncated "
                f"or its timestamps disagree with the metadata"
            )
        index = np.searchsorted(wanted, ts)
        return np.stack([found[int(i)] for i in index])

    def iter_frames(self):
        """Yield (timestamp in seconds, (h, w, 3) uint8) for every frame, front to back."""
        try:
            self._container.seek(0, stream=self._stream)
            for frame in self._container.decode(self._stream):
                t = float(frame.pts * self._time_base) if frame.pts is not None else float("nan")
                yield t, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise DatasetError(f"{self.path}: video is corrupt or truncated ({e})") from e

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every frame and its timestamp: (T, h, w, 3) uint8, (T,) seconds."""
        pairs = list(self.iter_frames())
        if not pairs:
            raise DatasetError(f"{self.path}: video has no decodable frames")
        return np.stack([f for _, f in pairs]), np.asarray([t for t, _ in pairs])


class ReaderPool:
    """A small LRU of open VideoReaders, one pool per process (DataLoader workers build their own)."""

    def __init__(self, capacity: int = 16, threads: int = 1):
        self.capacity, self.threads = capacity, threads
        self._readers: OrderedDict[Path, VideoReader] = OrderedDict()

    def get(self, path: Path) -> VideoReader:
        r = self._readers.pop(path, None)
        if r is None:
            r = VideoReader(path, threads=self.threads)
            while len(self._readers) >= self.capacity:
                self._readers.popitem(last=False)[1].close()
        self._readers[path] = r
        return r

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
