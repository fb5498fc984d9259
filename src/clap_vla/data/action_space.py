"""The unified per-arm action layout and chunk-relative deltas (docs/conventions.md).

Every robot's actions and states are mapped into (A=2, D=7) slots, arm 0 = left, arm 1 = right,
each `[x, y, z, roll, pitch, yaw, gripper]` (paper §III-A). Single-arm robots fill the right arm and
the left arm is zero-padded and masked, as the paper does for DROID (§IV-A).

Chunk-relative deltas (reference facts, Act-VAE): for a chunk a[t:t+H] and the state s_t at its
first step, position_k = p(a_k) - p(s_t) and rotation_k = euler(R(a_k) @ R(s_t)^T), i.e. the
rotation that takes the start orientation to the target orientation, expressed in the world frame.
The gripper is not made relative; it is mapped from the robot's raw range to [-1, 1].
All maths runs in float64 numpy; results are cast back by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clap_vla.data.rotations import euler_to_matrix, matrix_to_euler
from clap_vla.errors import ConfigError
from clap_vla.types import ARM_DIM, ARM_NAMES, NUM_ARMS


@dataclass(frozen=True)
class ArmLayout:
    """Which unified arm slots a dataset's flat action/state vectors fill, in order.

    A 7-D vector is one arm (default: right); a 14-D vector is `[left, right]`.
    """

    arms: tuple[str, ...] = ("right",)

    def __post_init__(self) -> None:
        if not self.arms or len(self.arms) > NUM_ARMS:
            raise ConfigError(f"arms must name 1 or {NUM_ARMS} arms, got {self.arms!r}")
        for a in self.arms:
            if a not in ARM_NAMES:
                raise ConfigError(f"arms: unknown arm {a!r}; expected one of {ARM_NAMES}")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms: {self.arms!r} names an arm twice")

    @property
    def flat_dim(self) -> int:
        return ARM_DIM * len(self.arms)

    @property
    def slots(self) -> list[int]:
        return [ARM_NAMES.index(a) for a in self.arms]

    @property
    def arm_mask(self) -> np.ndarray:
        mask = np.zeros(NUM_ARMS, dtype=bool)
        mask[self.slots] = True
        return mask

    @classmethod
    def for_dim(cls, dim: int, where: str = "") -> ArmLayout:
        """The default layout for a flat vector of `dim` values."""
        if dim == ARM_DIM:
            return cls(("right",))
        if dim == 2 * ARM_DIM:
            return cls(("left", "right"))
        raise ConfigError(
            f"{where}: a vector of {dim} values does not fit the per-arm 7-D layout "
            f"(expected 7 for one arm or 14 for two); map it explicitly with ArmLayout"
        )

    def to_unified(self, flat: np.ndarray) -> np.ndarray:
        """(..., n*7) -> (..., A, D), zeros in the slots of arms this robot lacks."""
        flat = np.asarray(flat)
        if flat.shape[-1] != self.flat_dim:
            raise ConfigError(f"expected {self.flat_dim} values for arms {self.arms}, got {flat.shape[-1]}")
        out = np.zeros((*flat.shape[:-1], NUM_ARMS, ARM_DIM), dtype=flat.dtype)
        out[..., self.slots, :] = flat.reshape(*flat.shape[:-1], len(self.arms), ARM_DIM)
        return out

    def from_unified(self, x: np.ndarray) -> np.ndarray:
        """(..., A, D) -> (..., n*7), the robot's own flat vector."""
        x = np.asarray(x)
        return x[..., self.slots, :].reshape(*x.shape[:-2], self.flat_dim)


def chunk_to_relative(actions: np.ndarray, state0: np.ndarray) -> np.ndarray:
    """Absolute chunk (..., H, A, D) and start state (..., A, D) -> chunk-relative (..., H, A, D)."""
    a = np.asarray(actions, dtype=np.float64)
    s = np.asarray(state0, dtype=np.float64)[..., None, :, :]  # (..., 1, A, D)
    out = a.copy()
    out[..., 0:3] = a[..., 0:3] - s[..., 0:3]
    r_a = euler_to_matrix(a[..., 3:6])
    r_s = euler_to_matrix(s[..., 3:6])
    out[..., 3:6] = matrix_to_euler(r_a @ np.swapaxes(r_s, -1, -2))
    return out


def chunk_to_absolute(relative: np.ndarray, state0: np.ndarray) -> np.ndarray:
    """Inverse of `chunk_to_relative`: R(a_k) = R(delta_k) @ R(s_t), p(a_k) = p(s_t) + delta_p."""
    d = np.asarray(relative, dtype=np.float64)
    s = np.asarray(state0, dtype=np.float64)[..., None, :, :]
    out = d.copy()
    out[..., 0:3] = d[..., 0:3] + s[..., 0:3]
    out[..., 3:6] = matrix_to_euler(euler_to_matrix(d[..., 3:6]) @ euler_to_matrix(s[..., 3:6]))
    return out


def gripper_to_unit(g: np.ndarray, low: float, high: float) -> np.ndarray:
    """Raw gripper values in [low, high] -> [-1, 1] (low -> -1). Values outside are clipped."""
    if not high > low:
        raise ConfigError(f"gripper range must have high > low, got low={low}, high={high}")
    return np.clip(2.0 * (np.asarray(g, dtype=np.float64) - low) / (high - low) - 1.0, -1.0, 1.0)


def gripper_from_unit(u: np.ndarray, low: float, high: float) -> np.ndarray:
    """[-1, 1] -> raw gripper range."""
    return (np.asarray(u, dtype=np.float64) + 1.0) * 0.5 * (high - low) + low
