import json

import numpy as np
import pytest

from clap_vla.data.dataset import RobotDataset
from clap_vla.data.import_videos import import_videos
from clap_vla.data.inspect import validate
from clap_vla.data.video import VideoEncoding, VideoFileWriter
from clap_vla.errors import DatasetError


def _clip(path, n, fps=30, h=48, w=64):
    """Frame k is a flat grey of level 4k, so the source frame of any output frame is readable."""
    wr = VideoFileWriter(path, fps, h, w, VideoEncoding(codec="h264"))
    wr.write(np.stack([np.full((h, w, 3), 4 * k, np.uint8) for k in range(n)]))
    wr.close()


def test_folder_of_clips_becomes_action_free_dataset(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    _clip(clips / "open_the_drawer.mp4", 30)  # 1 s at 30 fps
    _clip(clips / "b.mp4", 45)
    (clips / "notes.txt").write_text("ignored")
    out = import_videos(clips, tmp_path / "ds", fps=10, progress=False)
    ds = RobotDataset(out)
    assert not ds.has_action and ds.num_episodes == 2
    assert [e.length for e in ds.episodes] == [15, 10]  # sorted by name: b.mp4 first
    assert ds.tasks == ["b", "open the drawer"]
    # Output frame k at 10 fps is source frame 3k at 30 fps.
    got = ds.frames(1, "main", np.arange(10))[:, 0, 0, 0].astype(int)
    np.testing.assert_allclose(got, 4 * 3 * np.arange(10), atol=3)
    assert validate(out, progress=False) == []


def test_instructions_file_and_resize(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    _clip(clips / "x.mp4", 12, h=50, w=70)
    (clips / "i.jsonl").write_text(json.dumps({"file": "x.mp4", "instruction": "fold the towel"}) + "\n")
    ds = RobotDataset(
        import_videos(
            clips,
            tmp_path / "ds",
            fps=30,
            instructions=clips / "i.jsonl",
            size=(32, 32),
            camera="ego",
            progress=False,
        )
    )
    assert ds.tasks == ["fold the towel"] and ds.cameras == ["observation.images.ego"]
    assert ds.image_shape("ego") == (32, 32) and ds.episodes[0].length == 12


def test_missing_instruction_and_empty_folder_are_clear_errors(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    with pytest.raises(DatasetError, match="no video files"):
        import_videos(clips, tmp_path / "ds", fps=10, progress=False)
    _clip(clips / "a.mp4", 5)
    _clip(clips / "b.mp4", 5)
    (clips / "i.json").write_text(json.dumps({"a.mp4": "wave"}))
    with pytest.raises(DatasetError, match=r"no instruction for 1 clip\(s\): \['b.mp4'\]"):
        import_videos(clips, tmp_path / "ds", fps=10, instructions=clips / "i.json", progress=False)
    assert not (tmp_path / "ds").exists()
