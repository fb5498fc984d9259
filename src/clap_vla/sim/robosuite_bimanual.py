"""robosuite's TwoArmLift with two Panda arms behind the `SimEnv` contract of `sim/base.py`.

Scene: robosuite's "single-arm-parallel" configuration, two Pandas side by side at x = -0.56 m, both
facing +x over the table, with the pot (green handle0, blue handle1) in between. We use the parallel
layout rather than "opposed" because it matches the paper's dual-arm robots (two arms next to each
other with a shared forward direction), where "left" and "right" mean the same thing for both arms.

Left / right (docs/conventions.md: slot 0 = left, slot 1 = right) is decided geometrically: the
robots' common forward direction f is their base x axis, the left direction is z x f (z up, a
right-handed world), and the robot whose base lies further along it is the left arm. In this scene
f = +x, left = +y, so robosuite's robot1 (base y = +0.25) is LEFT and robot0 (y = -0.25) is RIGHT;
robosuite's native action is ordered [robot0, robot1], i.e. [right, left], and `to_native` swaps.

State (per arm, world frame): the gripper's grip site (the point between the finger pads, which is
exactly the point and frame robosuite's OSC controller tracks) as `[x, y, z]`, its orientation as
extrinsic-xyz euler angles `[roll, pitch, yaw]` (`clap_vla.data.rotations.matrix_to_euler`), and the
finger opening in [0, 1] (1 = fully open, 0.08 m between the fingers).

Action (per arm): the ABSOLUTE target grip-site pose `[x, y, z, roll, pitch, yaw]` for the end of
the step and a gripper command `g` (-1 open, +1 close; robosuite only uses its sign). `to_native`
turns it into the OSC_POSE delta command (see `_osc_input` for the math), so any target within one
step's reach (5 cm and 0.5 rad) becomes the controller's goal exactly.

Images: rendered with our own `mujoco.Renderer` (shadows and reflections off, collision geoms hidden
as robosuite does), which returns rows top-first, i.e. upright. robosuite's own offscreen path
returns OpenGL bottom-up images; we never use it. The default camera, "agentview", looks from the far
side of the table back at the robots, so the LEFT arm appears on the image's right.

Determinism: robosuite draws the pot placement and the arms' initial joint noise from numpy's global
RNG, so `reset(seed)` seeds it for the duration of the reset (and restores the caller's RNG state).
We reset softly (`hard_reset=False`: the model is built once), and clear the grippers' ramped command,
which robosuite 1.4.0 keeps across soft resets (1.4.1 clears it itself).

Tested with robosuite 1.4.0 and 1.4.1 on mujoco 3.3.0.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from clap_vla.data.rotations import euler_to_matrix, matrix_to_euler
from clap_vla.errors import ConfigError
from clap_vla.sim.base import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE, Observation, StepResult
from clap_vla.sim.gl import ensure_gl

TASKS = ("TwoArmLift",)
INSTRUCTIONS = {"TwoArmLift": "lift the pot with both arms"}
SUBTASKS = ("reach the handles", "grasp the handles", "lift the pot")
CAMERAS = (
    "frontview",
    "birdview",
    "agentview",
    "sideview",
    "robot0_robotview",  # robot0 = the RIGHT arm (see the module docstring)
    "robot0_eye_in_hand",
    "robot1_robotview",  # robot1 = the LEFT arm
    "robot1_eye_in_hand",
)
DEFAULT_CAMERAS = ("agentview",)
CONFIGURATION = "single-arm-parallel"
ROBOT_TYPE_NAME = "panda_bimanual"
ARMS = ("left", "right")
ARM_DIM = 7
FPS = 20  # robosuite control_freq: one step = 25 physics steps of 2 ms
MAX_STEPS = 300  # 15 s; the expert needs about 80 steps
FINGER_SPAN = 0.08  # m between the Panda's fingers when fully open (two slide joints of 0.04 m)

_MACRO_NOTICE = ("private macro file", "setup_macros.py")


class _DropMacroNotice(logging.Filter):
    """robosuite logs three warnings on import when the user has no `macros_private.py`; the
    defaults are what we want, so the notice is noise. Drops only those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(s in msg for s in _MACRO_NOTICE)


def prepare_import() -> None:
    """Call before anything imports robosuite (or mujoco): picks the GL backend, which MuJoCo reads
    once at import, and silences robosuite's import-time private-macro notice (three log records and
    the DeprecationWarning of the `Logger.warn` call that emits them). Idempotent."""
    ensure_gl()
    logger = logging.getLogger("robosuite_logs")  # robosuite.utils.log_utils.ROBOSUITE_DEFAULT_LOGGER
    if not any(isinstance(f, _DropMacroNotice) for f in logger.filters):
        logger.addFilter(_DropMacroNotice())
        warnings.filterwarnings("ignore", "The 'warn' method is deprecated", DeprecationWarning, r"robosuite\.")


def import_robosuite() -> Any:
    """Import robosuite after `prepare_import`."""
    prepare_import()
    import robosuite

    return robosuite


# -- rotation helpers (world frame) ------------------------------------------------------------------
def rotvec_from_matrix(m: np.ndarray) -> np.ndarray:
    """Axis-angle vector (axis * angle, angle in [0, pi]) of a rotation matrix, via the quaternion
    (robust near 0 and pi). Inverse of `matrix_from_rotvec`."""
    m = np.asarray(m, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    # Shepperd's method: pick the largest of w, x, y, z to divide by.
    cand = np.array([tr, m[0, 0], m[1, 1], m[2, 2]])
    i = int(np.argmax(cand))
    if i == 0:
        w = 0.5 * np.sqrt(1.0 + tr)
        x, y, z = (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)
    elif i == 1:
        x = 0.5 * np.sqrt(max(1.0 + 2 * m[0, 0] - tr, 0.0))
        w, y, z = (m[2, 1] - m[1, 2]) / (4 * x), (m[0, 1] + m[1, 0]) / (4 * x), (m[0, 2] + m[2, 0]) / (4 * x)
    elif i == 2:
        y = 0.5 * np.sqrt(max(1.0 + 2 * m[1, 1] - tr, 0.0))
        w, x, z = (m[0, 2] - m[2, 0]) / (4 * y), (m[0, 1] + m[1, 0]) / (4 * y), (m[1, 2] + m[2, 1]) / (4 * y)
    else:
        z = 0.5 * np.sqrt(max(1.0 + 2 * m[2, 2] - tr, 0.0))
        w, x, y = (m[1, 0] - m[0, 1]) / (4 * z), (m[0, 2] + m[2, 0]) / (4 * z), (m[1, 2] + m[2, 1]) / (4 * z)
    v = np.array([x, y, z])
    if w < 0:  # same rotation, take the short way round
        w, v = -w, -v
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.zeros(3)
    return v / s * (2.0 * np.arctan2(s, w))


def matrix_from_rotvec(v: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: the rotation by |v| about v / |v|."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v)
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * (kx @ kx)


def _osc_input(delta: np.ndarray, ctrl: Any) -> np.ndarray:
    """The OSC_POSE input u (6,) that makes the controller's goal `current + delta`.

    robosuite (controllers/base_controller.py `scale_action`, osc.py `set_goal`) does
        y = (clip(u, in_min, in_max) - in_c) * s + out_c,   s = |out_max - out_min| / |in_max - in_min|,
    with in_c, out_c the centres of the input / output ranges, then sets
        goal_pos = ee_pos + y[:3],   goal_ori = Rot(y[3:]) @ ee_ori   (y[3:] an axis-angle vector, world frame).
    So u = (delta - out_c) / s + in_c. With the default ranges (u in [-1, 1], y in +-0.05 m and
    +-0.5 rad) that is u = delta / [0.05, 0.05, 0.05, 0.5, 0.5, 0.5]. If a part (position or rotation)
    would be clipped, we shrink that part uniformly instead, so the goal stays on the straight line
    (geodesic) towards the target and robosuite's clip never changes the direction.
    """
    in_min, in_max = np.asarray(ctrl.input_min, float), np.asarray(ctrl.input_max, float)
    out_min, out_max = np.asarray(ctrl.output_min, float), np.asarray(ctrl.output_max, float)
    s = np.abs(out_max - out_min) / np.abs(in_max - in_min)
    in_c, out_c = (in_max + in_min) / 2, (out_max + out_min) / 2
    u = (np.asarray(delta, float) - out_c) / s
    half = (in_max - in_min) / 2
    for part in (slice(0, 3), slice(3, 6)):
        f = max(1.0, float(np.max(np.abs(u[part]) / half[part])))
        u[part] /= f
    return u + in_c


def _osc_output(u: np.ndarray, ctrl: Any) -> np.ndarray:
    """robosuite's `scale_action`: the delta (6,) an OSC_POSE input u produces."""
    in_min, in_max = np.asarray(ctrl.input_min, float), np.asarray(ctrl.input_max, float)
    out_min, out_max = np.asarray(ctrl.output_min, float), np.asarray(ctrl.output_max, float)
    s = np.abs(out_max - out_min) / np.abs(in_max - in_min)
    return (np.clip(u, in_min, in_max) - (in_max + in_min) / 2) * s + (out_max + out_min) / 2


class RobosuiteBimanualEnv:
    """TwoArmLift, two Pandas, OSC_POSE, 14-D absolute end-effector actions `[left(7), right(7)]`."""

    robot_type = ROBOT_TYPE_NAME
    arms = ARMS
    fps = FPS

    def __init__(
        self,
        task: str = "TwoArmLift",
        *,
        size: int = 128,
        cameras: tuple[str, ...] | None = None,
        max_steps: int = MAX_STEPS,
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"unknown robosuite bimanual task {task!r}; choose from {', '.join(TASKS)}")
        self.cameras = tuple(DEFAULT_CAMERAS if cameras is None else cameras)  # () renders nothing
        for cam in self.cameras:
            if cam not in CAMERAS:
                raise ConfigError(f"unknown robosuite camera {cam!r}; choose from {', '.join(CAMERAS)}")
        if max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        suite = import_robosuite()
        import mujoco
        from robosuite.controllers import load_controller_config

        self.task, self.size, self.max_steps = task, size, max_steps
        self.instruction = INSTRUCTIONS[task]
        self._mj = mujoco
        self._env = suite.make(
            task,
            robots=["Panda", "Panda"],
            env_configuration=CONFIGURATION,
            controller_configs=load_controller_config(default_controller="OSC_POSE"),
            has_renderer=False,
            has_offscreen_renderer=False,  # we render ourselves (upright, no shadows)
            use_camera_obs=False,
            use_object_obs=False,  # the expert reads the simulator directly
            control_freq=FPS,
            horizon=max_steps,
            ignore_done=True,  # the step budget is ours (StepResult.done)
            hard_reset=False,  # build the model once; reset(seed) stays deterministic (see reset)
        )
        self.model, self.data = self._env.sim.model._model, self._env.sim.data._data
        self._order_arms()
        self._cam_ids = [self.model.camera(c).id for c in self.cameras]
        self._renderer = mujoco.Renderer(self.model, size, size) if self.cameras else None
        self._scene_option = mujoco.MjvOption()
        self._scene_option.geomgroup[0] = 0  # collision geoms (robosuite: render_collision_mesh=False)
        self._steps = 0
        self._seeded = False

    # -- arms ---------------------------------------------------------------------------------------
    def _order_arms(self) -> None:
        """Fill `self.robots` in slot order (left, right) from the bases' geometry."""
        d = self.data
        pos, fwd = [], []
        for robot in self._env.robots:
            body = d.body(robot.robot_model.root_body)
            pos.append(np.array(body.xpos))
            fwd.append(np.array(body.xmat).reshape(3, 3)[:, 0])  # a Panda reaches along its base x axis
        f = np.mean(fwd, axis=0)
        if min(float(v @ f) for v in fwd) < 0.9 * np.linalg.norm(f):
            raise RuntimeError("robots do not share a forward direction; left/right is undefined")
        self.forward = f / np.linalg.norm(f)
        self.left_dir = np.cross([0.0, 0.0, 1.0], self.forward)
        self.left_dir /= np.linalg.norm(self.left_dir)
        order = sorted(range(len(pos)), key=lambda i: -float(pos[i] @ self.left_dir))  # most-left first
        self.robots = [self._env.robots[i] for i in order]
        offsets = np.cumsum([0] + [r.action_dim for r in self._env.robots])
        self._native_offset = [int(offsets[i]) for i in order]
        self._native_dim = int(offsets[-1])
        self.robot_index = tuple(order)  # robosuite robot index of (left, right)

    def eef_pose(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation (3, 3) of the grip site of arm `slot` (0 left, 1 right)."""
        sid = self.robots[slot].eef_site_id
        return np.array(self.data.site_xpos[sid]), np.array(self.data.site_xmat[sid]).reshape(3, 3)

    def gripper_opening(self, slot: int) -> float:
        q = self.data.qpos[self.robots[slot]._ref_gripper_joint_pos_indexes]
        return float(np.clip((q[0] - q[1]) / FINGER_SPAN, 0.0, 1.0))

    # -- contract -----------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        saved = np.random.get_state()
        np.random.seed(int(seed))  # robosuite samples the pot pose and the joint noise from np.random
        try:
            self._env.reset()
        finally:
            np.random.set_state(saved)
        for robot in self._env.robots:
            # PandaGripper ramps `current_action` towards the commanded sign; robosuite only creates it
            # with the gripper model, so a soft reset would carry the last episode's value over.
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self._mj.mj_forward(self.model, self.data)
        self._steps = 0
        self._seeded = True
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        """Apply one action row; `render=False` leaves the observation's images empty (see SimEnv)."""
        if not self._seeded:
            raise RuntimeError(f"{self.task}: call reset(seed) before step()")
        if self._steps >= self.max_steps:
            raise RuntimeError(f"{self.task}: step() after the {self.max_steps}-step budget; call reset()")
        native = self.to_native(action)
        self._env.step(native)
        # mj_step leaves positions of the state before its last integration; recompute the kinematics so
        # the state (and the next to_native) see the pose the controller will read at the next step.
        self._mj.mj_forward(self.model, self.data)
        self._steps += 1
        return StepResult(
            observation=self.observation(render),
            success=self.success(),
            done=self._steps >= self.max_steps,
            info={"native_action": native},
        )

    def success(self) -> bool:
        return bool(self._env._check_success())

    def expert(self) -> TwoArmLiftExpert:
        return TwoArmLiftExpert(self)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    # -- conversions --------------------------------------------------------------------------------
    def to_native(self, action: np.ndarray) -> np.ndarray:
        """14-D absolute row `[left(7), right(7)]` -> robosuite's action `[robot0(7), robot1(7)]`."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (len(ARMS) * ARM_DIM,):
            raise ValueError(f"{self.task}: expected a {len(ARMS) * ARM_DIM}-D action row, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.task}: action row has non-finite values: {a}")
        native = np.zeros(self._native_dim)
        for slot, robot in enumerate(self.robots):
            row = a[slot * ARM_DIM : (slot + 1) * ARM_DIM]
            p, r = self.eef_pose(slot)
            # Position delta in the world frame; rotation delta is the world-frame rotation taking the
            # current orientation to the target: R_target = R_delta @ R_now (as robosuite applies it).
            delta = np.concatenate([row[:3] - p, rotvec_from_matrix(euler_to_matrix(row[3:6]) @ r.T)])
            off = self._native_offset[slot]
            native[off : off + 6] = _osc_input(delta, robot.controller)
            native[off + 6] = np.clip(row[6], -1.0, 1.0)
        return native

    def from_native(self, native: np.ndarray) -> np.ndarray:
        """The absolute 14-D row a robosuite action amounts to from the current state (the goal the
        controller will set); `from_native(to_native(a)) == a` for targets within one step's reach
        (the euler angles up to 2 pi wraps)."""
        n = np.asarray(native, dtype=np.float64).reshape(-1)
        out = np.zeros(len(ARMS) * ARM_DIM)
        for slot, robot in enumerate(self.robots):
            off = self._native_offset[slot]
            delta = _osc_output(n[off : off + 6], robot.controller)
            p, r = self.eef_pose(slot)
            out[slot * ARM_DIM : slot * ARM_DIM + 3] = p + delta[:3]
            out[slot * ARM_DIM + 3 : slot * ARM_DIM + 6] = matrix_to_euler(matrix_from_rotvec(delta[3:]) @ r)
            out[slot * ARM_DIM + 6] = np.clip(n[off + 6], -1.0, 1.0)
        return out

    def hold_action(self) -> np.ndarray:
        """Both arms hold their current pose, grippers open."""
        native = np.zeros(self._native_dim)
        for off in self._native_offset:
            native[off + 6] = -1.0
        return self.from_native(native).astype(np.float32)

    # -- observation --------------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        rows = []
        for slot in range(len(ARMS)):
            p, r = self.eef_pose(slot)
            rows.append(np.concatenate([p, matrix_to_euler(r), [self.gripper_opening(slot)]]))
        return np.concatenate(rows).astype(np.float32)

    def render(self) -> dict[str, np.ndarray]:
        images: dict[str, np.ndarray] = {}
        if self._renderer is None:
            return images
        flags = self._mj.mjtRndFlag
        for cam, cam_id in zip(self.cameras, self._cam_ids, strict=True):
            self._renderer.update_scene(self.data, camera=cam_id, scene_option=self._scene_option)
            self._renderer.scene.flags[flags.mjRND_SHADOW] = False  # ~2x faster in software GL
            self._renderer.scene.flags[flags.mjRND_REFLECTION] = False  # the table would draw everything twice
            images[cam] = self._renderer.render().copy()  # mujoco.Renderer: row 0 is the image top
        return images

    def observation(self, render: bool = True) -> Observation:
        return {
            IMAGES: self.render() if render else {},
            STATE: self.state(),
            INSTRUCTION: self.instruction,
            ROBOT_TYPE: self.robot_type,
        }

    # -- privileged scene facts (for the expert and tests) -------------------------------------------
    def handle_frames(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each pot handle (robosuite's handle0, handle1): the world centre of its grip bar and the
        bar's normal (the pot's y axis, pointing from the pot centre to the handle)."""
        env, pot = self._env, self._env.pot
        body = self.data.body(env.pot_body_id)
        centre, rot = np.array(body.xpos), np.array(body.xmat).reshape(3, 3)
        out = []
        for side in (1.0, -1.0):  # handle0 sits on the pot's +y side, handle1 on -y (PotWithHandlesObject)
            local = np.array(
                [0.0, side * (pot.body_half_size[1] + pot.handle_length), pot.body_half_size[2] - pot.handle_radius]
            )
            out.append((centre + rot @ local, side * rot[:, 1]))
        return out

    def pot_lift(self) -> float:
        """Height of the pot's bottom above the table top (success: > 0.10 m)."""
        env = self._env
        bottom = self.data.site_xpos[env.pot_center_id][2] - env.pot.top_offset[2]
        return float(bottom - self.data.site_xpos[env.table_top_id][2])


class TwoArmLiftExpert:
    """Scripted TwoArmLift expert acting through the absolute action layout (one row per `infer`).

    Each arm takes the handle on its side (the one further along its `left_dir` projection). Stages:
    move above the handle bar with the gripper pointing down and the fingers closing across the bar
    ("reach the handles"), descend onto it (still "reach the handles"), close ("grasp the handles"),
    then lift both arms together ("lift the pot"). The commanded pose is a carrot moving towards each
    stage's goal at a bounded speed, so every action row is within one controller step of the last
    and the recorded actions replay exactly.
    """

    PREGRASP_HEIGHT = 0.08  # m above the bar
    LIFT_HEIGHT = 0.22  # m; success needs the pot bottom 0.10 m above the table
    MOVE_SPEED = 0.015  # m per step (0.3 m/s)
    DESCEND_SPEED = 0.01
    LIFT_SPEED = 0.008
    TURN_SPEED = 0.08  # rad per step
    POS_TOL, ANG_TOL = 0.01, 0.06  # stage goal reached (measured pose)
    CLOSE_STEPS = 10  # the Panda gripper ramps from open to closed in 8 steps
    STAGE_TIMEOUT = 60  # steps; then move on regardless

    def __init__(self, env: RobosuiteBimanualEnv) -> None:
        self.env = env
        self.stage = "pregrasp"
        self.subtask = SUBTASKS[0]
        self._stage_steps = 0
        self._cmd: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._grasp: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._signs: list[float] | None = None
        self._handles: list[int] | None = None

    # -- goals ----------------------------------------------------------------------------------------
    def _grasp_poses(self) -> list[tuple[np.ndarray, np.ndarray]]:
        env = self.env
        frames = env.handle_frames()
        if self._handles is None:
            # Left slot gets the handle further to the left.
            left_first = sorted(range(2), key=lambda i: -float(frames[i][0] @ env.left_dir))
            self._handles = left_first
        poses = []
        for slot in range(2):
            centre, normal = frames[self._handles[slot]]
            n = normal - normal[2] * np.array([0.0, 0.0, 1.0])
            n /= np.linalg.norm(n)
            if self._signs is None or len(self._signs) <= slot:
                # The fingers close along the grip site's x axis: align it with +-normal, whichever is
                # nearer the current x axis (less wrist rotation; the fingers are symmetric).
                _, r_now = env.eef_pose(slot)
                self._signs = [*(self._signs or []), 1.0 if float(r_now[:, 0] @ n) >= 0 else -1.0]
            x = self._signs[slot] * n
            z = np.array([0.0, 0.0, -1.0])  # pointing down
            y = np.cross(z, x)
            poses.append((centre, np.stack([x, y, z], axis=1)))
        return poses

    # -- stepping -------------------------------------------------------------------------------------
    @staticmethod
    def _toward(p: np.ndarray, goal: np.ndarray, speed: float) -> np.ndarray:
        d = goal - p
        n = np.linalg.norm(d)
        return goal.copy() if n <= speed else p + d * (speed / n)

    @staticmethod
    def _turn(r: np.ndarray, goal: np.ndarray, speed: float) -> np.ndarray:
        v = rotvec_from_matrix(goal @ r.T)
        a = np.linalg.norm(v)
        return goal.copy() if a <= speed else matrix_from_rotvec(v * (speed / a)) @ r

    def _reached(self, goals: list[tuple[np.ndarray, np.ndarray]]) -> bool:
        for slot, (gp, gr) in enumerate(goals):
            p, r = self.env.eef_pose(slot)
            if np.linalg.norm(p - gp) > self.POS_TOL or np.linalg.norm(rotvec_from_matrix(gr @ r.T)) > self.ANG_TOL:
                return False
        return True

    def _set_stage(self, stage: str) -> None:
        self.stage, self._stage_steps = stage, 0

    def infer(self, observation: Observation) -> np.ndarray:
        env = self.env
        if self._cmd is None:
            self._cmd = [env.eef_pose(slot) for slot in range(2)]
        self._stage_steps += 1
        timed_out = self._stage_steps > self.STAGE_TIMEOUT
        grip = -1.0
        if self.stage in ("pregrasp", "descend"):
            grasp = self._grasp_poses()  # follow the pot if the fingers nudge it
            lift = self.PREGRASP_HEIGHT if self.stage == "pregrasp" else 0.0
            goals = [(c + np.array([0.0, 0.0, lift]), r) for c, r in grasp]
            speed = self.MOVE_SPEED if self.stage == "pregrasp" else self.DESCEND_SPEED
            self._move(goals, speed)
            if self._carrot_at(goals) and (self._reached(goals) or timed_out):
                if self.stage == "pregrasp":
                    self._set_stage("descend")
                else:
                    self._grasp = grasp
                    self._set_stage("close")
        elif self.stage == "close":
            grip = 1.0
            if self._stage_steps >= self.CLOSE_STEPS:
                self._set_stage("lift")
        if self.stage == "lift":
            grip = 1.0
            assert self._grasp is not None
            goals = [(c + np.array([0.0, 0.0, self.LIFT_HEIGHT]), r) for c, r in self._grasp]
            self._move(goals, self.LIFT_SPEED)
        self.subtask = {"pregrasp": SUBTASKS[0], "descend": SUBTASKS[0], "close": SUBTASKS[1], "lift": SUBTASKS[2]}[
            self.stage
        ]
        row = np.concatenate([np.concatenate([p, matrix_to_euler(r), [grip]]) for p, r in self._cmd])
        return row[None].astype(np.float32)

    def _move(self, goals: list[tuple[np.ndarray, np.ndarray]], speed: float) -> None:
        assert self._cmd is not None
        self._cmd = [
            (self._toward(p, gp, speed), self._turn(r, gr, self.TURN_SPEED))
            for (p, r), (gp, gr) in zip(self._cmd, goals, strict=True)
        ]

    def _carrot_at(self, goals: list[tuple[np.ndarray, np.ndarray]]) -> bool:
        assert self._cmd is not None
        return all(
            np.linalg.norm(p - gp) < 1e-9 and np.linalg.norm(rotvec_from_matrix(gr @ r.T)) < 1e-9
            for (p, r), (gp, gr) in zip(self._cmd, goals, strict=True)
        )


def make(
    task: str = "TwoArmLift", *, size: int = 128, cameras: tuple[str, ...] | None = None, **kwargs
) -> RobosuiteBimanualEnv:
    return RobosuiteBimanualEnv(task, size=size, cameras=cameras, **kwargs)


__all__ = ["TASKS", "RobosuiteBimanualEnv", "TwoArmLiftExpert", "import_robosuite", "make"]
