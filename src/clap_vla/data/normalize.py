"""Action normalisation: chunk-relative deltas, gripper to [-1, 1], q01/q99 scaling to [-1, 1].

The stats live in `norm_stats.json` next to every artifact that consumes actions, so a policy can
turn its normalised output back into the robot's absolute commands (docs/conventions.md).

    pose dims:  x_n = clip((x - c) / s, -1, 1),  c = (q99 + q01) / 2,  s = (q99 - q01) / 2
    gripper:    x_n = 2 (g - g_low) / (g_high - g_low) - 1   (raw range per arm, from the data)

Quantiles are taken per arm slot and per dimension over the valid (un-padded) steps of the
chunk-relative actions, so they describe exactly what the Act-VAE sees (range R = 2, paper eq. 8).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clap_vla.data.action_space import (
    ArmLayout,
    chunk_to_absolute,
    chunk_to_relative,
    gripper_from_unit,
    gripper_to_unit,
)
from clap_vla.errors import ConfigError
from clap_vla.types import ARM_DIM, GRIPPER_INDEX, NUM_ARMS

NORM_STATS_FILE = "norm_stats.json"
_MIN_HALF_RANGE = 1e-6  # a (near-)constant dimension is centred, not blown up


@dataclass(frozen=True)
class NormStats:
    """Per-arm, per-dimension statistics of chunk-relative actions; arrays are (A, D) lists."""

    arms: tuple[str, ...]
    relative: bool
    horizon: int
    count: int
    mean: list[list[float]]
    std: list[list[float]]
    min: list[list[float]]
    max: list[list[float]]
    q01: list[list[float]]
    q99: list[list[float]]
    gripper_low: list[float]  # (A,) raw gripper range used for the [-1, 1] mapping
    gripper_high: list[float]

    def array(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name), dtype=np.float64)

    def save(self, directory: str | Path) -> Path:
        from clap_vla.data.atomic import atomic_write_text

        path = Path(directory) / NORM_STATS_FILE
        atomic_write_text(path, json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        path = Path(path)
        if path.is_dir():
            path = path / NORM_STATS_FILE
        if not path.exists():
            raise FileNotFoundError(f"no normalisation stats at {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from e
        missing = [k for k in cls.__dataclass_fields__ if k not in d]
        if missing:
            raise ConfigError(f"{path}: missing keys {missing}")
        d["arms"] = tuple(d["arms"])
        return cls(**d)


def compute_norm_stats(
    chunks: np.ndarray,
    valid: np.ndarray,
    layout: ArmLayout,
    *,
    relative: bool,
    horizon: int,
    gripper_range: tuple[np.ndarray, np.ndarray] | None = None,
) -> NormStats:
    """Stats from un-normalised chunks (N, H, A, D) (already relative when `relative`) and their
    validity masks (N, H). The gripper range defaults to the raw min/max of the gripper values."""
    chunks = np.asarray(chunks, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    if chunks.ndim != 4 or chunks.shape[2:] != (NUM_ARMS, ARM_DIM):
        raise ConfigError(f"chunks must be (N, H, {NUM_ARMS}, {ARM_DIM}), got {chunks.shape}")
    steps = chunks[valid]  # (M, A, D)
    if len(steps) == 0:
        raise ConfigError("cannot compute normalisation stats from zero valid action steps")
    q01, q99 = np.quantile(steps, [0.01, 0.99], axis=0)
    if gripper_range is None:
        g_low, g_high = steps[..., GRIPPER_INDEX].min(0), steps[..., GRIPPER_INDEX].max(0)
    else:
        g_low, g_high = (np.asarray(v, dtype=np.float64) for v in gripper_range)
    # A gripper that never moves (or an absent arm) still needs a valid range.
    g_high = np.where(g_high - g_low < _MIN_HALF_RANGE, g_low + 1.0, g_high)
    absent = ~layout.arm_mask
    q01[absent], q99[absent] = -1.0, 1.0

    def tolist(x: np.ndarray) -> list:
        return np.asarray(x, dtype=np.float64).tolist()

    return NormStats(
        arms=layout.arms,
        relative=relative,
        horizon=horizon,
        count=len(steps),
        mean=tolist(steps.mean(0)),
        std=tolist(steps.std(0)),
        min=tolist(steps.min(0)),
        max=tolist(steps.max(0)),
        q01=tolist(q01),
        q99=tolist(q99),
        gripper_low=tolist(g_low),
        gripper_high=tolist(g_high),
    )


class ActionNormalizer:
    """Absolute unified chunks <-> normalised (relative, [-1, 1]) chunks, with one set of stats."""

    def __init__(self, stats: NormStats):
        self.stats = stats
        q01, q99 = stats.array("q01"), stats.array("q99")
        self.center = (q99 + q01) / 2  # (A, D)
        half = (q99 - q01) / 2
        self.half = np.where(half < _MIN_HALF_RANGE, 1.0, half)
        self.absent = ~ArmLayout(tuple(stats.arms)).arm_mask  # (A,) slots this robot lacks
        self.g_low = stats.array("gripper_low")  # (A,)
        self.g_high = stats.array("gripper_high")

    def _gripper(self, g: np.ndarray, inverse: bool) -> np.ndarray:
        fn = gripper_from_unit if inverse else gripper_to_unit
        return np.stack([fn(g[..., i], self.g_low[i], self.g_high[i]) for i in range(NUM_ARMS)], -1)

    def normalize(self, chunk: np.ndarray, state0: np.ndarray | None) -> np.ndarray:
        """Absolute chunk (..., H, A, D) -> normalised float32 chunk in [-1, 1]."""
        x = np.asarray(chunk, dtype=np.float64)
        if self.stats.relative:
            if state0 is None:
                raise ConfigError("relative actions need the state at the chunk start (observation.state)")
            x = chunk_to_relative(x, state0)
        out = np.clip((x - self.center) / self.half, -1.0, 1.0)
        out[..., GRIPPER_INDEX] = self._gripper(x[..., GRIPPER_INDEX], inverse=False)
        out[..., self.absent, :] = 0.0  # padded arms stay zero, as in action-free samples
        return out.astype(np.float32)

    def unnormalize(self, chunk: np.ndarray, state0: np.ndarray | None) -> np.ndarray:
        """Normalised chunk (..., H, A, D) -> absolute float64 chunk in the robot's units."""
        x = np.asarray(chunk, dtype=np.float64)
        out = x * self.half + self.center
        out[..., GRIPPER_INDEX] = self._gripper(x[..., GRIPPER_INDEX], inverse=True)
        if self.stats.relative:
            if state0 is None:
                raise ConfigError("relative actions need the state at the chunk start (observation.state)")
            out = chunk_to_absolute(out, state0)
        return out
