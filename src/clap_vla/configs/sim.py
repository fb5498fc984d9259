"""Configs of `clap data gen` (scripted demonstrations) and `clap eval rollout` (closed loop)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from clap_vla.errors import ConfigError

Positional = tyro.conf.Positional
EnvName = Literal["metaworld", "buttons", "robosuite", "libero"]
HUMAN_ENVS = ("metaworld", "buttons")  # simulators with a human domain (`--domain human`)
HumanArm = Literal["hidden", "skin", "shown", "actor"]  # how the human domain draws the arm

# Seed spaces (docs/simulation.md): a demonstration seed is below EVAL_SEED_BASE, an evaluation
# seed at or above it, so no evaluation scene is ever a training scene.
SEED_STRIDE = 1_000_000
EVAL_SEED_BASE = 1_000_000_000
HUMAN_SEED_OFFSET = 500_000  # human-domain episodes draw other scenes than robot episodes


def _check_common(seed: int, workers: int, size: int) -> None:
    if not 0 <= seed < 1000:
        raise ConfigError(f"seed must be in 0..999 (it selects a block of {SEED_STRIDE} scene seeds), got {seed}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if size < 16 or size % 2:
        raise ConfigError(f"size must be an even number >= 16, got {size}")


@dataclass(frozen=True)
class GenConfig:
    """Scripted-expert demonstrations from a simulator, written as a LeRobot v3 dataset."""

    env: Positional[EnvName]
    """Simulator: metaworld (Sawyer, 50 tasks), buttons (Sawyer, four coloured buttons, one task per
    colour: the human-video transfer testbed, docs/simulation.md) or robosuite (two Panda arms, 14-D
    actions)."""
    out: Path
    """Dataset directory to create."""
    tasks: str = "mt10"
    """Comma-separated task names, or a task set (metaworld: mt10, mt50; buttons, robosuite: all)."""
    episodes: int = 50
    """Episodes per task."""
    workers: int = 2
    """Parallel simulator processes."""
    domain: Literal["robot", "human"] = "robot"
    """robot: images + actions + state. human: the human-domain look (metaworld: the arm hidden, a
    hand-like end effector, camera, light and table changed; buttons: a human hand and forearm in
    place of the robot, camera near the robot's, mild light changes), written WITHOUT actions; true
    actions go to an evaluation-only file."""
    size: int = 128
    """Image height and width."""
    cameras: tuple[str, ...] = ()
    """Cameras to record (default: the simulator's main camera)."""
    seed: int = 0
    """Seed block: episode k of a task uses scene seed seed*1e6 + k (+5e5 for the human domain)."""
    keep_failures: bool = False
    """Keep episodes where the expert failed (default: retry with the next seed)."""
    max_steps: int | None = None
    """Step budget per episode (default: the simulator's own)."""
    codec: Literal["av1", "h264"] = "av1"
    """Video codec."""
    human_camera_jitter: float | None = None
    """Human domain: std-dev of the per-episode camera shift, metres (0 = off; default: the
    simulator's, metaworld 0.03, buttons 0.01)."""
    human_light_jitter: float | None = None
    """Human domain: relative range of the per-episode light change (0 = off; default: metaworld
    0.3, buttons 0.15)."""
    human_table_tint: bool | None = None
    """Human domain: recolour the table per episode (default: metaworld yes, buttons no)."""
    human_arm: HumanArm | None = None
    """Human domain: how the arm is drawn. hidden = only the hand, skin-coloured (metaworld's
    default); skin = the whole arm skin-coloured; shown = the robot as shipped (only the
    camera/light/table changes remain, to tell the embodiment shift from the scene shift); actor = a
    human hand and forearm in place of the robot (buttons only, and its default)."""
    human_keep_actions: bool = False
    """Human domain: also write the true actions and state into the dataset, as robot data (a
    labelled human-look dataset, like robot data with the arm masked out: for asking what a VD-VAE
    can read off the hand when trained on it). Not action-free video."""
    overwrite: bool = False
    """Replace `out` if it exists."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        _check_common(self.seed, self.workers, self.size)
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.domain == "human" and self.env not in HUMAN_ENVS:
            raise ConfigError(f"domain=human is implemented for {' and '.join(HUMAN_ENVS)} only, got env={self.env}")
        if self.env == "libero":
            raise ConfigError("libero ships no scripted experts: generate with metaworld or robosuite")
        if (self.human_camera_jitter or 0) < 0 or not 0 <= (self.human_light_jitter or 0) < 1:
            raise ConfigError("human_camera_jitter must be >= 0 and human_light_jitter in [0, 1)")
        if self.human_arm == "actor" and self.env != "buttons":
            raise ConfigError(f"human_arm=actor needs a scene that draws a human actor (buttons), got env={self.env}")
        if self.human_keep_actions and self.domain != "human":
            raise ConfigError("human_keep_actions applies to domain=human only (robot data keeps its actions)")


GEN_PRESETS = {
    "default": GenConfig(env="metaworld", out=Path("outputs/metaworld_mt10")),
    "tiny": GenConfig(env="metaworld", out=Path("outputs/metaworld_tiny"), tasks="drawer-open", episodes=2, size=64),
    "human": GenConfig(env="metaworld", out=Path("outputs/metaworld_mt10_human"), domain="human"),
    "bimanual": GenConfig(env="robosuite", out=Path("outputs/robosuite_bimanual"), tasks="all"),
}


@dataclass(frozen=True)
class RolloutConfig:
    """Closed-loop evaluation of a policy with the simulator's own success check."""

    env: EnvName = "metaworld"
    """Simulator."""
    tasks: str = "mt10"
    """Comma-separated task names or a task set (metaworld: mt10, mt50; libero: a suite name)."""
    episodes: int = 10
    """Episodes per task."""
    policy: str = "expert"
    """expert | random | noop | a trained policy artifact directory (e.g. outputs/ntp) |
    package.module:name, where name is a factory called as (env, seed) ->
    object with infer(observation) (a class or a function), or such an object itself."""
    replan_every: int = 5
    """Execute this many rows of each predicted chunk, then ask the policy again."""
    workers: int = 2
    """Parallel environment processes."""
    seed: int = 0
    """Seed block: episode k uses scene seed 1e9 + seed*1e6 + k (never a demonstration seed)."""
    size: int = 128
    """Image height and width of the observations."""
    cameras: tuple[str, ...] = ()
    """Cameras in the observation (default: the simulator's main camera)."""
    max_steps: int | None = None
    """Step budget per episode (default: the simulator's own)."""
    action_mode: Literal["native", "absolute"] | None = None
    """LIBERO only: what the policy's rows are. native (the default): LIBERO's 7-D OSC delta command,
    as its datasets store it; absolute: our absolute end-effector pose rows (docs/conventions.md)."""
    out: Path | None = None
    """JSON file for the results (default: print only)."""
    video_episodes: int = 0
    """Save an mp4 of the first N episodes of each task next to the JSON (or in outputs/rollout)."""

    def __post_init__(self) -> None:
        _check_common(self.seed, self.workers, self.size)
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")
        if self.replan_every < 1:
            raise ConfigError(f"replan_every must be >= 1, got {self.replan_every}")
        if self.video_episodes < 0:
            raise ConfigError(f"video_episodes must be >= 0, got {self.video_episodes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.action_mode is not None and self.env != "libero":
            raise ConfigError(f"action_mode is a LIBERO option; env={self.env} takes absolute rows only")
        if self.env == "libero" and self.policy == "expert":
            raise ConfigError(
                "LIBERO has no scripted experts: pass --policy package.module:name (a trained policy), random or noop"
            )


ROLLOUT_PRESETS = {
    "default": RolloutConfig(),
    "tiny": RolloutConfig(tasks="drawer-open", episodes=2, workers=1, size=64),
    "random": RolloutConfig(policy="random"),
}
