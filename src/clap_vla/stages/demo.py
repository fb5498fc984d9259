"""`clap demo`: the main job on embedded defaults.

For now (foundation stage) it is the end-to-end data job: toy robot episodes -> LeRobot v3 dataset;
plain "human" mp4 clips -> action-free dataset via the import path users take; validation of both;
normalisation stats; the window loader with and without the decoded-frame cache; a report.
Later stages extend it with Act-VAE -> VD-VAE -> labels -> NTP -> RF training and closed-loop eval.
Every step writes its output atomically and is skipped when that output already exists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from clap_vla.configs.demo import DemoConfig


def _step(name: str, done: bool) -> bool:
    print(f"[demo] {name}: {'already done, skipping' if done else 'running'}", flush=True)
    return not done


def run(cfg: DemoConfig) -> int:
    import numpy as np
    import torch

    from clap_vla.configs.data import SynthConfig
    from clap_vla.data.atomic import atomic_directory, atomic_write_text
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.frame_cache import attach_frame_caches
    from clap_vla.data.import_videos import import_videos
    from clap_vla.data.inspect import format_summary, summarize, validate
    from clap_vla.data.normalize import ActionNormalizer, NormStats
    from clap_vla.data.synthetic import make_toy_episode
    from clap_vla.data.video import VideoEncoding, VideoFileWriter, VideoReader
    from clap_vla.data.windows import WindowConfig, WindowDataset, fit_norm_stats
    from clap_vla.stages.data_synth import write_toy_dataset
    from clap_vla.types import collate_windows

    t_start = time.time()
    out = Path(cfg.out)
    robot, clips, human, norm = out / "robot", out / "human_clips", out / "human", out / "norm"

    if _step(f"robot demonstrations -> {robot}", (robot / "meta/info.json").exists()):
        write_toy_dataset(
            SynthConfig(out=robot, episodes=cfg.robot_episodes, length=cfg.length, size=cfg.size, seed=cfg.seed)
        )

    if _step(f"human video clips (plain mp4 files) -> {clips}", (clips / "instructions.json").exists()):
        rng = np.random.default_rng(cfg.seed + 1)
        with atomic_directory(clips, overwrite=True) as tmp:
            instructions = {}
            for i in range(cfg.video_episodes):
                e = make_toy_episode(rng, length=cfg.length, size=cfg.size, style="human")
                w = VideoFileWriter(tmp / f"clip_{i:03d}.mp4", 30, cfg.size, cfg.size, VideoEncoding(codec="h264"))
                w.write(e.frames)
                w.close()
                instructions[f"clip_{i:03d}.mp4"] = e.task
            (tmp / "instructions.json").write_text(json.dumps(instructions, indent=2))

    if _step(f"import clips as an action-free dataset -> {human}", (human / "meta/info.json").exists()):
        import_videos(clips, human, fps=10, instructions=clips / "instructions.json")

    for path in (robot, human):
        problems = validate(path, progress=False)
        print(f"[demo] validate {path}: {'OK' if not problems else problems}")
        if problems:
            return 1
    ds = RobotDataset(robot)
    print(format_summary(summarize(ds)))

    if _step(f"normalisation stats -> {norm}", (norm / "norm_stats.json").exists()):
        fit_norm_stats(ds, WindowConfig(horizon=cfg.horizon)).save(norm)
    normalizer = ActionNormalizer(NormStats.load(norm))

    # Round trip: the first episode's frames as generated vs as decoded from the dataset.
    ref = make_toy_episode(np.random.default_rng(cfg.seed), length=cfg.length, size=cfg.size)
    got = ds.frames(0, "main", np.arange(cfg.length)).astype(np.float64)
    psnr = float(10 * np.log10(255.0**2 / np.mean((got - ref.frames) ** 2)))
    reader = VideoReader(clips / "clip_000.mp4")
    clip_frames = len(reader.read_all()[0])
    reader.close()

    def throughput(dataset: WindowDataset) -> float:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            num_workers=2,
            collate_fn=collate_windows,
            generator=torch.Generator().manual_seed(0),
        )
        t, n = time.time(), 0
        for i, batch in enumerate(loader):
            n += len(batch)
            if i == 9:
                break
        return n / (time.time() - t)

    cfg_w = WindowConfig(horizon=cfg.horizon)
    sps_video = throughput(WindowDataset(ds, cfg_w, normalizer))
    attach_frame_caches(ds, ds.cameras, cache_dir=out / "frame_cache")
    wd = WindowDataset(ds, cfg_w, normalizer)
    sps_cache = throughput(wd)
    batch = collate_windows([wd[i] for i in range(min(cfg.batch_size, len(wd)))])
    human_ds = RobotDataset(human)
    hb = collate_windows([WindowDataset(human_ds, cfg_w)[0]])

    report = {
        "robot_dataset": str(robot),
        "human_dataset": str(human),
        "robot_episodes": ds.num_episodes,
        "robot_frames": ds.num_frames,
        "human_episodes": human_ds.num_episodes,
        "human_clip_frames_at_30fps": clip_frames,
        "video_roundtrip_psnr_db": round(psnr, 2),
        "window_batch": {
            "actions": list(batch.actions.shape),
            "frames": list(next(iter(batch.frames.values())).shape),
            "actions_min": float(batch.actions.min()),
            "actions_max": float(batch.actions.max()),
            "valid_steps": int(batch.action_valid.sum()),
        },
        "human_window_has_action": bool(hb.has_action.any()),
        "loader_samples_per_s": {"video_decode": round(sps_video, 1), "frame_cache": round(sps_cache, 1)},
        "seconds": round(time.time() - t_start, 1),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    print("\n[demo] report")
    for k, v in report.items():
        print(f"  {k:28s} {v}")
    print(f"[demo] done in {report['seconds']} s; report at {out / 'report.json'}")
    return 0
