"""Coloured buttons on the Meta-World table: the testbed for object generalisation from human video.

The paper's transfer experiment (§V-A5, Fig. 7, Table III) gives the robot demonstrations for some
objects and human videos for all of them, then asks the robot for the objects it only saw humans
handle. Here every scene holds four push buttons, one per colour in `COLOURS`, at positions drawn
per episode from the scene seed (at least `MIN_SEPARATION` apart); the instruction names one colour
("press the blue button"). So a policy has to read the instruction *and* find that colour in the
image: the target's place changes every episode, and the other three buttons are always there to be
pressed instead. A task is one colour (`press-blue-button`); an experiment gives robot
demonstrations for some colours and human-domain videos for all (experiments/human_video_transfer.sh).

The robot is Meta-World's Sawyer with its mocap control, table, cameras and gripper, so actions,
state, rendering and the human-domain appearance are those of `sim/metaworld.py` (`ButtonsEnv`
subclasses `MetaWorldEnv`). The scene is Meta-World's reach scene with its puck and goal marker
removed and the buttons added with MuJoCo's model-editing API. Each button is a grey base with a
coloured cap on a spring-loaded slide joint (`TRAVEL` deep); a button counts as pressed when its cap
is `PRESS_DEPTH` down.

Success (Table III's protocol, where grasping the wrong object is a failure): the named button is
pressed and no other button was pressed before it. Pressing another button first ends the episode.
Each episode also reports its failure mode (`failure_mode`): `wrong_target` when the first button
the hand went for (pressed, or came down on: within `ENGAGE_RADIUS` of its centre and
`ENGAGE_HEIGHT` of its cap) is not the named one, Table III's attempt failure; `execution` when the
hand went for the named button but did not press it, or went for none.

The human domain (`clap data gen buttons --domain human`) follows the paper's collection protocol
(§V-A5): the robot is hidden and a human hand and forearm are drawn in its place (skin-coloured, with
a sleeve; thumb and index finger follow the gripper's fingers, so the hand opens and closes like it),
the camera stays near the robot's with a small per-episode shift, the scene is the same and the light
changes mildly (`HUMAN_DEFAULTS`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from clap_vla.sim.base import Observation, StepResult
from clap_vla.sim.metaworld import ACTOR_PREFIX, MOCAP_QUAT, MetaWorldEnv, _quat_to_matrix, resolve_task_names
from clap_vla.sim.metaworld import CAMERAS as METAWORLD_CAMERAS

# name -> cap colour (RGBA); each also names one task
COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.95, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
}
TASKS = tuple(f"press-{c}-button" for c in COLOURS)
TASK_SETS = {"all": TASKS}
# Position and point looked at of the scene's main camera: across the table, facing the robot. From
# above the robot (a head camera, tried first) the Sawyer's links cover most of the table at 128 px
# once the arm reaches out; from here the buttons stay in view and the hand comes down in front of them.
FRONT_CAMERA = ((0.0, 1.1, 0.65), (0.0, 0.6, 0.05))
CAMERAS = (*METAWORLD_CAMERAS, "front")
DEFAULT_CAMERA = "front"  # the human domain films from near it too (§V-A5: close to the robot's camera)
FPS = 80
MAX_STEPS = 150  # the expert needed 19-59 steps in the experiment's 300 robot episodes
MAX_STEPS_LIMIT = 500
ROBOT_TYPE_NAME = "sawyer"

# Scene geometry, metres (world frame; the table top is z = 0).
REGION_LOW, REGION_HIGH = (-0.28, 0.5), (0.28, 0.82)  # where button centres are drawn (x, y)
MIN_SEPARATION = 0.19  # between button centres: an open gripper spans 0.1 m, a base 0.12 m
BASE_HALF = (0.06, 0.06, 0.02)  # grey base box
# Large caps: at 128 px a 6 cm cap was about 8 pixels, and a from-scratch policy on frozen 8 x 8
# features did not localise it (pilot: 1/20 in-distribution on validation seeds).
CAP_RADIUS, CAP_HALF_HEIGHT = 0.045, 0.012
CAP_REST_Z = 2 * BASE_HALF[2] + CAP_HALF_HEIGHT + 0.002  # cap centre at rest
TRAVEL = 0.02  # how far a cap can be pushed down
PRESS_DEPTH = 0.012  # pushed this far = pressed
ENGAGE_RADIUS = 0.08  # the hand came down on a button: tool centre within this of its centre (xy) ...
ENGAGE_HEIGHT = 0.05  # ... and within this above its cap's top
HAND_INIT = (0.0, 0.4, 0.2)  # where the hand is built; each episode starts it at a random place:
# From one fixed start, where the arm is in a frame already says where it is heading (on the line
# from the start to the target), so a policy could imitate well while ignoring the instruction and
# only the first frames need it (causal confusion); it then picks a button by the image alone
# (docs/results.md, pilot 5). A start drawn per episode leaves the instruction as the only way to know
# the target for most of the reach.
HAND_START_LOW = (-0.2, 0.36, 0.15)
HAND_START_HIGH = (0.2, 0.46, 0.25)

# Human-domain defaults for this scene (the paper's protocol; `clap data gen` flags override them).
HUMAN_DEFAULTS = {"camera_jitter": 0.01, "light_jitter": 0.15, "table_tint": False, "arm": "actor"}
ACTOR_HIDDEN_GROUP = 3  # not drawn by default, and outside the scene's inertia groups (4-5)
SKIN = (0.87, 0.67, 0.55, 1.0)
SLEEVE = (0.3, 0.3, 0.32, 1.0)  # dark grey: no target colour


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """'all' | 'press-red-button,blue' | ['red', ...] -> task names (a bare colour names its task)."""
    return resolve_task_names(
        spec, TASK_SETS, TASKS, lambda item: f"press-{item}-button" if item in COLOURS else item, "buttons", "all"
    )


def colour_of(task: str) -> str:
    (name,) = resolve_tasks(task)
    return name.removeprefix("press-").removesuffix("-button")


def instruction_for(colour: str) -> str:
    return f"press the {colour} button"


def sample_positions(rng: np.random.Generator, n: int = len(COLOURS)) -> np.ndarray:
    """(n, 2) button centres, uniform in the region and at least MIN_SEPARATION apart (rejection)."""
    lo, hi = np.asarray(REGION_LOW), np.asarray(REGION_HIGH)
    for _ in range(10_000):
        pos = rng.uniform(lo, hi, size=(n, 2))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(n)
        if d.min() >= MIN_SEPARATION:
            return pos
    raise RuntimeError("could not place the buttons apart; MIN_SEPARATION is too large for the region")


def failure_mode(success: bool, target: str, first_pressed: str | None, first_engaged: str | None) -> str | None:
    """None for a success; `wrong_target` when the first button the hand pressed or came down on is
    not the named one (Table III's attempt failure); `execution` otherwise (it went for the named
    button and did not press it, or went for none)."""
    if success:
        return None
    went_for = first_pressed if first_pressed is not None else first_engaged
    if went_for is not None and went_for != target:
        return "wrong_target"
    return "execution"


def _add_buttons(spec) -> None:
    import mujoco

    for name, rgba in COLOURS.items():
        body = spec.worldbody.add_body(name=f"button_{name}", pos=[0.0, 0.6, 0.0])
        body.add_geom(
            name=f"button_base_{name}", type=mujoco.mjtGeom.mjGEOM_BOX, size=list(BASE_HALF),
            pos=[0, 0, BASE_HALF[2]], rgba=[0.35, 0.35, 0.35, 1.0], contype=1, conaffinity=1,
        )  # fmt: skip
        # Explicit inertia: the scene computes inertia from geom groups 4-5 only.
        cap = body.add_body(name=f"cap_{name}", pos=[0, 0, CAP_REST_Z], mass=0.01, inertia=[1e-5, 1e-5, 1e-5],
                            explicitinertial=True)  # fmt: skip
        cap.add_joint(
            name=f"press_{name}", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[0, 0, 1], range=[-TRAVEL, 0.0],
            limited=mujoco.mjtLimited.mjLIMITED_TRUE, stiffness=150.0, springref=0.0, damping=2.0,
        )  # fmt: skip
        cap.add_geom(
            name=f"cap_{name}", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[CAP_RADIUS, CAP_HALF_HEIGHT, 0],
            rgba=list(rgba), contype=1, conaffinity=1,
        )  # fmt: skip


def _add_actor(spec) -> None:
    """The human domain's hand and forearm, visual only, in ACTOR_HIDDEN_GROUP until an `Appearance` with
    `actor` shows them. Shapes are given in world directions at the mocap orientation (the hand is
    welded to it) and converted to each body's frame: the palm and forearm ride on the hand, a thumb
    and an index finger on the two claws, so they open and close with the gripper."""
    import mujoco

    to_local = _quat_to_matrix(np.asarray(MOCAP_QUAT)).T  # world direction -> hand (and claw) frame

    def capsule(body, name, a, b, radius, rgba):
        body.add_geom(
            name=ACTOR_PREFIX + name, type=mujoco.mjtGeom.mjGEOM_CAPSULE, size=[radius, 0, 0],
            fromto=[*(to_local @ np.asarray(a)), *(to_local @ np.asarray(b))], rgba=list(rgba),
            contype=0, conaffinity=0, group=ACTOR_HIDDEN_GROUP,
        )  # fmt: skip

    hand = spec.body("hand")
    hand.add_geom(
        name=ACTOR_PREFIX + "palm", type=mujoco.mjtGeom.mjGEOM_ELLIPSOID, size=[0.045, 0.05, 0.03],
        pos=list(to_local @ np.array([0.0, 0.0, 0.0])), rgba=list(SKIN), contype=0, conaffinity=0,
        group=ACTOR_HIDDEN_GROUP,
    )  # fmt: skip
    capsule(hand, "forearm", (0.0, -0.02, 0.02), (0.0, -0.2, 0.2), 0.033, SKIN)
    capsule(hand, "sleeve", (0.0, -0.2, 0.2), (0.0, -0.34, 0.36), 0.045, SLEEVE)
    capsule(spec.body("rightclaw"), "thumb", (0.0, 0.0, 0.0), (0.0, 0.01, -0.045), 0.012, SKIN)
    capsule(spec.body("leftclaw"), "finger", (0.0, 0.0, 0.0), (0.0, -0.01, -0.05), 0.011, SKIN)


def _add_front_camera(spec) -> None:
    pos, target = (np.asarray(v, dtype=float) for v in FRONT_CAMERA)
    back = pos - target
    back /= np.linalg.norm(back)  # a camera looks along its -z axis
    right = np.array([-1.0, 0.0, 0.0])  # facing -y (towards the robot): image right is world -x
    up = np.cross(back, right)
    spec.worldbody.add_camera(name="front", pos=list(pos), xyaxes=[*right, *up], fovy=55.0)


@functools.cache
def _scene_class():
    """The Meta-World environment class of the scene (built on first use: it imports metaworld)."""
    import mujoco
    from gymnasium.spaces import Box
    from metaworld.asset_path_utils import full_V3_path_for
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    class ButtonScene(SawyerXYZEnv):
        """Meta-World's reach scene without its puck and goal, with the four buttons."""

        def __init__(self, target: str) -> None:
            self.target = target
            self.positions = np.zeros((len(COLOURS), 2))  # read while the base class builds the scene
            hand_low, hand_high = (-0.5, 0.40, 0.05), (0.5, 1.0, 0.5)
            super().__init__(hand_low=hand_low, hand_high=hand_high)
            self.hand_init_pos = np.array(HAND_INIT)
            self.goal_space = Box(np.array(hand_low), np.array(hand_high), dtype=np.float64)
            self._random_reset_space = Box(np.zeros(1), np.ones(1), dtype=np.float64)  # unused: see reset_model
            self._press_qpos = {c: int(self.model.joint(f"press_{c}").qposadr[0]) for c in COLOURS}
            self._press_qvel = {c: int(self.model.joint(f"press_{c}").dofadr[0]) for c in COLOURS}
            self._button_body = {c: self.model.body(f"button_{c}").id for c in COLOURS}
            self.first_pressed: str | None = None
            self.first_engaged: str | None = None

        @property
        def model_name(self) -> str:
            return full_V3_path_for("sawyer_xyz/sawyer_reach_v3.xml")

        def _initialize_simulation(self):
            spec = mujoco.MjSpec.from_file(self.fullpath)
            spec.detach_body(spec.body("obj"))
            spec.site("goal").delete()
            _add_buttons(spec)
            _add_actor(spec)
            _add_front_camera(spec)
            model = spec.compile()
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
            return model, mujoco.MjData(model)

        # -- scene state -------------------------------------------------------------------------
        def depth(self, colour: str) -> float:
            """How far the button's cap is pushed down (metres, >= 0)."""
            return float(-self.data.qpos[self._press_qpos[colour]])

        def cap_top(self, colour: str) -> np.ndarray:
            """World position of the centre of the cap's top face, at rest."""
            x, y = self.positions[list(COLOURS).index(colour)]
            return np.array([x, y, CAP_REST_Z + CAP_HALF_HEIGHT])

        @property
        def _target_site_config(self) -> list:
            return []  # the reach scene's goal marker is removed

        def _get_pos_objects(self) -> np.ndarray:
            return self.cap_top(self.target)

        def _get_quat_objects(self) -> np.ndarray:
            return np.array([1.0, 0.0, 0.0, 0.0])

        def _get_pos_goal(self) -> np.ndarray:
            return self.cap_top(self.target)

        def reset_model(self) -> np.ndarray:
            self.positions = sample_positions(self.np_random)
            for i, c in enumerate(COLOURS):
                self.model.body_pos[self._button_body[c]] = (*self.positions[i], 0.0)
                self.data.qpos[self._press_qpos[c]] = 0.0
                self.data.qvel[self._press_qvel[c]] = 0.0
            mujoco.mj_forward(self.model, self.data)
            self.hand_init_pos = self.np_random.uniform(HAND_START_LOW, HAND_START_HIGH)  # after the buttons' draw
            self._reset_hand()
            self.first_pressed = self.first_engaged = None
            self._target_pos = self.cap_top(self.target)
            return self._get_obs()

        def evaluate_state(self, obs, action):
            tcp = self.tcp_center
            for c in COLOURS:
                top = self.cap_top(c)
                near = np.linalg.norm(tcp[:2] - top[:2]) < ENGAGE_RADIUS and tcp[2] < top[2] + ENGAGE_HEIGHT
                if self.first_engaged is None and near:
                    self.first_engaged = c
                if self.first_pressed is None and self.depth(c) >= PRESS_DEPTH:
                    self.first_pressed = c
            success = self.first_pressed == self.target
            return float(success), {"success": float(success), "first_pressed": self.first_pressed}

    return ButtonScene


class ButtonsEnv(MetaWorldEnv):
    """One colour's task in the buttons scene (`press-blue-button`): the `SimEnv` contract, with
    Meta-World's action, state, cameras and appearances (sim/metaworld.py), plus a front camera."""

    camera_names = CAMERAS
    default_camera = DEFAULT_CAMERA

    def __init__(self, task: str, *, size: int = 128, cameras=None, max_steps: int = MAX_STEPS, **kwargs) -> None:
        super().__init__(task, size=size, cameras=cameras, max_steps=max_steps, **kwargs)
        self.colour = colour_of(self.task)

    def _resolve_task(self, task: str) -> str:
        (name,) = resolve_tasks(task)
        return name

    def _instruction(self) -> str:
        return instruction_for(colour_of(self.task))

    def _make_sim(self):
        return _scene_class()(colour_of(self.task))

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        result = super().step(action, render)
        pressed = self._env.first_pressed
        if pressed is not None and pressed != self.colour:
            result.done = True  # pressed the wrong button first: the episode has failed
        return result

    def episode_info(self, success: bool) -> dict:
        """Which button the episode went for, and its failure mode (module docstring)."""
        scene = self._env
        return {
            "target": self.colour,
            "first_pressed": scene.first_pressed,
            "first_engaged": scene.first_engaged,
            "failure": failure_mode(success, self.colour, scene.first_pressed, scene.first_engaged),
        }

    def expert(self) -> ButtonsExpert:
        return ButtonsExpert(self)

    def expert_for(self, colour: str) -> ButtonsExpert:
        """The scripted expert sent to another colour's button (failure-mode tests)."""
        return ButtonsExpert(self, colour)


class ButtonsExpert:
    """Move over the named button and come down on it in one motion (a funnel): the height aimed for
    shrinks with the distance left in the plane, from APPROACH above the cap at FUNNEL_OUT or more to
    PUSH below its top at FUNNEL_IN or less. The hand closes once within GRAB of the centre and
    stays closed. Subtasks: "reach the {colour} button", then "press the {colour} button".

    An earlier expert hovered APPROACH above the cap until it was aligned within 8 mm, then went
    straight down: a gate that a policy imitating it with centimetre errors may never pass. Pilot
    policies hovered over the button without coming down (docs/results.md, pilot 8), and so did
    that expert's own chunks passed through a 1500-step Act-VAE (~1.5 cm of decoding error per
    row; `experiments/buttons_reach_oracle.py`: 10 of 20 validation episodes pressed nothing). The
    cap is 9 cm across, so pressing it needs no such precision; with its belief of where the cap is
    jumping by 2 cm every 5 rows this expert still presses it (tests/sim/test_buttons.py), where the
    hover-then-descend one failed 2 of 12 seeds."""

    APPROACH = 0.08  # tool centre this far above the cap while far from it (clears the other caps)
    PUSH = TRAVEL + 0.01  # ... and aims this far below the cap's top when over it
    FUNNEL_IN, FUNNEL_OUT = 0.025, 0.07  # xy distance (metres) where the aimed height starts rising / tops out
    GRAB = 0.04  # xy distance below which the hand closes (fingers together press the cap)
    GAIN = 25.0  # native command per metre of error (Meta-World's experts use 25 too)

    def __init__(self, env: ButtonsEnv, colour: str | None = None) -> None:
        self.env = env
        self.colour = colour or env.colour
        self._pressing = False
        self.subtask = f"reach the {self.colour} button"

    def aim(self, tcp: np.ndarray, top: np.ndarray) -> np.ndarray:
        """The point the tool centre heads for: over the cap, at a height that grows with the
        distance left in the plane (the funnel)."""
        dist = float(np.linalg.norm((top - tcp)[:2]))
        rise = np.clip((dist - self.FUNNEL_IN) / (self.FUNNEL_OUT - self.FUNNEL_IN), 0.0, 1.0)
        return top + np.array([0.0, 0.0, -self.PUSH + (self.APPROACH + self.PUSH) * rise])

    def target(self) -> np.ndarray:
        """Where the expert believes the named cap's top is (the truth; tests perturb it)."""
        return self.env._env.cap_top(self.colour)

    def infer(self, observation: Observation) -> np.ndarray:
        tcp = np.asarray(self.env._env.tcp_center)
        top = self.target()
        self._pressing = self._pressing or float(np.linalg.norm((top - tcp)[:2])) < self.GRAB
        goal = self.aim(tcp, top)
        native = np.concatenate([np.clip(self.GAIN * (goal - tcp), -1, 1), [1.0 if self._pressing else -1.0]])
        self.subtask = f"{'press' if self._pressing else 'reach'} the {self.colour} button"
        return self.env.from_native(native)[None]


def make(task: str, *, size: int = 128, cameras: tuple[str, ...] | None = None, **kwargs) -> ButtonsEnv:
    return ButtonsEnv(task, size=size, cameras=cameras, **kwargs)


def human_appearance(seed: int, **kwargs):
    """The human-domain look of episode `seed`: HUMAN_DEFAULTS, overridden by `kwargs`."""
    from clap_vla.sim.metaworld import human_appearance as sample

    return sample(seed, **{**HUMAN_DEFAULTS, **{k: v for k, v in kwargs.items() if v is not None}})


__all__ = [
    "CAMERAS",
    "COLOURS",
    "HUMAN_DEFAULTS",
    "TASKS",
    "ButtonsEnv",
    "ButtonsExpert",
    "failure_mode",
    "make",
    "resolve_tasks",
    "sample_positions",
]
