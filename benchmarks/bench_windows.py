"""Random-access window loading throughput (samples/s) with 2 DataLoader workers, with and without
the decoded-frame cache, on a 50-episode 128x128 LeRobot v3 dataset (AV1, as LeRobot writes it).

    python benchmarks/bench_windows.py --out benchmarks/results/windows.json

Both loaders are measured alternately in one run (this machine is noisy); the JSON holds every
repeat and the medians, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clap_vla.configs.data import SynthConfig
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.frame_cache import attach_frame_caches
from clap_vla.data.normalize import ActionNormalizer
from clap_vla.data.windows import WindowConfig, WindowDataset, fit_norm_stats
from clap_vla.stages.data_synth import write_toy_dataset
from clap_vla.types import collate_windows


def measure(wd: WindowDataset, batches: int, batch_size: int, workers: int, seed: int) -> float:
    loader = torch.utils.data.DataLoader(
        wd,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_windows,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    it = iter(loader)
    next(it)  # worker start-up and first batch are not throughput
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/windows.json"))
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = write_toy_dataset(
            SynthConfig(out=Path(tmp) / "ds", episodes=args.episodes, length=args.length, size=128),
            progress=False,
        )
        cfg = WindowConfig(horizon=32)
        norm = ActionNormalizer(fit_norm_stats(RobotDataset(root), cfg))
        plain = WindowDataset(RobotDataset(root), cfg, norm)
        cached_ds = RobotDataset(root)
        t = time.perf_counter()
        attach_frame_caches(cached_ds, cached_ds.cameras, cache_dir=Path(tmp) / "cache", progress=False)
        cache_build_s = time.perf_counter() - t
        cached = WindowDataset(cached_ds, cfg, norm)
        runs: dict[str, list[float]] = {"video_decode": [], "frame_cache": []}
        for r in range(args.repeats):
            runs["video_decode"].append(measure(plain, args.batches, args.batch_size, args.workers, r))
            runs["frame_cache"].append(measure(cached, args.batches, args.batch_size, args.workers, r))
        cache_bytes = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*.u8"))

    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "benchmark": "window loading, random access",
        "dataset": {
            "episodes": args.episodes,
            "frames": args.episodes * args.length,
            "image": [128, 128],
            "codec": "av1 (libsvtav1, g=2, crf=30)",
            "cameras": 1,
        },
        "sample": "action chunk H=32 (normalised) + frame pair (o_t, o_t+H) + state + text",
        "loader": {
            "workers": args.workers,
            "batch_size": args.batch_size,
            "batches": args.batches,
            "repeats": args.repeats,
        },
        "samples_per_s": {k: round(v, 1) for k, v in med.items()},
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "cache_speedup": round(med["frame_cache"] / med["video_decode"], 2),
        "cache_build_s": round(cache_build_s, 2),
        "cache_mb": round(cache_bytes / 2**20, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
