"""The contract between simulators, scripted experts, learned policies and the rollout harness.

An observation is a plain dict (so the same object crosses the policy server's msgpack wire):

    {
      "images":      {camera: (h, w, 3) uint8, upright},
      "state":       (n*7,) float32: per-arm [x, y, z, roll, pitch, yaw, gripper] of the arms the
                     robot has, in `arms` order (the dataset's `observation.state` layout),
      "instruction": str,
      "robot_type":  str,
    }

A policy returns an action chunk `(k, n*7)` float32 in the dataset's `action` layout: per arm the
ABSOLUTE end-effector target pose and gripper command for the next steps (docs/conventions.md).
The environment converts each row into its simulator's native command. The harness executes the
first `replan_every` rows, then asks again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

Observation = dict[str, Any]
IMAGES, STATE, INSTRUCTION, ROBOT_TYPE = "images", "state", "instruction", "robot_type"


@runtime_checkable
class Policy(Protocol):
    def infer(self, observation: Observation) -> np.ndarray:
        """(k, n*7) float32 action chunk for this observation; k >= 1."""
        ...


@dataclass
class StepResult:
    observation: Observation
    success: bool  # the simulator's own success criterion holds now
    done: bool  # the episode cannot continue (step budget used up)
    info: dict[str, Any] = field(default_factory=dict)


class SimEnv(Protocol):
    """One task of one simulator. `reset(seed)` is deterministic: the same seed gives the same
    initial scene, and with the same actions the same trajectory."""

    robot_type: str
    arms: tuple[str, ...]  # arm slots the flat action fills, e.g. ("right",) or ("left", "right")
    fps: int
    max_steps: int
    instruction: str

    def reset(self, seed: int) -> Observation: ...

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one row of an action chunk, shape (n*7,)."""
        ...

    def expert(self) -> Policy:
        """A scripted expert for the current episode (call after reset). Besides `infer` it has a
        `subtask: str` attribute: the phase it was in at its last `infer` (e.g. "reach the handle"),
        which data generation stores as the per-frame subtask text."""
        ...

    def close(self) -> None: ...

    # Optional: `step(row, render=False)`: the env may skip rendering this step's images (the
    # observation's "images" is then empty); the rollout harness passes it for the rows whose
    # observation no one reads (all but the last of each replan window, when not recording video).
    # `hold_action() -> (n*7,)`, the row that keeps the robot still (the `noop` policy uses
    # it); `random_action(rng) -> (n*7,)`, a random row in the env's action mode (the `random` policy
    # uses it when present); `to_native(row)` / `from_native(command)`, the conversion to the
    # simulator's command; `trial: int`, an env-specific episode index the results report (LIBERO);
    # `episode_info(success) -> dict`, what the episode did, stored with its outcome (buttons: which
    # button it went for and Table III's failure mode under "failure", which the harness counts).


def steps_without_render(env: SimEnv) -> bool:
    """Whether `env.step` takes the optional `render` keyword (see SimEnv)."""
    import inspect

    try:
        return "render" in inspect.signature(env.step).parameters
    except (TypeError, ValueError):
        return False


class EnvModule(Protocol):
    """What each simulator module (metaworld.py, robosuite_bimanual.py, libero.py) exports."""

    TASKS: tuple[str, ...]  # every task name the module can build

    def make(self, task: str, *, size: int = 128, cameras: tuple[str, ...] | None = None) -> SimEnv: ...
