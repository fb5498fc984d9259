"""Configs of the `clap data ...` commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tyro.conf import Positional

from clap_vla.errors import ConfigError


@dataclass(frozen=True)
class InfoConfig:
    path: Positional[Path]
    """Dataset root (LeRobot v3.0 or v2.1)."""
    json: bool = False
    """Print the summary as JSON instead of text."""


@dataclass(frozen=True)
class ValidateConfig:
    path: Positional[Path]
    """Dataset root (LeRobot v3.0 or v2.1)."""
    videos: bool = True
    """Decode every video file and check each episode's frame count (slower, thorough)."""
    max_problems: int = 50
    """Stop after this many problems."""


@dataclass(frozen=True)
class ImportVideosConfig:
    src: Positional[Path]
    """Folder of video clips (.mp4, .mov, .mkv, .webm, .avi); one clip = one episode."""
    out: Path
    """Output dataset root (must not exist unless --overwrite)."""
    fps: int
    """Frame rate of the dataset; clips are resampled to it."""
    instructions: Path | None = None
    """JSON {"clip.mp4": "instruction"} or JSONL {"file", "instruction"}; default: the file name."""
    camera: str = "main"
    """Camera name: frames go to observation.images.<camera>."""
    height: int | None = None
    """Resize frames to this height (even); needs --width."""
    width: int | None = None
    """Resize frames to this width (even); needs --height."""
    codec: str = "av1"
    """Video codec of the dataset: av1 (LeRobot's default) or h264."""
    overwrite: bool = False
    """Replace an existing dataset at --out (atomically)."""

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ConfigError(f"fps must be positive, got {self.fps}")
        if (self.height is None) != (self.width is None):
            raise ConfigError(
                f"give both --height and --width or neither (got height={self.height}, width={self.width})"
            )
        if self.codec not in ("av1", "h264"):
            raise ConfigError(f"codec must be 'av1' or 'h264', got {self.codec!r}")


@dataclass(frozen=True)
class SynthConfig:
    """Procedural toy robot episodes (no simulator): for smoke tests, benchmarks and the demo."""

    out: Path = Path("outputs/toy_robot")
    """Output dataset root."""
    episodes: int = 20
    """Number of episodes."""
    length: int = 60
    """Frames per episode."""
    arms: tuple[str, ...] = ("right",)
    """Arms of the toy robot: right, or left right (bimanual, 14-D actions)."""
    size: int = 128
    """Image height and width."""
    fps: int = 10
    """Frame rate."""
    seed: int = 0
    """Random seed (episodes are deterministic given it)."""
    codec: str = "av1"
    """av1 or h264."""
    action_free: bool = False
    """Write frames and task text only (how human videos are stored)."""
    overwrite: bool = False
    """Replace an existing dataset at --out."""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.length < 2:
            raise ConfigError(f"need episodes >= 1 and length >= 2, got {self.episodes}, {self.length}")
        if self.size % 2:
            raise ConfigError(f"size must be even, got {self.size}")


SYNTH_PRESETS = {
    "default": SynthConfig(),
    "tiny": SynthConfig(episodes=4, length=24, size=64),
    "bimanual": SynthConfig(out=Path("outputs/toy_bimanual"), arms=("left", "right")),
}


@dataclass(frozen=True)
class NormStatsConfig:
    path: Positional[Path]
    """Dataset root with actions and observation.state."""
    out: Path | None = None
    """Directory for norm_stats.json (default: print only)."""
    horizon: int = 32
    """Chunk horizon H the stats are for."""
    relative: bool = True
    """Chunk-relative deltas (paper convention) rather than absolute actions."""
    max_windows: int = 20000
    """Random windows to sample when the dataset has more."""
