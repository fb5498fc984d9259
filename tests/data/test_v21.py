"""A LeRobot v2.1 dataset, built here from the format's definition, reads correctly."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_vla.data import lerobot_format as lf
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.inspect import validate
from clap_vla.data.synthetic import make_toy_episode
from clap_vla.data.video import VideoEncoding, VideoFileWriter
from clap_vla.data.windows import WindowConfig, WindowDataset


def build_v21(root, n=3, fps=10, size=32):
    rng = np.random.default_rng(0)
    eps = [make_toy_episode(rng, length=15 + 4 * i, size=size) for i in range(n)]
    tasks = sorted({e.task for e in eps})
    (root / "meta").mkdir(parents=True)
    features = {
        "action": {"dtype": "float32", "shape": [7], "names": None},
        "observation.state": {"dtype": "float32", "shape": [7], "names": None},
        "observation.images.top": {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
            "info": {"video.fps": fps, "video.codec": "h264"},
        },
        **lf.DEFAULT_FEATURES,
    }
    index = 0
    for i, e in enumerate(eps):
        T = len(e.action)
        # HF `datasets` writes variable-length lists (Sequence) in v2.1 parquet files.
        table = pa.table(
            {
                "action": pa.array(e.action.tolist(), pa.list_(pa.float32())),
                "observation.state": pa.array(e.state.tolist(), pa.list_(pa.float32())),
                "timestamp": pa.array(np.arange(T) / fps, pa.float32()),
                "frame_index": pa.array(np.arange(T), pa.int64()),
                "episode_index": pa.array([i] * T, pa.int64()),
                "index": pa.array(index + np.arange(T), pa.int64()),
                "task_index": pa.array([tasks.index(e.task)] * T, pa.int64()),
            }
        )
        p = root / f"data/chunk-000/episode_{i:06d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, p)
        w = VideoFileWriter(
            root / f"videos/chunk-000/observation.images.top/episode_{i:06d}.mp4",
            fps,
            size,
            size,
            VideoEncoding(codec="h264"),
        )
        w.write(e.frames)
        w.close()
        index += T
    info = {
        "codebase_version": "v2.1",
        "robot_type": "toy",
        "total_episodes": n,
        "total_frames": index,
        "total_tasks": len(tasks),
        "total_videos": n,
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": fps,
        "splits": {"train": f"0:{n}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/episodes.jsonl").write_text(
        "\n".join(
            json.dumps({"episode_index": i, "tasks": [e.task], "length": len(e.action)}) for i, e in enumerate(eps)
        )
    )
    (root / "meta/tasks.jsonl").write_text(
        "\n".join(json.dumps({"task_index": i, "task": t}) for i, t in enumerate(tasks))
    )
    return eps


def test_v21_reads(tmp_path):
    eps = build_v21(tmp_path / "v21")
    ds = RobotDataset(tmp_path / "v21")
    assert ds.version == "v2.1" and ds.num_episodes == 3 and ds.cameras == ["observation.images.top"]
    for i, e in enumerate(eps):
        c = ds.episode_columns(i)
        np.testing.assert_array_equal(c["action"], e.action)
        assert ds.task_of(int(c["task_index"][0])) == e.task
        frames = ds.frames(i, "top", np.arange(len(e.frames))).astype(float)
        assert 10 * np.log10(255**2 / np.mean((frames - e.frames) ** 2)) > 30
    w = WindowDataset(ds, WindowConfig(horizon=8))[len(eps[0].action) + 2]  # episode 1, t = 2
    assert w.episode_index == 1 and w.frame_index == 2 and w.instruction == eps[1].task
    assert validate(tmp_path / "v21", progress=False) == []
