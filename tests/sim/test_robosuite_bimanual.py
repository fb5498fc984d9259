"""robosuite TwoArmLift behind the SimEnv contract: observation layout, upright images, left/right,
deterministic reset + replay, the absolute-pose action mapping, and the scripted expert."""

from __future__ import annotations

import numpy as np
import pytest

from clap_vla.data.rotations import euler_to_matrix
from clap_vla.sim import robosuite_bimanual as rb  # imports neither mujoco nor robosuite
from clap_vla.sim.base import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE

rb.prepare_import()  # MuJoCo reads MUJOCO_GL once, when robosuite first imports it
pytest.importorskip("robosuite")

SIZE = 64
POS = [0, 1, 2, 7, 8, 9]  # xyz of both arms in the 14-D layout
GRIP = [6, 13]


@pytest.fixture(scope="module")
def env():
    e = rb.make("TwoArmLift", size=SIZE, cameras=("agentview", "frontview"))
    yield e
    e.close()


@pytest.fixture(scope="module")
def blind_env():
    e = rb.make("TwoArmLift", cameras=())
    yield e
    e.close()


def _project(env, cam: str, point: np.ndarray) -> tuple[int, int]:
    """Row (from the top) and column of a world point in an upright pinhole image of `cam`."""
    cid = env.model.camera(cam).id
    c, r = env.data.cam_xpos[cid], env.data.cam_xmat[cid].reshape(3, 3)
    pc = r.T @ (point - c)  # MuJoCo cameras look along -z, image up is +y
    f = (SIZE / 2) / np.tan(np.deg2rad(env.model.cam_fovy[cid]) / 2)
    return int(SIZE / 2 - f * pc[1] / -pc[2]), int(SIZE / 2 + f * pc[0] / -pc[2])


def test_observation_layout_and_upright_images(env):
    obs = env.reset(0)
    assert obs[INSTRUCTION] == "lift the pot with both arms" and obs[ROBOT_TYPE] == "panda_bimanual"
    assert env.arms == ("left", "right") and env.fps == 20
    state = obs[STATE]
    assert state.shape == (14,) and state.dtype == np.float32 and np.all(np.isfinite(state))
    assert np.all((state[GRIP] >= 0) & (state[GRIP] <= 1))
    assert set(obs[IMAGES]) == {"agentview", "frontview"}
    for img in obs[IMAGES].values():
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    # agentview looks down at the table from the front: the white table fills the bottom, the robots'
    # dark pedestals and the wall the top.
    a = obs[IMAGES]["agentview"].astype(float)
    assert a[-SIZE // 4 :].mean() > a[: SIZE // 4].mean() + 60
    # frontview: the red pot is where the pinhole model puts it, and not at the vertically mirrored row.
    f = obs[IMAGES]["frontview"].astype(int)
    row, col = _project(env, "frontview", env.data.body(env._env.pot_body_id).xpos)
    red = f[row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3).mean(0)
    mirrored = f[SIZE - 1 - row - 1 : SIZE - row + 1, col - 1 : col + 2].reshape(-1, 3).mean(0)
    assert red[0] > red[1] + 30 and red[0] > red[2] + 30, red
    assert not (mirrored[0] > mirrored[1] + 30), mirrored
    # A step without rendering (the rollout harness's rows inside a replan window) has no images but
    # the same state as a rendered one; the next rendered step shows both cameras again.
    hold = env.hold_action()
    blind = env.step(hold, render=False).observation
    assert blind[IMAGES] == {} and blind[STATE].shape == (14,)
    assert set(env.step(hold).observation[IMAGES]) == {"agentview", "frontview"}


def test_left_arm_is_on_the_robots_left(blind_env):
    state = blind_env.reset(1)[STATE]
    # Both robots face +x, so their left is +y: slot 0 (left) is robosuite's robot1.
    assert np.allclose(blind_env.left_dir, [0, 1, 0])
    assert blind_env.robot_index == (1, 0)
    assert state[1] > state[8] + 0.3
    # Each arm is assigned the pot handle on its own side.
    handles = blind_env.handle_frames()
    assert handles[1][0][1] > 0 > handles[0][0][1]


def test_rotvec_helpers_match_scipy():
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rots = rotation.random(200, random_state=0)
    near_pi = rotation.from_rotvec(np.array([[0.6, -0.8, 0.0], [0.0, 0.0, -1.0]]) * (np.pi - 1e-7))
    for r in (rots, near_pi):
        for m, v in zip(r.as_matrix(), r.as_rotvec(), strict=True):
            np.testing.assert_allclose(rb.rotvec_from_matrix(m), v, atol=1e-9)
            np.testing.assert_allclose(rb.matrix_from_rotvec(v), m, atol=1e-12)


def _rollout(env, seed: int, actions=None, steps: int = 25):
    obs = env.reset(seed)
    expert = env.expert()
    states, acts = [obs[STATE]], []
    for k in range(steps):
        a = expert.infer(obs)[0] if actions is None else actions[k]
        acts.append(a)
        obs = env.step(a).observation
        states.append(obs[STATE])
    return np.array(states), np.array(acts), env.data.qpos.copy()


def test_reset_and_replay_are_deterministic(blind_env):
    s1, a1, q1 = _rollout(blind_env, 3)
    _rollout(blind_env, 4, steps=5)  # another episode in between
    s2, _, q2 = _rollout(blind_env, 3, actions=a1)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(q1, q2)
    other = blind_env.reset(4)[STATE]
    assert np.abs(other - s1[0]).max() > 1e-3  # a different seed is a different scene


def test_absolute_pose_actions(blind_env):
    env = blind_env
    start = env.reset(5)[STATE].astype(np.float64)
    hold = start.copy()
    hold[GRIP] = 0.0  # keep the gripper command where reset left it
    for _ in range(15):
        obs = env.step(hold).observation
    assert np.abs(obs[STATE][POS] - start[POS]).max() < 1e-3  # commanding the current pose holds still

    # A target within one step's reach is exactly the controller's goal ...
    target = obs[STATE].astype(np.float64) + np.array([0.02, -0.01, 0.03, 0.1, -0.05, 0.2, 0] * 2)
    target[GRIP] = -1.0
    back = env.from_native(env.to_native(target))
    np.testing.assert_allclose(back[POS + GRIP], target[POS + GRIP], atol=1e-9)
    for rpy in (slice(3, 6), slice(10, 13)):  # euler angles may come back wrapped by 2 pi
        np.testing.assert_allclose(euler_to_matrix(back[rpy]), euler_to_matrix(target[rpy]), atol=1e-9)
    # ... and a far one is approached along the straight line (robosuite's per-axis clip never bites).
    far = target.copy()
    far[0:3] += [0.3, 0.1, 0.0]
    u = env.to_native(far)[env._native_offset[0] : env._native_offset[0] + 3]
    assert np.isclose(np.abs(u).max(), 1.0)
    delta = far[0:3] - obs[STATE][0:3]
    assert abs(u @ delta / (np.linalg.norm(u) * np.linalg.norm(delta)) - 1) < 1e-6
    # Holding a nearby target: the arms get there.
    for _ in range(20):
        obs = env.step(target).observation
    assert np.abs(obs[STATE][POS] - target[POS]).max() < 5e-3


def test_expert_lifts_the_pot(blind_env):
    obs = blind_env.reset(0)
    expert = blind_env.expert()
    phases = []
    for _ in range(150):
        chunk = expert.infer(obs)
        assert chunk.shape == (1, 14) and chunk.dtype == np.float32
        if not phases or phases[-1] != expert.subtask:
            phases.append(expert.subtask)
        res = blind_env.step(chunk[0])
        obs = res.observation
        if res.success:
            break
    assert res.success
    assert phases == list(rb.SUBTASKS)


def test_generated_bimanual_dataset(tmp_path):
    from clap_vla.configs.sim import GenConfig
    from clap_vla.data import lerobot_format as lf
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.inspect import validate
    from clap_vla.sim.generate import generate

    out = tmp_path / "bimanual"
    generate(GenConfig(env="robosuite", out=out, tasks="all", episodes=1, workers=1, size=SIZE, progress=False))
    assert validate(out, progress=False) == []
    ds = RobotDataset(out)
    assert ds.info["robot_type"] == "panda_bimanual" and ds.tasks == ["lift the pot with both arms"]
    assert ds.dim(lf.ACTION) == 14 and ds.dim(lf.STATE) == 14
    names = ds.features[lf.ACTION]["names"]
    assert names[0] == "left_x" and names[7] == "right_x" and names[13] == "right_gripper"
    assert set(ds.subtasks) == set(rb.SUBTASKS)
    action = ds.episode_columns(0, [lf.ACTION])[lf.ACTION]
    z = action[:, [2, 9]]  # target heights of both arms
    assert (z[-1] - z.min(0) > 0.05).all()  # both arms lift the pot from their lowest point
