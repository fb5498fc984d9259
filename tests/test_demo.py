"""`clap demo` end to end on its tiny preset: every stage runs for real (MuJoCo data generation,
Act-VAE, rate-distortion, VD-VAE, labels, NTP, post-training, closed loop, latency), the report and
plots are written, and a second run redoes only what is missing."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from clap_vla.cli import main
from clap_vla.configs.demo import DemoConfig
from clap_vla.errors import ConfigError


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    from clap_vla.data.video import VideoReader

    monkeypatch.setenv("CLAP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--config", "tiny", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "skipping" not in first and "[demo 15/15]" in first and "[demo] report" in first

    report = json.loads((out / "report.json").read_text())
    assert report["task_set_a_robot_and_video"] == ["press-red-button"]
    assert report["task_set_b_video_only"] == ["press-blue-button"]
    assert math.isfinite(report["act_vae"]["psnr"]) and 0 < report["act_vae"]["usage"] <= 1
    assert [(p["Nq"], p["K"]) for p in report["rate_distortion"]] == [(2, 16), (4, 16)]
    assert set(report["vd_vae"]) == {"robot", "video"}
    for name in ("ntp", "ntp_robot_only", "rf"):
        s = report["success"][name]
        assert set(s["per_task"]) == {"press-red-button", "press-blue-button"} and set(s["sets"]) == {"A", "B"}
        assert s["sets"]["A"]["episodes"] == 1 and 0 <= s["sets"]["A"]["rate"] <= 1
        b = s["sets"]["B"]  # Table III's failure modes of the failed episodes
        assert sum(b["failures"].values()) == b["episodes"] - b["successes"]
    assert report["latency_ms"]["ntp_p50"] > 0 and report["latency_ms"]["ratio_ntp_over_rf_4"] > 0
    for png in report["plots"].values():
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    reader = VideoReader(report["video"])
    frames, _ = reader.read_all()
    reader.close()
    assert len(frames) >= 12 and frames.shape[1:] == (64, 64, 3)
    assert len(report["seconds_per_step"]) == 15

    # A second run skips every finished step. Redoing a step (its output deleted) makes every later
    # step stale: their outputs are moved aside (kept) and redone; earlier steps are skipped.
    shutil.rmtree(out / "ntp")
    assert main(["demo", "--config", "tiny", "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert second.count("already done, skipping") == 8 and "$ clap train ntp" in second
    assert second.count("its output moved to") == 6 and "$ clap eval latency" in second
    assert (out / "post.stale-1" / "meta.json").exists() and (out / "eval" / "latency.json.stale-1").exists()
    assert (out / "post" / "meta.json").exists() and (out / "eval" / "latency.json").exists()
    assert main(["demo", "--config", "tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already done, skipping") == 15

    # Other settings in the same directory would mix artifacts of two configs: refused, naming them.
    assert main(["demo", "--config", "tiny", "--out", str(out), "--ntp-steps", "9"]) == 2
    err = capsys.readouterr().err
    assert "other settings (ntp_steps: 8 -> 9)" in err and "another --out" in err
    (out / "demo_config.json").unlink()
    assert main(["demo", "--config", "tiny", "--out", str(out)]) == 2
    assert "no demo_config.json" in capsys.readouterr().err


def test_demo_config_rejects_overlapping_task_sets():
    with pytest.raises(ConfigError, match="both robot_tasks and video_only_tasks"):
        DemoConfig(robot_tasks="reach-v3,push-v3", video_only_tasks="push-v3")
    with pytest.raises(ConfigError, match="pairs"):
        DemoConfig(rd_grid=(4, 256, 8))
