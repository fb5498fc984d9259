"""Config of `clap demo`: the end-to-end job on embedded defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clap_vla.errors import ConfigError


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("outputs/demo")
    """Where every artifact of the demo goes; a second run resumes finished steps."""
    robot_episodes: int = 24
    """Toy robot episodes with actions."""
    video_episodes: int = 8
    """Action-free clips, imported from plain mp4 files like a user's human videos."""
    length: int = 60
    """Frames per episode."""
    size: int = 128
    """Image size."""
    horizon: int = 16
    """Chunk horizon H for windows and normalisation stats."""
    batch_size: int = 16
    """Batch size of the loading check."""
    seed: int = 0
    """Random seed."""

    def __post_init__(self) -> None:
        if self.robot_episodes < 1 or self.video_episodes < 1:
            raise ConfigError("robot_episodes and video_episodes must be >= 1")
        if self.horizon < 1 or self.horizon >= self.length:
            raise ConfigError(f"horizon must be in [1, length), got {self.horizon} with length {self.length}")


DEMO_PRESETS = {
    "default": DemoConfig(),
    "tiny": DemoConfig(
        out=Path("outputs/demo_tiny"),
        robot_episodes=3,
        video_episodes=2,
        length=24,
        size=64,
        horizon=8,
        batch_size=4,
    ),
}
