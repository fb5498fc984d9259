"""Procedural toy episodes: a top-down table, a block, and one or two end effectors that reach,
grasp and carry it. No simulator needed, so tests, benchmarks and the first demo run anywhere.

This is not a physics simulation (the Meta-World and robosuite generators are); it exists to make
well-formed robot data with known ground truth: absolute end-effector poses as actions, the
current pose as state, smooth frames, a task string and per-frame subtask text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clap_vla.types import ARM_DIM

COLORS = {"red": (220, 60, 50), "green": (60, 170, 80), "blue": (60, 90, 220), "yellow": (230, 200, 40)}
SUBTASKS = ("reach the {c} block", "grasp the {c} block", "carry the {c} block to the goal")
ARM_COLORS = {"left": (235, 235, 235), "right": (40, 40, 40)}
SKIN, FINGER = (224, 172, 140), (200, 140, 110)  # "human" style: a hand instead of a gripper


@dataclass
class ToyEpisode:
    frames: np.ndarray  # (T, h, w, 3) uint8
    state: np.ndarray  # (T, n*7) float32: current end-effector pose + gripper per arm
    action: np.ndarray  # (T, n*7) float32: absolute target pose for the next step
    task: str
    subtasks: list[str]  # (T,)


def _blend(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> None:
    img[:] = img * (1 - mask[..., None]) + np.asarray(color, np.float32) * mask[..., None]


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    # Anti-aliased edge (one pixel wide): smooth frames compress well, like camera images.
    return np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0.0, 1.0)


def _box(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, half: float) -> np.ndarray:
    d = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
    return np.clip(half - d + 0.5, 0.0, 1.0)


def make_toy_episode(
    rng: np.random.Generator,
    *,
    length: int = 60,
    arms: tuple[str, ...] = ("right",),
    size: int = 128,
    style: str = "robot",
) -> ToyEpisode:
    """One episode. Workspace x, y in [-1, 1] map to the image; z in [0, 0.5] scales the disc.
    `style="human"` draws a hand (skin-coloured palm and fingers) instead of the robot gripper."""
    if style not in ("robot", "human"):
        raise ValueError(f"style must be 'robot' or 'human', got {style!r}")
    human = style == "human"
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    block = rng.uniform(-0.6, 0.6, size=2)
    goal = rng.uniform(-0.6, 0.6, size=2)
    n = len(arms)
    t = np.linspace(0.0, 1.0, length + 1)[:, None]  # (T+1, 1)
    poses = np.zeros((length + 1, n, ARM_DIM))
    for i in range(n):
        start = rng.uniform(-0.8, 0.8, size=2)
        offset = np.array([0.0, 0.12 * (i - (n - 1) / 2) * 2])  # arms grasp side by side
        reach = np.clip(t / 0.4, 0, 1)
        carry = np.clip((t - 0.55) / 0.45, 0, 1)
        xy = start + (block + offset - start) * _ease(reach) + (goal - block) * _ease(carry)
        z = 0.4 - 0.3 * _ease(reach) + 0.25 * _ease(carry)
        rpy0 = rng.uniform(-0.3, 0.3, size=3)
        rpy1 = rpy0 + rng.uniform(-0.6, 0.6, size=3)
        rpy = rpy0 + (rpy1 - rpy0) * _ease(t)
        grip = np.where(t < 0.45, 1.0, np.where(t < 0.55, 1.0 - (t - 0.45) / 0.1, 0.0))  # 1 open, 0 closed
        poses[:, i] = np.concatenate([xy, z, rpy, grip], axis=-1)
    poses += rng.normal(0, 0.002, poses.shape) * (np.arange(ARM_DIM) < 6)
    state, action = poses[:-1], poses[1:]  # the action is the next pose

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = (size - 1) / 2
    base = np.empty((size, size, 3), np.float32)
    base[..., 0] = 150 + 40 * yy / size
    base[..., 1] = 120 + 30 * yy / size
    base[..., 2] = 90 + 20 * xx / size
    _blend(base, _disc(yy, xx, (goal[1] + 1) * scale, (goal[0] + 1) * scale, size * 0.06) * 0.5, (255, 255, 255))
    frames = np.empty((length, size, size, 3), np.uint8)
    for k in range(length):
        img = base.copy()
        carried = t[k, 0] >= 0.55
        bxy = block + (goal - block) * _ease(np.clip((t[k, 0] - 0.55) / 0.45, 0, 1)) if carried else block
        _blend(img, _box(yy, xx, (bxy[1] + 1) * scale, (bxy[0] + 1) * scale, size * 0.05), COLORS[color])
        for i, arm in enumerate(arms):
            x, y, z, _, _, yaw, g = state[k, i]
            cy, cx, r = (y + 1) * scale, (x + 1) * scale, size * (0.04 + 0.08 * z)
            _blend(img, _disc(yy, xx, cy, cx, r), SKIN if human else ARM_COLORS[arm])
            # Two jaws whose spread shows the gripper opening, oriented by yaw.
            spread = r * (0.6 + 0.8 * g)
            for sgn in (-1, 1):
                jy, jx = cy + sgn * spread * np.cos(yaw), cx + sgn * spread * np.sin(yaw)
                _blend(img, _disc(yy, xx, jy, jx, size * 0.02), FINGER if human else (200, 120, 30))
        frames[k] = np.clip(img, 0, 255).astype(np.uint8)

    phase = np.where(t[:-1, 0] < 0.4, 0, np.where(t[:-1, 0] < 0.55, 1, 2))
    return ToyEpisode(
        frames=frames,
        state=state.reshape(length, n * ARM_DIM).astype(np.float32),
        action=action.reshape(length, n * ARM_DIM).astype(np.float32),
        task=f"put the {color} block on the goal",
        subtasks=[SUBTASKS[p].format(c=color) for p in phase],
    )


def _ease(x: np.ndarray) -> np.ndarray:
    return x * x * (3 - 2 * x)
