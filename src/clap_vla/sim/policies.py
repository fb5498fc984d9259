"""Baseline policies for the rollout harness, and how a policy spec becomes a policy per episode.

A policy spec is one of:

* a **factory**: a class or any callable without an `infer` attribute, called as
  `factory(env, seed) -> policy` once per episode right after `env.reset(seed)`, in whichever
  process runs the episode (a class with `__init__(self, env, seed)` is a factory);
* a **policy object**: an instance with `infer(observation)`, used as it is for every episode (it
  must not keep per-episode state, or must reset it itself).

With worker processes the spec travels as `'package.module:name'` and is imported in each worker, so
it must be a module-level name. A learned policy's factory typically loads its checkpoint once and
caches it in its module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clap_vla.artifacts import META
from clap_vla.errors import ConfigError
from clap_vla.sim.base import STATE, Observation, Policy, SimEnv

PolicyFactory = Callable[[SimEnv, int], Policy]
PolicySpec = Policy | PolicyFactory


def is_policy_object(spec: object) -> bool:
    """True for an instance with `infer` (used directly); False for a factory (a class, or a callable
    without `infer`)."""
    return not isinstance(spec, type) and callable(getattr(spec, "infer", None))


def episode_policy(spec: PolicySpec, env: SimEnv, seed: int) -> Policy:
    """The policy for one episode: `spec` itself if it is a policy object, else `spec(env, seed)`."""
    if is_policy_object(spec):
        return spec  # type: ignore[return-value]
    if not callable(spec):
        raise ConfigError(f"policy {spec!r} is neither a factory (env, seed) -> policy nor an object with infer()")
    policy = spec(env, seed)
    if not callable(getattr(policy, "infer", None)):
        raise ConfigError(
            f"policy factory {getattr(spec, '__qualname__', spec)!r} returned {type(policy).__name__}, "
            "which has no infer(observation) method"
        )
    return policy


class RandomPolicy:
    """The floor every learned policy must beat. With an env that provides `random_action(rng)` (e.g.
    LIBERO, whose native action mode takes delta commands) that draws each row; otherwise uniformly
    random absolute targets: each arm within `reach` metres of where it is, orientation kept,
    gripper command uniform in [-1, 1]."""

    horizon = 1  # rows per call (a server's metadata reports it)
    camera = None  # reads no image

    def __init__(self, rng: np.random.Generator, reach: float = 0.05, env: SimEnv | None = None) -> None:
        self.rng, self.reach = rng, reach
        self._env_random = getattr(env, "random_action", None)

    def infer(self, observation: Observation) -> np.ndarray:
        if self._env_random is not None:
            return np.asarray(self._env_random(self.rng), dtype=np.float32).reshape(1, -1)
        row = np.asarray(observation[STATE], dtype=np.float32).reshape(-1, 7).copy()
        row[:, :3] += self.rng.uniform(-self.reach, self.reach, size=(len(row), 3))
        row[:, 6] = self.rng.uniform(-1, 1, size=len(row))
        return row.reshape(1, -1)


class HoldPolicy:
    """Keeps the robot where it is (the env's `hold_action` when it has one): a no-op."""

    horizon = 1
    camera = None

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
    return RandomPolicy(np.random.default_rng([seed, 0x52414E44]), env=env)


def noop(env: SimEnv, seed: int) -> Policy:
    return HoldPolicy(env)


BUILTIN = {"expert": expert, "random": random, "noop": noop}


# Stage name in a trained artifact's meta.json -> "module:function" that loads its policy once per process.
ARTIFACT_POLICIES = {
    "ntp": "clap_vla.models.ntp_policy:cached_policy",
    "post": "clap_vla.models.clap_policy:cached_policy",
}


def load_artifact_policy(path: Path) -> Policy:
    """A trained policy artifact directory -> its policy object (loaded once per process)."""
    import json

    stage = json.loads((path / META).read_text()).get("stage")
    if stage not in ARTIFACT_POLICIES:
        raise ConfigError(
            f"policy {str(path)!r}: its meta.json says stage {stage!r}; policies load from artifacts of "
            f"stages {', '.join(ARTIFACT_POLICIES)}"
        )
    module, _, fn = ARTIFACT_POLICIES[stage].partition(":")
    return getattr(importlib.import_module(module), fn)(path)


def load_factory(spec: str) -> PolicySpec:
    """'expert' | 'random' | 'noop' | a trained policy artifact directory | 'ws://host:port' (a policy
    server) | 'package.module:name' -> a factory or a policy object (see the module docstring)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if spec.startswith(("ws://", "wss://")):  # a policy served by `clap serve` (or openpi's server)
        from clap_vla.serve.client import RemotePolicy

        return RemotePolicy(spec)  # connects lazily; pickles without its socket
    if (Path(spec) / META).exists():
        return load_artifact_policy(Path(spec))
    if ":" not in spec:
        raise ConfigError(
            f"policy {spec!r}: use one of {', '.join(BUILTIN)} or 'package.module:name' (a factory "
            "(env, seed) -> object with infer(observation), e.g. a class, or such an object itself)"
        )
    module, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"policy {spec!r}: cannot load {attr!r} from {module!r} ({e})") from e
    if not (is_policy_object(obj) or callable(obj)):
        raise ConfigError(
            f"policy {spec!r}: {attr!r} is a {type(obj).__name__}, neither a factory (env, seed) -> policy "
            "nor an object with infer(observation)"
        )
    return obj
