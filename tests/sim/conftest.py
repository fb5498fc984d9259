# Choose MuJoCo's headless GL backend before any test module imports a simulator (and with it mujoco).
import clap_vla.sim  # noqa: F401
