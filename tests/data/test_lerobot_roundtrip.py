import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import write_toy

from clap_vla.data import lerobot_format as lf
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.inspect import validate


def test_numeric_columns_roundtrip_exactly(toy):
    root, eps = toy
    ds = RobotDataset(root)
    assert ds.num_episodes == len(eps) and ds.num_frames == sum(len(e.action) for e in eps)
    offset = 0
    for i, e in enumerate(eps):
        c = ds.episode_columns(i)
        np.testing.assert_array_equal(c[lf.ACTION], e.action)
        np.testing.assert_array_equal(c[lf.STATE], e.state)
        T = len(e.action)
        np.testing.assert_array_equal(c[lf.FRAME_INDEX], np.arange(T))
        np.testing.assert_array_equal(c[lf.INDEX], offset + np.arange(T))
        np.testing.assert_allclose(c[lf.TIMESTAMP], np.arange(T) / 10, atol=1e-6)
        assert ds.task_of(int(c[lf.TASK_INDEX][0])) == e.task
        assert [ds.subtasks[j] for j in c[lf.SUBTASK_INDEX]] == e.subtasks
        offset += T
    assert validate(root, progress=False) == []


@pytest.mark.parametrize("codec", ["av1", "h264"])
def test_video_roundtrip_psnr_128(tmp_path, codec):
    eps = write_toy(tmp_path / "ds", n=2, length=30, size=128, codec=codec)
    ds = RobotDataset(tmp_path / "ds")
    for i, e in enumerate(eps):
        got = ds.frames(i, "main", np.arange(len(e.frames))).astype(np.float64)
        psnr = 10 * np.log10(255**2 / np.mean((got - e.frames) ** 2))
        print(f"{codec} episode {i}: PSNR {psnr:.2f} dB")
        assert psnr > 35.0
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["observation.images.main"]["info"]["video.codec"] == codec


def test_random_access_equals_sequential_decode(toy):
    root, eps = toy
    ds = RobotDataset(root)
    full = ds.frames(2, "main", np.arange(len(eps[2].frames)))
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.integers(0, len(full), 2)
        np.testing.assert_array_equal(ds.frames(2, "observation.images.main", idx), full[idx])


def test_info_json_layout(toy):
    root, eps = toy
    info = json.loads((root / lf.INFO_PATH).read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3 and info["total_tasks"] == len({e.task for e in eps})
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert list(feats)[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert feats["action"] == {"dtype": "float32", "shape": [7], "names": None}
    cam = feats["observation.images.main"]
    assert cam["shape"] == [64, 64, 3] and cam["names"] == ["height", "width", "channels"]
    assert cam["info"]["video.pix_fmt"] == "yuv420p" and cam["info"]["video.fps"] == 10
    # All episodes share one data file and one mp4 (LeRobot v3: many episodes per file).
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet")) == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/subtasks.parquet",
        "meta/tasks.parquet",
    ]
    assert len(list(root.rglob("*.mp4"))) == 1


def test_data_parquet_schema_is_lerobots(toy):
    root, _ = toy
    f = pq.ParquetFile(root / "data/chunk-000/file-000.parquet")
    assert f.num_row_groups == 3  # one row group per episode
    schema = f.schema_arrow
    t = schema.field("action").type
    assert pa.types.is_fixed_size_list(t) and t.list_size == 7 and t.value_type == pa.float32()
    assert str(schema.field("timestamp").type) == "float"
    hf = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["action"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 7, "_type": "List"}
    assert hf["index"] == {"dtype": "int64", "_type": "Value"}
    ep = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert ep[1]["dataset_from_index"] == ep[0]["dataset_to_index"]
    key = "videos/observation.images.main"
    assert ep[1][f"{key}/from_timestamp"] == pytest.approx(ep[0][f"{key}/to_timestamp"])
    assert ep[0][f"{key}/to_timestamp"] == pytest.approx(ep[0]["length"] / 10)


def test_stats_against_numpy(toy):
    root, eps = toy
    stats = json.loads((root / lf.STATS_PATH).read_text())
    actions = np.concatenate([e.action for e in eps]).astype(np.float64)
    a = stats["action"]
    np.testing.assert_allclose(a["mean"], actions.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a["std"], actions.std(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a["min"], actions.min(0))
    np.testing.assert_allclose(a["max"], actions.max(0))
    assert a["count"] == [len(actions)]
    assert set(a) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    img = stats["observation.images.main"]
    assert np.asarray(img["mean"]).shape == (3, 1, 1) and 0 <= np.min(img["min"]) <= np.max(img["max"]) <= 1
    # Per-episode quantiles are exact.
    row = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()[1]
    np.testing.assert_allclose(row["stats/action/q90"], np.quantile(eps[1].action.astype(np.float64), 0.9, axis=0))


def test_files_rotate_by_size_and_chunks(tmp_path):
    eps = write_toy(
        tmp_path / "ds",
        n=5,
        length=12,
        size=32,
        data_file_size_in_mb=1e-6,
        video_file_size_in_mb=1e-6,
        chunks_size=2,
    )
    root = tmp_path / "ds"
    data = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    assert data == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
        "data/chunk-001/file-001.parquet",
        "data/chunk-002/file-000.parquet",
    ]
    ds = RobotDataset(root)
    for i, e in enumerate(eps):
        np.testing.assert_array_equal(ds.episode_columns(i)[lf.ACTION], e.action)
        assert ds.frames(i, "main", [len(e.frames) - 1]).shape == (1, 32, 32, 3)
    assert validate(root, progress=False) == []


def test_bimanual_and_action_free(tmp_path):
    from clap_vla.data.lerobot_writer import LeRobotWriter

    eps = write_toy(tmp_path / "bi", n=2, length=10, size=32, arms=("left", "right"))
    assert RobotDataset(tmp_path / "bi").dim(lf.ACTION) == 14
    with LeRobotWriter(tmp_path / "free", fps=10) as w:
        w.add_episode(task=eps[0].task, images={"ego": eps[0].frames})
    ds = RobotDataset(tmp_path / "free")
    assert not ds.has_action and not ds.has_state and ds.cameras == ["observation.images.ego"]
    assert validate(tmp_path / "free", progress=False) == []


def test_image_stats_histogram_equals_naive_numpy():
    from clap_vla.data.stats import image_stats

    frames = np.random.default_rng(0).integers(0, 256, (7, 20, 30, 3), dtype=np.uint8)
    got = image_stats(frames)
    px = frames.reshape(-1, 3).astype(np.float64) / 255
    ref = {"min": px.min(0), "max": px.max(0), "mean": px.mean(0), "std": px.std(0)}
    for q in (1, 10, 50, 90, 99):
        ref[f"q{q:02d}"] = np.quantile(px, q / 100, axis=0)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k].reshape(3), v, atol=1e-12, err_msg=k)
    assert got["count"].tolist() == [7]


def test_every_frame_identity_across_rotated_files(tmp_path):
    """One grey level per frame across episodes, files and chunks: any off-by-one shows."""
    from clap_vla.data.lerobot_writer import LeRobotWriter

    lengths = [9, 14, 11, 7, 12]
    with LeRobotWriter(tmp_path / "ds", fps=7, video_file_size_in_mb=1e-6, chunks_size=1) as w:
        g = 0
        for T in lengths:
            frames = np.stack([np.full((16, 16, 3), 4 * (g + k), np.uint8) for k in range(T)])
            w.add_episode(task="t", images={"c": frames}, extra={"level": 4.0 * (g + np.arange(T))})
            g += T
    ds = RobotDataset(tmp_path / "ds")
    files = {
        ds.episodes[i].video_files["observation.images.c"].relative_to(tmp_path / "ds").as_posix()
        for i in range(len(lengths))
    }
    # Rotation is decided from muxed bytes, which lag the encoder's look-ahead: at least 2 files.
    assert len(files) >= 2 and "videos/observation.images.c/chunk-001/file-000.mp4" in files
    start: dict = {}
    for i, T in enumerate(lengths):
        f = ds.episodes[i].video_files["observation.images.c"]
        assert ds.episodes[i].video_from_timestamp["observation.images.c"] == pytest.approx(start.get(f, 0) / 7)
        start[f] = start.get(f, 0) + T
        level = ds.episode_columns(i, ["level"])["level"]
        got = ds.frames(i, "c", np.arange(T)[::-1])[:, 8, 8, 0].astype(float)
        np.testing.assert_allclose(got, level[::-1], atol=2)
