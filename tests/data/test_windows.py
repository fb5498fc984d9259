import os

import numpy as np
import pytest
import torch
from tests.conftest import write_toy

from clap_vla.data.action_space import ArmLayout, chunk_to_relative
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.frame_cache import attach_frame_caches
from clap_vla.data.normalize import ActionNormalizer
from clap_vla.data.windows import WindowConfig, WindowDataset, fit_norm_stats
from clap_vla.errors import ConfigError
from clap_vla.types import collate_windows


def test_window_at_episode_end_pads_and_masks(toy):
    root, eps = toy
    H = 8
    wd = WindowDataset(root, WindowConfig(horizon=H))
    assert len(wd) == sum(len(e.action) for e in eps)
    T = len(eps[0].action)  # 20
    t = T - 3
    w = wd[t]
    assert (w.episode_index, w.frame_index) == (0, t)
    assert w.action_valid.tolist() == [True] * 3 + [False] * (H - 3)
    right = w.actions[:, 1].numpy()
    np.testing.assert_array_equal(right[:3], eps[0].action[t:])
    np.testing.assert_array_equal(right[3:], np.repeat(eps[0].action[-1:], H - 3, 0))  # last action repeated
    assert (w.actions[:, 0] == 0).all() and w.arm_mask.tolist() == [False, True]
    np.testing.assert_array_equal(w.state[1].numpy(), eps[0].state[t])
    # Frame pair (o_t, o_{t+H}) with the second index clamped to the last frame.
    ds = RobotDataset(root)
    f = w.frames["observation.images.main"]
    assert f.shape == (2, 3, 64, 64) and f.dtype == torch.uint8
    np.testing.assert_array_equal(f.permute(0, 2, 3, 1).numpy(), ds.frames(0, "main", [t, T - 1]))
    assert w.instruction == eps[0].task and w.subtask == eps[0].subtasks[t]


def test_window_in_the_middle_is_fully_valid(toy):
    root, eps = toy
    wd = WindowDataset(root, WindowConfig(horizon=8, cameras=()))
    w = wd[len(eps[0].action) + 4]  # episode 1, t = 4
    assert w.action_valid.all() and w.frames == {}
    np.testing.assert_array_equal(w.actions[:, 1].numpy(), eps[1].action[4:12])


def test_normalised_windows_match_reference(toy):
    root, eps = toy
    cfg = WindowConfig(horizon=8, cameras=())
    stats = fit_norm_stats(RobotDataset(root), cfg)
    norm = ActionNormalizer(stats)
    wd = WindowDataset(root, cfg, norm)
    w = wd[5]
    # Reference by hand from the saved stats: relative pose, then (x - c) / s clipped; gripper by its range.
    lay = ArmLayout(("right",))
    rel = chunk_to_relative(lay.to_unified(eps[0].action[5:13]), lay.to_unified(eps[0].state[5]))[:, 1]
    np.testing.assert_allclose(rel[:, :3], eps[0].action[5:13, :3] - eps[0].state[5, :3], atol=1e-6)
    q01, q99 = stats.array("q01")[1], stats.array("q99")[1]
    pose = np.clip((rel[:, :6] - (q99[:6] + q01[:6]) / 2) / ((q99[:6] - q01[:6]) / 2), -1, 1)
    lo, hi = stats.gripper_low[1], stats.gripper_high[1]
    grip = 2 * (eps[0].action[5:13, 6] - lo) / (hi - lo) - 1
    np.testing.assert_allclose(w.actions[:, 1, :6].numpy(), pose, atol=1e-5)
    np.testing.assert_allclose(w.actions[:, 1, 6].numpy(), grip, atol=1e-5)
    assert (w.actions[:, 0] == 0).all()
    with pytest.raises(ConfigError, match="horizon 8, windows use 16"):
        WindowDataset(root, WindowConfig(horizon=16), norm)


@pytest.mark.parametrize("arms", [("right",), ("left", "right")])
def test_batched_chunks_equal_the_window_by_window_reads(tmp_path, arms):
    from clap_vla.data.normalize import compute_norm_stats

    root = tmp_path / "ds"
    write_toy(root, n=4, length=15, size=16, arms=arms, data_file_size_in_mb=1e-6)  # episodes over many files
    ds = RobotDataset(root)
    cfg = WindowConfig(horizon=8, cameras=(), stride=2)
    raw = WindowDataset(ds, cfg)
    which = np.array([7, 0, 3, len(raw) - 1, 3])  # unsorted, repeated, across episodes and the last end
    a, v, s = raw.raw_chunks(which)
    assert a.shape == (5, 8, 2, 7) and v.shape == (5, 8) and s.shape == (5, 2, 7)
    for j, i in enumerate(which):
        ra, rv, rs, _ = raw.chunk(*(int(x) for x in raw.index[i]))
        np.testing.assert_array_equal(a[j], ra)
        np.testing.assert_array_equal(v[j], rv)
        np.testing.assert_array_equal(s[j], rs)
    assert not v[3].all()  # the last window runs past its episode's end
    # Normalised: every window equals __getitem__'s actions.
    stats = fit_norm_stats(ds, cfg)
    wd = WindowDataset(ds, cfg, ActionNormalizer(stats))
    acts, valid = wd.action_chunks()
    for i in range(len(wd)):
        w = wd[i]
        np.testing.assert_allclose(acts[i], w.actions.numpy(), atol=1e-6)
        np.testing.assert_array_equal(valid[i], w.action_valid.numpy())
    # The stats equal those of the per-window relative chunks.
    per = [raw.chunk(*(int(x) for x in raw.index[i])) for i in range(len(raw))]
    ref = compute_norm_stats(
        np.stack([chunk_to_relative(c[0], c[2]) for c in per]),
        np.stack([c[1] for c in per]),
        raw.layout,
        relative=True,
        horizon=8,
    )
    for key in ("q01", "q99", "gripper_low", "gripper_high"):
        np.testing.assert_allclose(stats.array(key), ref.array(key), atol=1e-6)


def test_dataloader_workers_match_single_process(toy):
    root, _ = toy
    wd = WindowDataset(root, WindowConfig(horizon=8))
    wd.ds.frames(0, "main", [0])  # open a reader in the parent first (must not travel to the workers)
    idx = list(range(0, len(wd), 3))
    ref = collate_windows([wd[i] for i in idx])
    # Spawned workers: forking a test process that already runs torch, pyarrow and ffmpeg threads can
    # deadlock the child (it hung CI for 80 minutes once). The fork path's own guard is tested below.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(wd, idx),
        batch_size=len(idx),
        num_workers=2,
        collate_fn=collate_windows,
        multiprocessing_context="spawn",
        timeout=300,
    )
    got = next(iter(loader))
    assert torch.equal(got.actions, ref.actions)
    assert torch.equal(got.frames["observation.images.main"], ref.frames["observation.images.main"])
    assert got.instruction == ref.instruction


def test_a_forked_copy_opens_its_own_readers(toy):
    """What a forked DataLoader worker sees: the parent's dataset object with its open readers, in a
    process with another pid. It must open new readers, not seek in the parent's shared files."""
    root, _ = toy
    ds = RobotDataset(root)
    first = ds.frames(0, "main", [0, 1])
    parent_pool = ds._pool
    ds._pool_pid = -1  # as if this object had been inherited by a child process
    again = ds.frames(0, "main", [0, 1])
    assert ds._pool is not parent_pool and ds._pool_pid == os.getpid()
    np.testing.assert_array_equal(again, first)
    own_pool = ds._pool
    ds.frames(0, "main", [2])
    assert ds._pool is own_pool  # kept, not rebuilt on every read


def test_frame_cache_equals_decoding(tmp_path):
    root = tmp_path / "ds"
    write_toy(root, n=3, length=12, size=32, data_file_size_in_mb=1e-6, video_file_size_in_mb=1e-6)
    plain = RobotDataset(root)
    cached = RobotDataset(root)
    attach_frame_caches(cached, cached.cameras, cache_dir=tmp_path / "cache", progress=False)
    for ep in range(3):
        idx = np.arange(plain.episodes[ep].length)
        np.testing.assert_array_equal(cached.frames(ep, "main", idx), plain.frames(ep, "main", idx))
    # A second build finds the existing cache.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.u8")}
    attach_frame_caches(RobotDataset(root), ["main"], cache_dir=tmp_path / "cache", progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.u8")}


def test_action_free_windows_and_mixed_batch(tmp_path, toy):
    from clap_vla.data.lerobot_writer import LeRobotWriter

    root, eps = toy
    with LeRobotWriter(tmp_path / "free", fps=10) as w:
        w.add_episode(task="wave", images={"main": eps[0].frames})
    free = WindowDataset(tmp_path / "free", WindowConfig(horizon=8))
    robot = WindowDataset(root, WindowConfig(horizon=8))
    fw = free[0]
    assert fw.actions is None and fw.state is None and fw.instruction == "wave"
    b = collate_windows([robot[0], fw])
    assert b.has_action.tolist() == [True, False] and (b.actions[1] == 0).all()
    assert b.frames["observation.images.main"].shape == (2, 2, 3, 64, 64)


def test_bimanual_two_cameras(tmp_path):
    from clap_vla.data.lerobot_writer import LeRobotWriter
    from clap_vla.data.synthetic import make_toy_episode

    rng = np.random.default_rng(5)
    e = make_toy_episode(rng, length=12, arms=("left", "right"), size=32)
    with LeRobotWriter(tmp_path / "bi", fps=10) as w:
        w.add_episode(
            task=e.task, images={"head": e.frames, "wrist": e.frames[:, ::-1].copy()}, action=e.action, state=e.state
        )
    wd = WindowDataset(tmp_path / "bi", WindowConfig(horizon=4))
    s = wd[3]
    assert s.arm_mask.tolist() == [True, True]
    np.testing.assert_array_equal(s.actions.numpy().reshape(4, 14), e.action[3:7])
    assert set(s.frames) == {"observation.images.head", "observation.images.wrist"}
    head, wrist = s.frames["observation.images.head"], s.frames["observation.images.wrist"]
    assert head.shape == wrist.shape == (2, 3, 32, 32)
    # The wrist stream is the head stream flipped upside down (within codec error).
    diff = (head.flip(2).float() - wrist.float()).abs().mean()
    assert diff < 4
    assert not torch.equal(head, wrist)
