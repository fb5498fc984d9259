"""Each kind of bad input raises an error naming the file, episode and key; nothing written is lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tests.conftest import write_toy

from clap_vla.data.dataset import RobotDataset
from clap_vla.data.inspect import validate
from clap_vla.data.lerobot_writer import LeRobotWriter
from clap_vla.data.windows import WindowConfig, WindowDataset
from clap_vla.errors import DatasetError


@pytest.fixture
def ds_copy(toy, tmp_path):
    root, eps = toy
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst, eps


def test_truncated_mp4_names_file_episode_and_key(ds_copy):
    root, eps = ds_copy
    mp4 = next(root.rglob("*.mp4"))
    data = mp4.read_bytes()
    mp4.write_bytes(data[: len(data) // 2])
    last = len(eps) - 1
    with pytest.raises(DatasetError) as e:
        RobotDataset(root).frames(last, "main", [len(eps[last].frames) - 1])
    msg = str(e.value)
    assert "file-000.mp4" in msg and f"episode {last}" in msg and "'observation.images.main'" in msg
    problems = validate(root, progress=False)
    assert problems and any("file-000.mp4" in p and "observation.images.main" in p for p in problems)


def test_garbage_mp4_is_a_clear_error(ds_copy):
    root, _ = ds_copy
    mp4 = next(root.rglob("*.mp4"))
    mp4.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DatasetError, match="file-000.mp4"):
        RobotDataset(root).frames(0, "main", [0])


def test_missing_parquet_names_the_file(ds_copy):
    root, _ = ds_copy
    (root / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetError, match=r"data file missing: .*file-000\.parquet"):
        RobotDataset(root).episode_columns(0)
    assert any("file-000.parquet" in p for p in validate(root, progress=False))


def test_missing_metadata_names_the_file(ds_copy):
    root, _ = ds_copy
    (root / "meta/tasks.parquet").unlink()
    with pytest.raises(DatasetError, match="tasks.parquet"):
        RobotDataset(root)


def test_feature_shape_disagreeing_with_info(ds_copy):
    root, _ = ds_copy
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [6]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(
        DatasetError,
        match=r"file-000\.parquet: feature 'action' has shape \[7\] but info.json declares \[6\]",
    ):
        RobotDataset(root).episode_columns(1)


def test_nan_actions_rejected_on_write_and_found_by_validate(tmp_path, toy):
    _, eps = toy
    bad = eps[0].action.copy()
    bad[5, 2] = np.nan
    with pytest.raises(DatasetError, match=r"episode 1, key 'action': non-finite value nan at frame 5"):
        with LeRobotWriter(tmp_path / "nan", fps=10) as w:
            w.add_episode(task="t", action=eps[0].action)
            w.add_episode(task="t", action=bad)
    assert not (tmp_path / "nan").exists()  # nothing half-written
    # A NaN that got into a file some other way is reported by validate.
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "ok"
    write_toy(root, n=2, length=10, size=32)
    f = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(f)
    a = t.column("action").combine_chunks()
    vals = a.flatten().to_numpy().copy()
    vals[7 * 13 + 3] = np.inf  # episode 1 (10 frames in episode 0), frame 3
    col = pa.FixedSizeListArray.from_arrays(pa.array(vals), 7)
    pq.write_table(t.set_column(t.schema.get_field_index("action"), t.schema.field("action"), col), f)
    problems = validate(root, progress=False, check_videos=False)
    assert any("episode 1, key 'action': NaN/inf at frame 3" in p for p in problems)


def test_episode_shorter_than_requested(toy):
    root, _eps = toy
    with pytest.raises(DatasetError, match=r"episode 0 has 20 frames, shorter than the requested minimum of 25"):
        WindowDataset(root, WindowConfig(horizon=8, min_episode_length=25))
    with pytest.raises(DatasetError, match=r"episode 0 has 20 frames; requested frame 20"):
        RobotDataset(root).frames(0, "main", [20])


def test_unknown_camera_lists_the_available_ones(toy):
    root, _ = toy
    with pytest.raises(
        DatasetError, match=r"camera 'wrist' does not exist; available cameras: \['observation.images.main'\]"
    ):
        WindowDataset(root, WindowConfig(cameras=("wrist",)))


def test_inconsistent_episode_keys_and_shapes(tmp_path, toy):
    _, eps = toy
    with pytest.raises(DatasetError, match=r"episode 1, key 'action': shape \[6\] != \[7\]"):
        with LeRobotWriter(tmp_path / "x", fps=10) as w:
            w.add_episode(task="t", action=eps[0].action)
            w.add_episode(task="t", action=eps[0].action[:, :6])
    with pytest.raises(DatasetError, match="every key needs the same number of frames"):
        with LeRobotWriter(tmp_path / "y", fps=10) as w:
            w.add_episode(task="t", action=eps[0].action, state=eps[0].state[:-1])


def test_exception_keeps_the_old_dataset(tmp_path):
    root = tmp_path / "ds"
    eps = write_toy(root, n=2, length=10, size=32)
    with pytest.raises(RuntimeError), LeRobotWriter(root, fps=10, overwrite=True) as w:
        w.add_episode(task="new", action=eps[0].action)
        raise RuntimeError("crash mid-write")
    ds = RobotDataset(root)
    assert ds.num_episodes == 2 and validate(root, progress=False) == []
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp dirs left behind
    with pytest.raises(FileExistsError, match="already exists"):
        LeRobotWriter(root, fps=10).__enter__()


KILL_SCRIPT = """
import sys, time, numpy as np
from clap_vla.data.lerobot_writer import LeRobotWriter
from clap_vla.data.synthetic import make_toy_episode
rng = np.random.default_rng(0)
with LeRobotWriter(sys.argv[1], fps=10, overwrite=True) as w:
    for i in range(1000):
        e = make_toy_episode(rng, length=10, size=32)
        w.add_episode(task=e.task, images={"main": e.frames}, action=e.action, state=e.state)
        if i == 2:
            print("writing", flush=True)
"""


@pytest.mark.parametrize("existing", [False, True])
def test_killed_writer_leaves_old_dataset_or_none(tmp_path, existing):
    root = tmp_path / "ds"
    if existing:
        write_toy(root, n=2, length=10, size=32)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if existing:
        assert RobotDataset(root).num_episodes == 2 and validate(root, progress=False) == []
    else:
        assert not root.exists()
    # The killed writer's temp dir is cleaned up by the next writer of the same target.
    write_toy(root, n=1, length=10, size=32, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_too_few_episodes_names_the_holdout_flag(toy):
    """The toy set has 3 episodes: the default split (every 10th held out) has nothing to hold out."""
    from clap_vla.data.chunks import load_chunks
    from clap_vla.data.normalize import ActionNormalizer
    from clap_vla.data.transitions import load_transitions
    from clap_vla.data.windows import fit_norm_stats

    root, eps = toy
    assert len(eps) < 10
    with pytest.raises(DatasetError, match=r"no held-out episodes .*pass --holdout-every N"):
        load_chunks([root], 4, progress=False)
    norm = ActionNormalizer(fit_norm_stats(RobotDataset(root), WindowConfig(horizon=4)))
    with pytest.raises(DatasetError, match=r"no held-out episodes .*pass --holdout-every N"):
        load_transitions(root, 4, normalizer=norm, holdout_every=10, progress=False)
    train, held, _ = load_chunks([root], 4, holdout_every=len(eps), progress=False)  # what the message says works
    assert len(train) > 0 and len(held) > 0
