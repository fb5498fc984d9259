"""Requests and replies checked against the Observation contract of `clap_vla.types`.

A request must be the observation dict itself (what openpi's client sends: `infer(obs)` packs `obs`):
every contract key present with the documented type, dtype and shape. Extra keys pass through to the
policy untouched. A refused request raises `RequestError` naming the key, what arrived and what was
expected; a policy reply that breaks the contract raises `PolicyOutputError` (a server fault).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clap_vla.serve.protocol import RequestError
from clap_vla.types import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE, Observation

REQUIRED = (IMAGES, STATE, INSTRUCTION, ROBOT_TYPE)
ARM_DIM = 7  # per arm [x, y, z, roll, pitch, yaw, gripper]
STATE_DIMS = (ARM_DIM, 2 * ARM_DIM)  # one or two arms


class PolicyOutputError(RuntimeError):
    """The served policy returned something other than a (k, n*7) chunk of finite numbers."""


def describe(value: Any) -> str:
    """What arrived, for error messages: dtype and shape of an array, else the type."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    if isinstance(value, np.generic):
        return f"{value.dtype} scalar"
    return f"{type(value).__name__} value"


def validate_observation(obs: Any, *, max_image_side: int, max_cameras: int) -> Observation:
    """The observation with its state as float32, or `RequestError` for the first contract violation."""
    if not isinstance(obs, dict):
        raise RequestError(f"the request must be an observation map with keys {list(REQUIRED)}, got {describe(obs)}")
    missing = [k for k in REQUIRED if k not in obs]
    if missing:
        raise RequestError(
            f"missing key{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}: an observation has "
            f"{list(REQUIRED)} (got {sorted(map(str, obs))})"
        )
    images = obs[IMAGES]
    if not isinstance(images, dict) or not 1 <= len(images) <= max_cameras:
        got = f"{len(images)} cameras" if isinstance(images, dict) else describe(images)
        raise RequestError(
            f"{IMAGES}: expected a map of 1 to {max_cameras} cameras, camera name -> (h, w, 3) uint8 array; got {got}"
        )
    for cam, img in images.items():
        if not isinstance(cam, str):
            raise RequestError(f"{IMAGES}: camera names must be str, got {describe(cam)} ({cam!r})")
        ok = isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        if not (ok and 1 <= img.shape[0] <= max_image_side and 1 <= img.shape[1] <= max_image_side):
            raise RequestError(
                f"{IMAGES}[{cam!r}]: expected a uint8 array of shape (h, w, 3) with 1 <= h, w <= {max_image_side}, "
                f"got {describe(img)}"
            )
    state = obs[STATE]
    if not (isinstance(state, np.ndarray) and state.dtype.kind == "f" and state.ndim == 1 and len(state) in STATE_DIMS):
        raise RequestError(
            f"{STATE}: expected a float array of shape (7,) or (14,) (per arm x, y, z, roll, pitch, yaw, gripper), "
            f"got {describe(state)}"
        )
    if not np.isfinite(state).all():
        raise RequestError(f"{STATE}: non-finite values at indices {np.flatnonzero(~np.isfinite(state)).tolist()}")
    for key in (INSTRUCTION, ROBOT_TYPE):
        if not isinstance(obs[key], str):
            raise RequestError(f"{key}: expected a str, got {describe(obs[key])}")
    return {**obs, STATE: state.astype(np.float32)}


def check_actions(actions: Any, state_dim: int) -> np.ndarray:
    """A policy's reply as the (k, n*7) float32 chunk the contract promises, or `PolicyOutputError`."""
    out = np.asarray(actions)
    if out.ndim != 2 or out.shape[0] < 1 or out.shape[1] != state_dim or out.dtype.kind not in "iuf":
        raise PolicyOutputError(
            f"the policy returned {describe(out)}; expected a (k, {state_dim}) float chunk with k >= 1 "
            f"(state has {state_dim} values)"
        )
    out = out.astype(np.float32)
    if not np.isfinite(out).all():
        raise PolicyOutputError(f"the policy returned non-finite actions (shape {out.shape})")
    return out


__all__ = ["REQUIRED", "PolicyOutputError", "check_actions", "describe", "validate_observation"]
