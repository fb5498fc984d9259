"""Meta-World v3 (the Sawyer arm, 50 tasks) behind the `SimEnv` contract of `sim/base.py`.

Action mapping (docs/conventions.md): Meta-World's native action is `[dx, dy, dz, grab]` in [-1, 1];
the mocap target moves by `action_scale * clip(d, -1, 1)` (1 cm per unit) and is clipped to the
mocap box; the gripper actuators get `(grab, -grab)`. Our action row is the right arm's ABSOLUTE
target `[x, y, z, roll, pitch, yaw, grab]`: xyz is the mocap target after the step, rpy the fixed
mocap orientation, grab the gripper effort (-1 open, +1 close). So
`native = clip((target - mocap_pos) / action_scale, -1, 1)`, exact for every action the expert
takes, which makes recorded demonstrations replay exactly.

State: the tool-centre point (what Meta-World's observation reports as the hand position), the hand's
orientation as extrinsic-xyz euler angles, and the finger opening in [0, 1] (1 = open).

State orientation: the hand is welded to the mocap body, whose orientation never changes
(`MOCAP_QUAT`, the hand pointing down); no action can turn it. The weld is soft, so the measured hand
orientation wobbles around it, by up to about 0.23 rad in normal use (measured over expert and random
episodes of a dozen tasks). Pointing down is pitch = pi/2, the gimbal lock of extrinsic-xyz angles,
where roll and yaw are not separable: that wobble swings the measured roll and yaw by up to 2 pi
from one frame to the next. So while the hand is within `WELD_TOLERANCE` (0.35 rad) of the mocap
orientation, the state reports the mocap orientation's angles `MOCAP_RPY` = (0, pi/2, 0), the same
constant every action row carries; beyond it (something has twisted the hand) it reports the
measured angles.

Images: rendered with our own `mujoco.Renderer` with shadows off (about 4x faster in software GL).
Meta-World's fixed "corner" cameras are mounted upside down (their image-up axis points at the
floor); such cameras are rotated 180 degrees so every frame is upright.
"""

from __future__ import annotations

import os
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from clap_vla.configs.sim import HumanArm
from clap_vla.data.rotations import matrix_to_euler
from clap_vla.errors import ClapError, ConfigError
from clap_vla.sim.base import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE, Observation, StepResult
from clap_vla.sim.gl import ensure_gl
from clap_vla.sim.metaworld_tasks import MT50, REACH_ONLY, TASK_SETS, TASK_TEXT

TASKS = MT50
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
DEFAULT_CAMERA = "corner"
FPS = 80  # 0.0025 s timestep x frame_skip 5: one control step is 12.5 ms
MAX_STEPS = 500  # Meta-World's own episode budget (max_path_length)
MAX_STEPS_LIMIT = MAX_STEPS  # a longer budget is refused (the registry checks it before starting workers)
MOCAP_QUAT = (1 / np.sqrt(2), 0.0, 1 / np.sqrt(2), 0.0)  # (w, x, y, z): Meta-World's fixed mocap orientation
WELD_TOLERANCE = 0.35  # rad: within this of MOCAP_QUAT the state reports MOCAP_RPY (module docstring)
ROBOT_TYPE_NAME = "sawyer"

# Bodies kept visible in the "human" domain: the hand and its fingers (recoloured as skin).
HAND_BODIES = ("hand", "rightclaw", "rightpad", "leftclaw", "leftpad")
HIDDEN_GROUP = 5  # geom group the arm is moved to in the human domain; hidden by default when rendering
ACTOR_PREFIX = "actor_"  # geoms of a drawn human hand and forearm (scenes that have one: sim/buttons.py)
ACTOR_GROUP = 2  # the group they move to when shown (visible by default); they sit in HIDDEN_GROUP otherwise
SKIN = (0.87, 0.67, 0.55, 1.0)
HUMAN_ARMS = typing.get_args(HumanArm)  # how the human domain draws the arm (Appearance.sample_human)
# `clap data gen metaworld --domain human`: the stress-test domain (arm hidden, scene changed per episode).
HUMAN_DEFAULTS = {"camera_jitter": 0.03, "light_jitter": 0.3, "table_tint": True, "arm": "hidden"}


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """'mt10' | 'mt50' | 'drawer-open-v3,reach' | ['drawer-open', ...] -> full v3 task names."""
    return resolve_task_names(
        spec,
        TASK_SETS,
        TASK_TEXT,
        lambda item: item if item.endswith("-v3") else f"{item}-v3",
        "Meta-World",
        "mt10 / mt50",
    )


def resolve_task_names(
    spec: str | Sequence[str], sets: dict, known, full_name: Callable[[str], str], sim: str, sets_hint: str
) -> list[str]:
    """Comma-separated (or listed) task names and task-set names -> unique full task names, in order;
    `full_name` completes a short name (e.g. adds "-v3"), an unknown one fails with close matches."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item.lower() in sets:
            out += sets[item.lower()]
            continue
        name = full_name(item)
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {sim} task {item!r}{hint} (or use {sets_hint})")
        out.append(name)
    if not out:
        raise ConfigError(f"no {sim} task named in {spec!r}")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Appearance:
    """How a scene is drawn. The default is Meta-World as shipped; `human` hides the robot arm."""

    hide_arm: bool = False  # hide every robot link but the hand and fingers, drawn skin-coloured
    skin_arm: bool = False  # keep the arm, drawn skin-coloured with the hand (a forearm-like shape)
    actor: bool = False  # hide the whole robot and draw the scene's human hand and forearm instead
    table_tint: tuple[float, float, float] | None = None  # multiplies the table texture
    light_scale: float = 1.0  # scales every light's diffuse colour
    camera_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres, added to fixed cameras

    @staticmethod
    def sample_human(
        rng: np.random.Generator,
        camera_jitter: float = 0.03,
        light_jitter: float = 0.3,
        table_tint: bool = True,
        arm: HumanArm = "hidden",
    ) -> Appearance:
        """The shift for action-free "human" episodes: the embodiment (the arm hidden), plus
        per-episode changes of camera position, lighting and table colour (each off when its
        amount is 0/False). `arm`:
        "hidden" (only the hand, skin-coloured), "skin" (the whole arm skin-coloured), "shown"
        (as shipped) or "actor" (the robot hidden, a human hand and forearm drawn in its place, whose
        thumb and finger follow the gripper; scenes that have one, sim/buttons.py). The random
        draws do not depend on which changes are on, so a seed gives the same scene shift whatever
        the arm."""
        if arm not in HUMAN_ARMS:
            raise ConfigError(f"human arm must be one of {HUMAN_ARMS}, got {arm!r}")
        tint = tuple(float(v) for v in rng.uniform(0.55, 1.0, 3))  # drawn either way (see above)
        return Appearance(
            hide_arm=arm == "hidden",
            skin_arm=arm == "skin",
            actor=arm == "actor",
            table_tint=tint if table_tint else None,
            light_scale=float(rng.uniform(1 - light_jitter, 1 + light_jitter * 0.5)),
            camera_shift=tuple(float(v) for v in rng.normal(0.0, camera_jitter, 3)),
        )


class MetaWorldEnv:
    """One Meta-World v3 task. `reset(seed)` draws the object/goal placement from `seed` alone."""

    robot_type = ROBOT_TYPE_NAME
    arms = ("right",)
    fps = FPS
    camera_names = CAMERAS
    default_camera = DEFAULT_CAMERA

    def __init__(
        self,
        task: str,
        *,
        size: int = 128,
        cameras: tuple[str, ...] | None = None,
        max_steps: int = MAX_STEPS,
        appearance: Appearance | None = None,
    ) -> None:
        ensure_gl()
        import mujoco

        self.task = self._resolve_task(task)
        self.cameras = tuple(cameras or (self.default_camera,))
        for cam in self.cameras:
            if cam not in self.camera_names:
                raise ConfigError(f"unknown Meta-World camera {cam!r}; choose from {', '.join(self.camera_names)}")
        if not 0 < max_steps <= MAX_STEPS_LIMIT:
            raise ConfigError(f"max_steps must be in 1..{MAX_STEPS_LIMIT}, got {max_steps}")
        self.size, self.max_steps = size, max_steps
        self.instruction = self._instruction()

        env = self._make_sim()
        # Goal-observable and seeded: the placement is drawn from env.np_random, which reset(seed)
        # re-seeds, so a seed fully determines the scene (the experts read the goal from obs[36:39]).
        env._partially_observable = False
        del env.sawyer_observation_space  # a cached bound on obs that zeroes a hidden goal
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        env.max_path_length = max_steps
        self._env, self._mj = env, mujoco
        model = env.model
        self._mocap_id = int(model.body_mocapid[model.body("mocap").id])
        self._hand_id = model.body("hand").id
        self._cam_ids = [model.camera(c).id for c in self.cameras]
        try:
            self._renderer = mujoco.Renderer(model, size, size)
        except mujoco.FatalError as e:
            raise ClapError(
                f"cannot render with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({e}); mujoco was probably imported "
                "before clap_vla.sim chose a headless backend: set MUJOCO_GL=egl (or osmesa) in the environment"
            ) from e
        self._scene_option = mujoco.MjvOption()
        # Pristine copies of everything an Appearance changes.
        self._base = {
            "cam_pos": model.cam_pos.copy(),
            "light_diffuse": model.light_diffuse.copy(),
            "mat_rgba": model.mat_rgba.copy(),
            "geom_rgba": model.geom_rgba.copy(),
            "geom_matid": model.geom_matid.copy(),
            "geom_group": model.geom_group.copy(),
        }
        self._table_mats = [i for i in range(model.nmat) if model.material(i).name.startswith("table")]
        self._robot_geoms, self._hand_geoms = self._robot_geom_ids()
        self._actor_geoms = np.array(
            [g for g in range(model.ngeom) if (model.geom(g).name or "").startswith(ACTOR_PREFIX)], dtype=int
        )
        self.appearance = appearance or Appearance()
        self._obs_vec = np.zeros(39)
        self._steps = 0
        self._upright: list[bool] = []

    # -- what a subclass with its own scene overrides (sim/buttons.py) ---------------------------
    def _resolve_task(self, task: str) -> str:
        (name,) = resolve_tasks(task)
        return name

    def _instruction(self) -> str:
        return TASK_TEXT[self.task].instruction

    def _make_sim(self):
        """The Meta-World environment object (a `SawyerXYZEnv`) of `self.task`."""
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        return ALL_V3_ENVIRONMENTS[self.task]()

    # -- contract -------------------------------------------------------------------------------
    def reset(self, seed: int, appearance: Appearance | None = None) -> Observation:
        if appearance is not None:
            self.appearance = appearance
        self._env.seed(int(seed))
        obs, _ = self._env.reset()
        self._obs_vec = obs
        self._steps = 0
        self._apply_appearance()
        self._mj.mj_forward(self._env.model, self._env.data)
        self._upright = [self._points_up(i) for i in self._cam_ids]
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        """Apply one action row; `render=False` leaves the observation's images empty (a render is
        about as costly as a physics step, and the harness reads one observation per replan)."""
        if self._steps >= self.max_steps:
            raise RuntimeError(f"{self.task}: step() after the {self.max_steps}-step budget; call reset()")
        native = self.to_native(action)
        obs, _, _, _, info = self._env.step(native)
        self._obs_vec = obs
        self._steps += 1
        return StepResult(
            observation=self.observation(render),
            success=bool(info["success"]),
            done=self._steps >= self.max_steps,
            info={"native_action": native},
        )

    def expert(self) -> MetaWorldExpert:
        return MetaWorldExpert(self)

    def close(self) -> None:
        self._renderer.close()
        self._env.close()

    def hold_action(self) -> np.ndarray:
        """The action that keeps the hand where its mocap target is, gripper relaxed."""
        return self.from_native(np.zeros(4))

    # -- conversions ----------------------------------------------------------------------------
    def to_native(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,):
            raise ValueError(f"{self.task}: expected a 7-D action row (right arm), got shape {a.shape}")
        delta = (a[:3] - self._env.data.mocap_pos[self._mocap_id]) / self._env.action_scale
        return np.concatenate([np.clip(delta, -1, 1), np.clip(a[6:7], -1, 1)]).astype(np.float32)

    def from_native(self, native: np.ndarray) -> np.ndarray:
        """The absolute action row a native command amounts to from the current state."""
        n = np.clip(np.asarray(native, dtype=np.float64), -1, 1)
        target = self._env.data.mocap_pos[self._mocap_id] + n[:3] * self._env.action_scale
        target = np.clip(target, self._env.mocap_low, self._env.mocap_high)
        return np.concatenate([target, MOCAP_RPY, n[3:4]]).astype(np.float32)

    # -- observation ----------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        rot = self._env.data.xmat[self._hand_id].reshape(3, 3)
        return np.concatenate([self._obs_vec[:3], state_rpy(rot), self._obs_vec[3:4]]).astype(np.float32)

    def render(self) -> dict[str, np.ndarray]:
        images = {}
        for cam, cam_id, upright in zip(self.cameras, self._cam_ids, self._upright, strict=True):
            self._renderer.update_scene(self._env.data, camera=cam_id, scene_option=self._scene_option)
            self._renderer.scene.flags[self._mj.mjtRndFlag.mjRND_SHADOW] = False
            img = self._renderer.render()
            images[cam] = np.ascontiguousarray(img if upright else img[::-1, ::-1])
        return images

    def observation(self, render: bool = True) -> Observation:
        return {
            IMAGES: self.render() if render else {},
            STATE: self.state(),
            INSTRUCTION: self.instruction,
            ROBOT_TYPE: self.robot_type,
        }

    @property
    def obs_vector(self) -> np.ndarray:
        """Meta-World's privileged 39-D observation (what its scripted experts read)."""
        return self._obs_vec

    # -- appearance -----------------------------------------------------------------------------
    def _robot_geom_ids(self) -> tuple[np.ndarray, np.ndarray]:
        model = self._env.model
        base = model.body("base").id
        hand = {model.body(n).id for n in HAND_BODIES}
        robot, keep = [], []
        for g in range(model.ngeom):
            b = int(model.geom_bodyid[g])
            chain = []
            while b:
                chain.append(b)
                b = int(model.body_parentid[b])
            if base in chain and not (model.geom(g).name or "").startswith(ACTOR_PREFIX):
                (keep if chain[0] in hand else robot).append(g)
        return np.array(robot, dtype=int), np.array(keep, dtype=int)

    def _apply_appearance(self) -> None:
        model, ap = self._env.model, self.appearance
        for key, value in self._base.items():
            getattr(model, key)[:] = value
        self._scene_option.geomgroup[:] = self._mj.MjvOption().geomgroup  # groups 3-5 hold collision geoms
        if ap.actor:
            if not len(self._actor_geoms):
                raise ConfigError(f"{self.task}: this scene draws no human actor (human arm 'actor': buttons env)")
            model.geom_group[self._robot_geoms] = HIDDEN_GROUP
            model.geom_group[self._hand_geoms] = HIDDEN_GROUP
            model.geom_group[self._actor_geoms] = ACTOR_GROUP
            self._scene_option.geomgroup[HIDDEN_GROUP] = 0
        elif ap.hide_arm:
            model.geom_group[self._robot_geoms] = HIDDEN_GROUP
            self._scene_option.geomgroup[HIDDEN_GROUP] = 0
            model.geom_matid[self._hand_geoms] = -1
            model.geom_rgba[self._hand_geoms] = SKIN
        elif ap.skin_arm:
            for geoms in (self._robot_geoms, self._hand_geoms):
                model.geom_matid[geoms] = -1
                model.geom_rgba[geoms] = SKIN
        if ap.table_tint is not None:
            for m in self._table_mats:
                model.mat_rgba[m, :3] = ap.table_tint
        model.light_diffuse[:] = np.clip(self._base["light_diffuse"] * ap.light_scale, 0, 1)
        fixed = model.cam_mode == 0
        model.cam_pos[fixed] += np.asarray(ap.camera_shift)

    def _points_up(self, cam_id: int) -> bool:
        # Column 1 of a camera's world rotation is its image-up axis.
        up = self._env.data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        return bool(up[2] >= -1e-6)


class MetaWorldExpert:
    """Meta-World's scripted expert for the env's task, acting through the absolute action layout.

    `subtask` follows the expert's phase (TASK_TEXT): "reach the {target}" until the expert closes
    its gripper after starting open or neutral (grasping experts), then "grasp the {target}" while
    the fingers are still closing, then the task's manipulation phrase. Experts that reach the
    object without closing the gripper skip the grasp phase: those that push with a closed fist or a
    relaxed gripper switch to the manipulation phrase when the hand comes within `CONTACT_RADIUS` of
    the object or the object has moved `MOVED`; those that keep the gripper open (e.g. drawer-open,
    grab -1 throughout) on proximity alone (an open gripper may nudge the object before it closes on
    it, so object motion does not count for experts that start open). Phases only move forward, and
    are decided online from what the expert sees.
    """

    CONTACT_RADIUS = 0.05  # metres between the tool-centre point and the object's reported position
    MOVED = 0.02  # metres the object has moved: contact has happened
    SETTLE = 0.005  # finger opening change per step below which a grasp has closed

    def __init__(self, env: MetaWorldEnv) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        self.env = env
        self._policy = ENV_POLICY_MAP[env.task]()
        self._text = TASK_TEXT[env.task]
        self._phase = 0
        self._first_grab: float | None = None
        self._last_opening: float | None = None
        self._closing_steps = 0
        self._object_start: np.ndarray | None = None
        self.subtask = self._phrase()

    def _phrase(self) -> str:
        if self.env.task in REACH_ONLY:
            return self._text.manipulate
        return (f"reach the {self._text.target}", f"grasp the {self._text.target}", self._text.manipulate)[self._phase]

    def infer(self, observation: Observation) -> np.ndarray:
        vec = self.env.obs_vector
        with warnings.catch_warnings():
            # The experts' gains saturate on purpose; Meta-World warns on every such step.
            warnings.filterwarnings("ignore", message="Constant", category=UserWarning)
            native = np.asarray(self._policy.get_action(vec), dtype=np.float64)
        self._advance(vec, float(np.clip(native[3], -1, 1)))
        self.subtask = self._phrase()
        return self.env.from_native(native)[None]

    def _advance(self, vec: np.ndarray, grab: float) -> None:
        closing = grab > 0
        if self._first_grab is None:
            self._first_grab = grab
        if self._object_start is None:
            self._object_start = vec[4:7].copy()
        opening = float(vec[3])
        if self._phase == 0:
            near = np.linalg.norm(vec[:3] - vec[4:7]) < self.CONTACT_RADIUS
            # An open gripper may nudge the object before it closes on it: only experts that do not
            # start by opening the gripper count object motion as contact.
            moved = np.linalg.norm(vec[4:7] - self._object_start) > self.MOVED
            near = near or (moved and self._first_grab >= 0)
            if closing and self._first_grab <= 0:
                self._phase = 1
            elif near and (self._first_grab > 0 or not closing):
                self._phase = 2
        elif self._phase == 1:
            self._closing_steps += 1
            settled = self._last_opening is not None and abs(opening - self._last_opening) < self.SETTLE
            if not closing or (settled and self._closing_steps > 2):
                self._phase = 2
        self._last_opening = opening


def state_rpy(hand_rot: np.ndarray) -> np.ndarray:
    """The state's orientation for the hand's rotation matrix: `MOCAP_RPY` while the hand is within
    `WELD_TOLERANCE` of the mocap orientation, else its measured euler angles (module docstring)."""
    cos_angle = (np.trace(np.asarray(hand_rot) @ _MOCAP_ROT.T) - 1.0) / 2.0
    if cos_angle >= np.cos(WELD_TOLERANCE):
        return MOCAP_RPY.copy()
    return matrix_to_euler(hand_rot)


def make(task: str, *, size: int = 128, cameras: tuple[str, ...] | None = None, **kwargs) -> MetaWorldEnv:
    return MetaWorldEnv(task, size=size, cameras=cameras, **kwargs)


def human_appearance(seed: int, **kwargs) -> Appearance:
    return Appearance.sample_human(np.random.default_rng([seed, 0x48554D]), **kwargs)


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


_MOCAP_ROT = _quat_to_matrix(np.asarray(MOCAP_QUAT))
MOCAP_RPY = matrix_to_euler(_MOCAP_ROT) + 0.0  # (0, pi/2, 0); + 0.0 turns -0.0 into 0.0

__all__ = [
    "MOCAP_QUAT",
    "MOCAP_RPY",
    "TASKS",
    "WELD_TOLERANCE",
    "Appearance",
    "MetaWorldEnv",
    "MetaWorldExpert",
    "make",
    "resolve_tasks",
    "state_rpy",
]
