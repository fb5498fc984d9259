"""Euler-angle conventions, in numpy.

Convention (docs/conventions.md): `rpy = (roll, pitch, yaw)` are extrinsic rotations about the fixed
x, y and z axes, applied in that order, so R = Rz(yaw) @ Ry(pitch) @ Rx(roll). This equals
scipy's `Rotation.from_euler("xyz", rpy)` (lower case = extrinsic), which the tests use as the
float64 reference. Angles are in radians; roll and yaw lie in (-pi, pi], pitch in [-pi/2, pi/2].
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll, pitch, yaw -> (..., 3, 3) rotation matrices."""
    rpy = np.asarray(rpy, dtype=np.float64)
    r, p, y = rpy[..., 0], rpy[..., 1], rpy[..., 2]
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    m = np.empty((*rpy.shape[:-1], 3, 3), dtype=np.float64)
    m[..., 0, 0] = cy * cp
    m[..., 0, 1] = cy * sp * sr - sy * cr
    m[..., 0, 2] = cy * sp * cr + sy * sr
    m[..., 1, 0] = sy * cp
    m[..., 1, 1] = sy * sp * sr + cy * cr
    m[..., 1, 2] = sy * sp * cr - cy * sr
    m[..., 2, 0] = -sp
    m[..., 2, 1] = cp * sr
    m[..., 2, 2] = cp * cr
    return m


def matrix_to_euler(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) roll, pitch, yaw.

    At gimbal lock (|pitch| = pi/2) roll and yaw are not separable; roll is set to 0 and the whole
    rotation about z goes into yaw, which reproduces the same matrix.
    """
    m = np.asarray(m, dtype=np.float64)
    sp = np.clip(-m[..., 2, 0], -1.0, 1.0)
    pitch = np.arcsin(sp)
    cp = np.sqrt(m[..., 2, 1] ** 2 + m[..., 2, 2] ** 2)
    locked = cp < 1e-9
    roll = np.where(locked, 0.0, np.arctan2(m[..., 2, 1], m[..., 2, 2]))
    yaw = np.where(locked, np.arctan2(-m[..., 0, 1], m[..., 1, 1]), np.arctan2(m[..., 1, 0], m[..., 0, 0]))
    return np.stack([roll, pitch, yaw], axis=-1)
