"""Meta-World wrapper, scripted demonstrations, the human domain and the rollout harness.

Simulator tests are few and small (64x64 images, one task): rendering is software GL on 2 cores.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld")

from clap_vla.configs.sim import EVAL_SEED_BASE, GenConfig, RolloutConfig
from clap_vla.data import lerobot_format as lf
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.inspect import validate
from clap_vla.data.video import VideoReader
from clap_vla.errors import ClapError, ConfigError
from clap_vla.sim import metaworld as mw
from clap_vla.sim.generate import Job, demo_seed, generate, load_true_actions, run_demo
from clap_vla.sim.metaworld_tasks import MT10, TASK_TEXT
from clap_vla.sim.policies import ReplayPolicy
from clap_vla.sim.rollout import evaluate, wilson_interval

TASK = "drawer-open-v3"
SIZE = 64


@pytest.fixture(scope="module")
def env():
    e = mw.make(TASK, size=SIZE, cameras=("corner", "topview"))
    yield e
    e.close()


def _expert_episode(env, seed: int, max_steps: int = 200):
    obs = env.reset(seed)
    expert = env.expert()
    actions, states, subtasks = [], [], []
    for _ in range(max_steps):
        row = expert.infer(obs)[0]
        actions.append(row)
        states.append(obs["state"])
        subtasks.append(expert.subtask)
        r = env.step(row)
        obs = r.observation
        if r.success:
            return np.array(actions), np.array(states), subtasks, True
    return np.array(actions), np.array(states), subtasks, False


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_task_table_and_resolution():
    assert len(TASK_TEXT) == 50 and all(t.instruction for t in TASK_TEXT.values())
    assert len({t.instruction for t in TASK_TEXT.values()}) == 50  # one distinct instruction per task
    assert mw.resolve_tasks("mt10") == list(MT10)
    assert mw.resolve_tasks("drawer-open, reach-v3") == ["drawer-open-v3", "reach-v3"]
    with pytest.raises(ConfigError, match="did you mean drawer-open-v3"):
        mw.resolve_tasks("drawer-opn")


def test_observation_shapes_and_upright_image(env):
    obs = env.reset(3)
    assert set(obs["images"]) == {"corner", "topview"}
    for img in obs["images"].values():
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    assert obs["state"].shape == (7,) and obs["state"].dtype == np.float32
    assert obs["instruction"] == "open the drawer" and obs["robot_type"] == "sawyer"

    # Upright and not mirrored: draw only the hand (the arm hidden), find it in the image by
    # differencing with a render where it is hidden too, and compare with a pinhole projection of
    # the hand's geoms; a point 20 cm above the hand must appear higher in the image.
    env.reset(3, appearance=mw.Appearance(hide_arm=True))
    for _ in range(15):  # move the hand off the image centre, so a 180-degree error would show
        env.step(env.from_native(np.array([1.0, -0.5, 0.3, 0.0])))
    with_hand = env.render()
    model, data = env._env.model, env._env.data
    model.geom_group[env._hand_geoms] = mw.HIDDEN_GROUP
    without = env.render()
    for name in ("corner", "topview"):
        cam = model.camera(name).id
        diff = np.abs(with_hand[name].astype(int) - without[name].astype(int)).sum(-1) > 30
        assert diff.sum() > 3, f"the hand should be visible from {name}"
        rows, cols = np.nonzero(diff)
        rot = data.cam_xmat[cam].reshape(3, 3)  # columns: camera x (right), y (up), z (backwards)
        f = (SIZE / 2) / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)

        def project(points, rot=rot, cam=cam, f=f):
            p = (points - data.cam_xpos[cam]) @ rot
            return SIZE / 2 - f * p[:, 1] / -p[:, 2], SIZE / 2 + f * p[:, 0] / -p[:, 2]  # raw (row, col)

        hand = data.geom_xpos[env._hand_geoms]
        row, col = (v.mean() for v in project(hand))
        row_above, _ = (v.mean() for v in project(hand + np.array([0.0, 0.0, 0.2])))
        if rot[2, 1] < 0:  # a camera mounted upside down: our frame is the raw one turned 180 degrees
            row, col, row_above = SIZE - row, SIZE - col, SIZE - row_above
        assert abs(rows.mean() - row) < 6 and abs(cols.mean() - col) < 6, (name, rows.mean(), cols.mean(), row, col)
        if name == "corner":
            assert row_above < row - 3, "up in the world must be up in the image"
    env.reset(3)  # restores the pristine model


def test_reset_is_deterministic_and_demonstrations_replay_exactly(env):
    actions, states, subtasks, ok = _expert_episode(env, seed=5)
    assert ok, "the scripted expert should open the drawer"
    assert subtasks[0] == "reach the drawer handle" and subtasks[-1] == "pull the drawer open"
    # The recorded absolute rows map back to the expert's own native commands.
    obs = env.reset(5)
    for t, row in enumerate(actions):
        np.testing.assert_allclose(obs["state"], states[t], atol=1e-6)
        r = env.step(row)
        obs = r.observation
    assert r.success
    # The same seed is the same scene; another seed places the drawer elsewhere.
    env.reset(5)
    scene5 = env.obs_vector.copy()
    env.reset(5)
    np.testing.assert_array_equal(env.obs_vector, scene5)
    env.reset(6)
    assert np.linalg.norm(env.obs_vector[4:7] - scene5[4:7]) > 1e-3


def test_action_conversion_round_trip(env):
    env.reset(1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        native = np.concatenate([rng.uniform(-0.99, 0.99, 3), rng.uniform(-1, 1, 1)])
        row = env.from_native(native)
        np.testing.assert_allclose(env.to_native(row), native, atol=1e-4)
    with pytest.raises(ValueError, match="7-D"):
        env.to_native(np.zeros(4))


def test_generated_dataset_validates_and_reads_back(tmp_path: Path):
    cfg = GenConfig(
        env="metaworld", out=tmp_path / "ds", tasks="drawer-open", episodes=2, workers=1, size=SIZE, progress=False
    )
    summary = generate(cfg)
    assert summary["episodes"] == {TASK: 2}
    assert validate(cfg.out, progress=False) == []
    ds = RobotDataset(cfg.out)
    assert ds.num_episodes == 2 and ds.fps == mw.FPS and ds.info["robot_type"] == "sawyer"
    assert ds.tasks == ["open the drawer"]
    assert {"reach the drawer handle", "pull the drawer open"} <= set(ds.subtasks)
    # Episode 0 is the first successful seed of the block: regenerate it and compare.
    demo = run_demo(Job("metaworld", TASK, demo_seed(0, 0, False), 0, {"size": SIZE}))
    cols = ds.episode_columns(0)
    np.testing.assert_allclose(cols[lf.ACTION], demo.action, atol=1e-6)
    np.testing.assert_allclose(cols[lf.STATE], demo.state, atol=1e-6)
    frames = ds.frames(0, "corner", [0, len(demo.action) - 1])
    assert _psnr(frames[0], demo.images["corner"][0]) > 30
    assert _psnr(frames[1], demo.images["corner"][-1]) > 30
    assert [ds.subtasks[i] for i in cols[lf.SUBTASK_INDEX].reshape(-1)] == demo.subtasks


def test_human_domain_has_no_actions_and_eval_file_matches_frames(tmp_path: Path):
    cfg = GenConfig(
        env="metaworld",
        out=tmp_path / "human",
        tasks="drawer-open",
        episodes=1,
        workers=1,
        size=SIZE,
        domain="human",
        progress=False,
    )
    generate(cfg)
    assert validate(cfg.out, progress=False) == []
    ds = RobotDataset(cfg.out)
    assert not ds.has_action and not ds.has_state and ds.info["robot_type"] == "human"
    assert lf.ACTION not in ds.features and lf.STATE not in ds.features
    truth = load_true_actions(cfg.out)
    assert set(truth) == {0}
    t = truth[0]
    assert len(t["action"]) == ds.episodes[0].length == len(t["state"])
    assert t["seed"] >= 500_000 and t["seed"] < EVAL_SEED_BASE  # the human seed stream
    # Replaying the true actions from the seed with the same appearance renders the stored frames.
    env = mw.make(TASK, size=SIZE)
    try:
        assert t["appearance"] == {"arm": "hidden", "camera_jitter": 0.03, "light_jitter": 0.3, "table_tint": True}
        obs = env.reset(t["seed"], appearance=mw.human_appearance(t["seed"], **t["appearance"]))
        rendered = [obs["images"]["corner"]]
        for row in t["action"][:-1]:
            rendered.append(env.step(row).observation["images"]["corner"])
        idx = [0, len(rendered) // 2, len(rendered) - 1]
        stored = ds.frames(0, "corner", idx)
        for k, i in enumerate(idx):
            assert _psnr(stored[k], rendered[i]) > 30
        robot = env.reset(t["seed"], appearance=mw.Appearance())["images"]["corner"]
        assert _psnr(robot, rendered[0]) < 25  # the embodiment shift is visible
    finally:
        env.close()


def test_human_keep_actions_writes_the_same_episode_with_its_actions(tmp_path: Path):
    kw = dict(env="metaworld", tasks="drawer-open", episodes=1, workers=1, size=SIZE, domain="human", progress=False)
    generate(GenConfig(out=tmp_path / "free", **kw))
    generate(GenConfig(out=tmp_path / "kept", human_keep_actions=True, **kw))
    free, kept = RobotDataset(tmp_path / "free"), RobotDataset(tmp_path / "kept")
    assert kept.has_action and kept.has_state and kept.info["robot_type"] == "sawyer"
    truth = load_true_actions(tmp_path / "free")[0]
    cols = kept.episode_columns(0)
    np.testing.assert_allclose(cols[lf.ACTION], truth["action"], atol=1e-6)
    np.testing.assert_allclose(cols[lf.STATE], truth["state"], atol=1e-6)
    last = free.episodes[0].length - 1
    assert _psnr(kept.frames(0, "corner", [last])[0], free.frames(0, "corner", [last])[0]) > 40  # same scene
    with pytest.raises(ConfigError, match="human_keep_actions"):
        GenConfig(out=tmp_path / "x", env="metaworld", human_keep_actions=True)


def test_human_appearance_factors_switch_independently():
    # Turning one change off leaves the others' random draws alone, so the one-factor datasets
    # of a seed differ from the full human domain in that factor only.
    full = mw.human_appearance(7)
    arm = mw.human_appearance(7, arm="shown")
    skin = mw.human_appearance(7, arm="skin")
    assert skin.skin_arm and not skin.hide_arm and skin.camera_shift == full.camera_shift
    no_tint = mw.human_appearance(7, table_tint=False)
    still_light = mw.human_appearance(7, light_jitter=0.0)
    assert full.hide_arm and not arm.hide_arm and not arm.skin_arm
    with pytest.raises(ConfigError, match="human arm"):
        mw.human_appearance(7, arm="robot")
    assert full.table_tint is not None and no_tint.table_tint is None and arm.table_tint == full.table_tint
    assert arm.camera_shift == no_tint.camera_shift == still_light.camera_shift == full.camera_shift != (0.0,) * 3
    assert arm.light_scale == no_tint.light_scale == full.light_scale != 1.0 and still_light.light_scale == 1.0
    assert mw.human_appearance(8).camera_shift != full.camera_shift


def test_skin_arm_keeps_the_arm_recoloured(env):
    def skin_pixels(appearance):
        img = env.reset(3, appearance=appearance)["images"]["corner"].astype(int)
        return int((np.abs(img - np.array(mw.SKIN[:3]) * 255).max(-1) < 45).sum())

    shown, hidden, skin = (skin_pixels(mw.Appearance(**kw)) for kw in ({}, {"hide_arm": True}, {"skin_arm": True}))
    assert hidden > shown  # the hand alone is skin-coloured
    assert skin > 3 * hidden  # the whole arm is, and it is still drawn
    env.reset(3, appearance=mw.Appearance())  # leave the shared env as shipped


def test_harness_replay_succeeds_and_noop_fails(env, tmp_path: Path):
    seeds = [demo_seed(0, 0, False), demo_seed(0, 1, False)]
    recorded = {s: _expert_episode(env, s)[0] for s in seeds}

    def replay(e, seed):
        return ReplayPolicy(recorded[seed], replan_every=5)

    out = tmp_path / "replay.json"
    cfg = RolloutConfig(tasks="drawer-open", workers=1, size=SIZE, replan_every=5, out=out, video_episodes=1)
    res = evaluate(cfg, policy=replay, seeds=seeds)
    assert res["tasks"][TASK]["successes"] == 2 and res["mean_success_rate"] == 1.0
    for o in res["tasks"][TASK]["outcomes"]:
        assert o["steps"] == len(recorded[o["seed"]])
    assert json.loads(out.read_text())["tasks"][TASK]["successes"] == 2
    (video,) = (tmp_path / "replay_videos").glob("*.mp4")
    assert video.name == f"{TASK}_seed{seeds[0]}_ok.mp4"
    frames, _ = VideoReader(video).read_all()
    assert len(frames) == len(recorded[seeds[0]]) + 1  # the first frame + one per step

    res = evaluate(replace(cfg, episodes=2, max_steps=60), policy="noop")
    assert res["mean_success_rate"] == 0.0 and res["episodes"] == 2
    assert all(o["seed"] >= EVAL_SEED_BASE and o["steps"] == 60 for o in res["tasks"][TASK]["outcomes"])


def test_harness_renders_only_the_observations_policies_read(env):
    """Rows inside a replan window step without rendering; the policy still sees exactly the frame a
    fully rendered episode shows it, and the outcome is unchanged."""
    from clap_vla.sim.rollout import run_episode

    seed = demo_seed(0, 0, False)
    actions = _expert_episode(env, seed)[0]

    class Reader(ReplayPolicy):
        def __init__(self):
            super().__init__(actions, replan_every=5)
            self.seen = []

        def infer(self, obs):
            self.seen.append(obs["images"]["corner"].copy())
            return super().infer(obs)

    renders = 0
    real_render = env.render

    def counting_render():
        nonlocal renders
        renders += 1
        return real_render()

    env.render = counting_render
    try:
        blind = Reader()
        out = run_episode(env, blind, seed, replan_every=5)
        n_blind = renders
        renders = 0
        full = Reader()
        out_full = run_episode(env, full, seed, replan_every=5, record=True)  # recording renders every step
        n_full = renders
    finally:
        del env.render
    assert out.success and (out.steps, out.success) == (out_full.steps, out_full.success)
    assert n_full == out.steps + 1
    assert n_blind == len(blind.seen) == -(-out.steps // 5)  # reset + the last row of each full window
    assert len(blind.seen) == len(full.seen)
    for a, b in zip(blind.seen, full.seen, strict=True):
        np.testing.assert_array_equal(a, b)
    assert env.step(actions[0], render=False).observation["images"] == {}


def test_parallel_workers_give_the_same_results_as_one():
    # The expert within a 40-step budget: every seed has its own outcome (steps to success, or a
    # failure), so a worker running the wrong seed or task would change the results.
    cfg = RolloutConfig(
        tasks="coffee-button,handle-press", workers=1, size=16, max_steps=40, episodes=3, policy="expert"
    )
    one = evaluate(cfg)
    for task in ("coffee-button-v3", "handle-press-v3"):
        outcomes = [(o["success"], o["steps"]) for o in one["tasks"][task]["outcomes"]]
        assert len(set(outcomes)) == 3, (task, outcomes)
    assert 0 < one["pooled_success_rate"] < 1
    two = evaluate(replace(cfg, workers=2))
    assert one["tasks"] == two["tasks"]


def _episodes(root: Path) -> list[tuple[list[str], np.ndarray]]:
    ds = RobotDataset(root)
    return [(ds.episodes[i].tasks, ds.episode_columns(i, [lf.ACTION])[lf.ACTION]) for i in range(ds.num_episodes)]


def test_generation_with_two_workers_equals_one(tmp_path: Path):
    # A 40-step budget: each task's first seed fails and is skipped, and two workers run seeds
    # ahead of what the task needs; the dataset must not change.
    cfg = GenConfig(
        env="metaworld", out=tmp_path / "w1", tasks="coffee-button,handle-press", episodes=2, workers=1,
        size=32, max_steps=40, codec="h264", progress=False,
    )  # fmt: skip
    one = generate(cfg)
    two = generate(replace(cfg, out=tmp_path / "w2", workers=2))
    assert one == {**two, "out": one["out"]}
    assert one["attempts"] == {"coffee-button-v3": 3, "handle-press-v3": 3}
    a, b = _episodes(tmp_path / "w1"), _episodes(tmp_path / "w2")
    expected = [["press the button on the coffee machine"]] * 2 + [["press the handle down"]] * 2
    assert [t for t, _ in a] == [t for t, _ in b] == expected
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert x.shape == y.shape and np.array_equal(x, y)


def test_attempt_limit_is_the_same_for_one_and_two_workers(tmp_path: Path):
    # Two steps are never enough: both give up after the same 24 seeds with the same message.
    cfg = GenConfig(
        env="metaworld", out=tmp_path / "w1", tasks="reach", episodes=1, workers=1, size=16, max_steps=2,
        progress=False,
    )  # fmt: skip
    errors = []
    for workers in (1, 2):
        with pytest.raises(ClapError, match="succeeded in only 0 of 24 episodes") as info:
            generate(replace(cfg, out=tmp_path / f"w{workers}", workers=workers))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()


@pytest.mark.slow
def test_late_success_within_the_attempt_limit_with_two_workers(tmp_path: Path):
    # The reviewer's case: the expert first succeeds on seed 22 of 24 in block 14 with 31 steps; the
    # limit once counted look-ahead seeds, so two workers gave up where one succeeded.
    cfg = GenConfig(
        env="metaworld", out=tmp_path / "w1", tasks="reach", episodes=1, seed=14, workers=1, size=16,
        max_steps=31, codec="h264", progress=False,
    )  # fmt: skip
    one = generate(cfg)
    two = generate(replace(cfg, out=tmp_path / "w2", workers=2))
    assert one["attempts"] == two["attempts"] == {"reach-v3": 23}
    assert _episodes(tmp_path / "w1")[0][1].tolist() == _episodes(tmp_path / "w2")[0][1].tolist()


def test_policy_specs_classes_and_objects(tmp_path: Path, monkeypatch):
    (tmp_path / "clap_mw_policies.py").write_text(
        "import numpy as np\n"
        "SEEDS = []\n"
        "class Hold:\n"
        "    def __init__(self, env, seed):\n"
        "        SEEDS.append(seed)\n"
        "        self.env = env\n"
        "    def infer(self, observation):\n"
        "        return self.env.hold_action()[None]\n"
        "class Counter:\n"
        "    calls = 0\n"
        "    def infer(self, observation):\n"
        "        Counter.calls += 1\n"
        "        return np.asarray(observation['state'])[None]\n"
        "POLICY = Counter()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import clap_mw_policies as mod

    cfg = RolloutConfig(tasks="reach", workers=1, size=16, max_steps=3, episodes=2, replan_every=1)
    res = evaluate(cfg, policy="clap_mw_policies:Hold")  # a class is a factory, called with (env, seed)
    assert mod.SEEDS == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1] and res["policy"] == "clap_mw_policies:Hold"
    res = evaluate(cfg, policy="clap_mw_policies:POLICY")  # an instance is the policy itself
    assert mod.Counter.calls == 6 and res["episodes"] == 2


def test_worker_errors_name_simulator_task_and_seed(monkeypatch):
    from clap_vla.sim import workers
    from clap_vla.sim.workers import JobError

    cfg = RolloutConfig(tasks="reach", workers=1, size=16, max_steps=3, episodes=1)

    def broken(env, seed):
        raise ValueError("no checkpoint")

    with pytest.raises(
        JobError, match=rf"metaworld task 'reach-v3', seed {EVAL_SEED_BASE}: ValueError: no checkpoint"
    ) as info:
        evaluate(cfg, policy=broken)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(JobError, match=r"metaworld task 'nosuch', seed 3: .*unknown Meta-World task") as info:
        run_demo(Job("metaworld", "nosuch", 3, 0, {"size": 16}))
    assert isinstance(info.value.__cause__, ConfigError) and isinstance(info.value, ClapError)

    # Checked before any worker starts.
    def no_workers(*args, **kwargs):
        raise AssertionError("workers started")

    monkeypatch.setattr(workers, "ordered_imap", no_workers)
    two = replace(cfg, workers=2)
    with pytest.raises(ConfigError, match="module level.*workers=1"):
        evaluate(two, policy=lambda env, seed: None)
    with pytest.raises(ConfigError, match=r"max_steps must be 1\.\.500, got 600"):
        evaluate(replace(two, max_steps=600))
    with pytest.raises(ConfigError, match="unknown metaworld camera"):
        evaluate(replace(two, cameras=("nosuch",)))
    with pytest.raises(ConfigError, match=r"max_steps must be 1\.\.500"):
        generate(GenConfig(env="metaworld", out=Path("/nonexistent/x"), tasks="reach", max_steps=501, progress=False))


def test_rollout_config_checks():
    with pytest.raises(ConfigError, match="LIBERO has no scripted experts"):
        RolloutConfig(env="libero", tasks="libero_goal/0")
    with pytest.raises(ConfigError, match="action_mode is a LIBERO option"):
        RolloutConfig(env="metaworld", action_mode="absolute")
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        RolloutConfig(max_steps=0)
    assert RolloutConfig(env="libero", tasks="libero_goal/0", policy="noop", action_mode="absolute").action_mode


def test_state_orientation_is_the_weld_orientation_within_tolerance(env):
    from scipy.spatial.transform import Rotation

    weld = Rotation.from_quat(np.roll(mw.MOCAP_QUAT, -1))  # scipy wants (x, y, z, w)
    np.testing.assert_allclose(mw.MOCAP_RPY, [0.0, np.pi / 2, 0.0], atol=1e-12)
    np.testing.assert_allclose(Rotation.from_euler("xyz", mw.MOCAP_RPY).as_matrix(), weld.as_matrix(), atol=1e-12)
    # Small wobbles around the pointing-down weld: the measured angles jump by ~2 pi, the state's do not.
    a = (Rotation.from_rotvec([0.05, 0.0, 0.0]) * weld).as_matrix()
    b = (Rotation.from_rotvec([-0.05, 0.01, 0.0]) * weld).as_matrix()
    assert np.abs(mw.matrix_to_euler(a) - mw.matrix_to_euler(b)).max() > 3
    np.testing.assert_array_equal(mw.state_rpy(a), mw.MOCAP_RPY)
    np.testing.assert_array_equal(mw.state_rpy(b), mw.MOCAP_RPY)
    # A hand twisted beyond the tolerance reports what it measures.
    twisted = (Rotation.from_rotvec([0.0, 0.0, mw.WELD_TOLERANCE + 0.05]) * weld).as_matrix()
    np.testing.assert_allclose(mw.state_rpy(twisted), mw.matrix_to_euler(twisted))
    # In an episode: a constant orientation, equal to the action rows'.
    actions, states, _, ok = _expert_episode(env, seed=2)
    assert ok
    np.testing.assert_array_equal(states[:, 3:6], np.broadcast_to(mw.MOCAP_RPY.astype(np.float32), (len(states), 3)))
    np.testing.assert_array_equal(actions[:, 3:6], states[:, 3:6])


def test_cli_gen_and_rollout_tiny(tmp_path: Path):
    from clap_vla.cli import main

    assert main(["data", "gen", "--config", "tiny", "--out", str(tmp_path / "ds"), "--episodes", "1"]) == 0
    assert RobotDataset(tmp_path / "ds").num_episodes == 1
    out = tmp_path / "r.json"
    args = ["eval", "rollout", "--config", "tiny", "--max-steps", "20", "--policy", "noop", "--out", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["episodes"] == 2
    assert main(["eval", "rollout", "--config", "tiny", "--policy", "nosuch"]) != 0


def test_harness_rejects_bad_chunks(env):
    cfg = RolloutConfig(tasks="drawer-open", workers=1, size=SIZE, max_steps=10, episodes=1)

    class Wrong:
        def infer(self, obs):
            return np.zeros((4, 14), np.float32)

    with pytest.raises(ClapError, match=r"task 'drawer-open-v3', seed \d+: .*shape \(4, 14\); expected \(k>=1, 7\)"):
        evaluate(cfg, policy=lambda e, s: Wrong())


def test_wilson_interval_reference_values():
    # Wilson (1927) score interval, z = 1.96; reference values computed by hand in float64.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)


def test_gl_error_names_the_debian_package(monkeypatch):
    from clap_vla.sim import gl

    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setattr(gl, "_loadable", lambda lib: False)
    with pytest.raises(ClapError, match="libegl1"):
        gl.ensure_gl()
