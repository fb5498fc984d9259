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
