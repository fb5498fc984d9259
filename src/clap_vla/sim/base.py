"""The contract between simulators, scripted experts and the rollout harness: `SimEnv`, `StepResult`.

The observation dict and the `Policy` protocol that learned policies, experts and the policy
server share are defined in `clap_vla.types` (below models, sim and serve) and re-exported here.
The environment converts each row of a policy's chunk into its simulator's native command. The
harness executes the first `replan_every` rows, then asks again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from clap_vla.types import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE, Observation, Policy

__all__ = [
    "IMAGES",
    "INSTRUCTION",
    "ROBOT_TYPE",
    "STATE",
    "EnvModule",
    "Observation",
    "Policy",
    "SimEnv",
    "StepResult",
    "steps_without_render",
]


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
