"""Simulators (Meta-World, robosuite two-arm, LIBERO), scripted experts, demonstration generation
and closed-loop evaluation. Importing this package picks MuJoCo's headless GL backend (sim/gl.py),
so import it before anything imports mujoco."""

from clap_vla.sim.gl import ensure_gl

ensure_gl()
