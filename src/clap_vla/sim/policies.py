"""Baseline policies for the rollout harness, and how a policy spec string becomes a policy.

A policy factory is `factory(env, seed) -> policy`, called once per episode right after
`env.reset(seed)`, in whichever process runs the episode; so it must be importable (a module-level
name). A learned policy's factory typically loads its checkpoint once and caches it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from clap_vla.errors import ConfigError
from clap_vla.sim.base import STATE, Observation, Policy, SimEnv

PolicyFactory = Callable[[SimEnv, int], Policy]


class RandomPolicy:
    """Uniformly random targets: each arm within `reach` metres of where it is, orientation kept,
    gripper command uniform in [-1, 1]. The floor every learned policy must beat."""

    def __init__(self, rng: np.random.Generator, reach: float = 0.05) -> None:
        self.rng, self.reach = rng, reach

    def infer(self, observation: Observation) -> np.ndarray:
        row = np.asarray(observation[STATE], dtype=np.float32).reshape(-1, 7).copy()
        row[:, :3] += self.rng.uniform(-self.reach, self.reach, size=(len(row), 3))
        row[:, 6] = self.rng.uniform(-1, 1, size=len(row))
        return row.reshape(1, -1)


class HoldPolicy:
    """Keeps the robot where it is (the env's `hold_action` when it has one): a no-op."""

    def __init__(self, env: SimEnv) -> None:
        self.env = env

    def infer(self, observation: Observation) -> np.ndarray:
        hold = getattr(self.env, "hold_action", None)
        row = hold() if hold is not None else np.asarray(observation[STATE], dtype=np.float32)
        return np.asarray(row, dtype=np.float32).reshape(1, -1)


class ReplayPolicy:
    """Replays recorded actions open loop, `chunk` rows per call; the harness executes
    `replan_every` of them, so the cursor advances by that much per call."""

    def __init__(self, actions: np.ndarray, replan_every: int, chunk: int = 16) -> None:
        self.actions = np.asarray(actions, dtype=np.float32)
        self.replan_every, self.chunk = replan_every, max(chunk, replan_every)
        self.cursor = 0

    def infer(self, observation: Observation) -> np.ndarray:
        i = min(self.cursor, len(self.actions) - 1)
        out = self.actions[i : i + self.chunk]
        out = np.concatenate([out, np.repeat(out[-1:], self.chunk - len(out), axis=0)])  # hold the last row
        self.cursor += self.replan_every
        return out


def expert(env: SimEnv, seed: int) -> Policy:
    return env.expert()


def random(env: SimEnv, seed: int) -> Policy:
    return RandomPolicy(np.random.default_rng([seed, 0x52414E44]))


def noop(env: SimEnv, seed: int) -> Policy:
    return HoldPolicy(env)


BUILTIN = {"expert": expert, "random": random, "noop": noop}


def load_factory(spec: str) -> PolicyFactory:
    """'expert' | 'random' | 'noop' | 'package.module:factory'."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec:
        raise ConfigError(
            f"policy {spec!r}: use one of {', '.join(BUILTIN)} or 'package.module:factory' "
            "(a callable (env, seed) -> object with infer(observation))"
        )
    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"policy {spec!r}: cannot load {attr!r} from {module!r} ({e})") from e
    if not callable(factory):
        raise ConfigError(f"policy {spec!r}: {attr!r} is not callable")
    return factory
