"""Our v3 files through the loading path of LeRobot's LeRobotDataset.

The `lerobot` package itself needs Python >= 3.12 and an old torch, so it cannot run beside this
project; its loader is a thin layer over HF `datasets` (data and episode parquet) and pandas
(tasks.parquet). These tests drive those libraries exactly as LeRobot's loader does: features from
info.json -> HF features, `Dataset.from_parquet`, `pd.read_parquet(tasks)` with the task as index.
"""

import json

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")


def _hf_features(info):
    feats = {}
    for k, f in info["features"].items():
        if f["dtype"] in ("video", "image"):
            continue
        if f["shape"] == [1]:
            feats[k] = datasets.Value(f["dtype"])
        else:
            feats[k] = datasets.List(datasets.Value(f["dtype"]), length=f["shape"][0])
    return datasets.Features(feats)


def test_lerobot_loading_path_reads_our_dataset(toy):
    root, eps = toy
    info = json.loads((root / "meta/info.json").read_text())
    hf = datasets.Dataset.from_parquet(
        [str(p) for p in sorted((root / "data").glob("*/*.parquet"))], features=_hf_features(info)
    )
    assert len(hf) == info["total_frames"]
    row = hf[25]
    episodes = datasets.Dataset.from_parquet([str(p) for p in sorted((root / "meta/episodes").glob("*/*.parquet"))])
    episodes = episodes.remove_columns([c for c in episodes.column_names if c.startswith("stats/")])
    ep = episodes[row["episode_index"]]
    assert ep["dataset_from_index"] <= row["index"] < ep["dataset_to_index"]
    t = row["index"] - ep["dataset_from_index"]
    np.testing.assert_array_equal(np.asarray(row["action"], np.float32), eps[row["episode_index"]].action[t])
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task"
    assert tasks.iloc[row["task_index"]].name == eps[row["episode_index"]].task
    assert int(tasks.loc[eps[0].task].task_index) == 0
    # The video query time LeRobot computes: from_timestamp + the row's episode-local timestamp.
    key = "observation.images.main"
    q = ep[f"videos/{key}/from_timestamp"] + row["timestamp"]
    assert q == pytest.approx((ep["dataset_from_index"] + t) / info["fps"], abs=1e-4)


def test_dataset_written_the_way_lerobot_writes_loads_in_ours(tmp_path):
    """Data parquet through HF `datasets` (as LeRobot's recorder), tasks through pandas
    `DataFrame.to_parquet`, episode rows through `pa.Table.from_pydict`, videos per episode
    concatenated by timestamp offset; our reader must see the same numbers and frames."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.lerobot_format import DEFAULT_FEATURES
    from clap_vla.data.synthetic import make_toy_episode
    from clap_vla.data.video import VideoEncoding, VideoFileWriter

    root, fps, size = tmp_path / "lr", 15, 32
    rng = np.random.default_rng(3)
    eps = [make_toy_episode(rng, length=12 + 5 * i, size=size) for i in range(3)]
    tasks = list(dict.fromkeys(e.task for e in eps))
    features = {
        "observation.state": {"dtype": "float32", "shape": [7], "names": [f"s{i}" for i in range(7)]},
        "action": {"dtype": "float32", "shape": [7], "names": [f"a{i}" for i in range(7)]},
        "observation.images.cam": {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
            "info": None,
        },
        **DEFAULT_FEATURES,
    }
    hf_features = _hf_features({"features": features})
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    writer, video, rows, index = None, None, [], 0
    video = VideoFileWriter(
        root / "videos/observation.images.cam/chunk-000/file-000.mp4", fps, size, size, VideoEncoding(codec="h264")
    )
    for i, e in enumerate(eps):
        T = len(e.action)
        buf = {
            "observation.state": e.state.tolist(),
            "action": e.action.tolist(),
            "timestamp": (np.arange(T) / fps).tolist(),
            "frame_index": list(range(T)),
            "episode_index": [i] * T,
            "index": list(range(index, index + T)),
            "task_index": [tasks.index(e.task)] * T,
        }
        table = datasets.Dataset.from_dict(buf, features=hf_features).with_format("arrow")[:]
        if writer is None:
            writer = pq.ParquetWriter(
                root / "data/chunk-000/file-000.parquet", schema=table.schema, compression="snappy", use_dictionary=True
            )
        writer.write_table(table)
        start = video.frame_count / fps
        video.write(e.frames)
        rows.append(
            {
                "episode_index": i,
                "tasks": [e.task],
                "length": T,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": index,
                "dataset_to_index": index + T,
                "videos/observation.images.cam/chunk_index": 0,
                "videos/observation.images.cam/file_index": 0,
                "videos/observation.images.cam/from_timestamp": start,
                "videos/observation.images.cam/to_timestamp": start + T / fps,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
        )
        index += T
    writer.close()
    video.close()
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(
        root / "meta/tasks.parquet"
    )
    info = {
        "codebase_version": "v3.0",
        "robot_type": None,
        "total_episodes": 3,
        "total_frames": index,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": "0:3"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))

    ds = RobotDataset(root)
    assert ds.num_episodes == 3 and ds.tasks == tasks
    for i, e in enumerate(eps):
        c = ds.episode_columns(i)
        np.testing.assert_array_equal(c["action"], e.action)
        np.testing.assert_array_equal(c["observation.state"], e.state)
        frames = ds.frames(i, "cam", np.arange(len(e.frames))).astype(float)
        assert 10 * np.log10(255**2 / np.mean((frames - e.frames) ** 2)) > 30
