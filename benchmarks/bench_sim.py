"""Simulation throughput and baseline success on Meta-World MT10.

Measures, in one run on this machine:
  - demonstrations generated per minute (`clap data gen metaworld`, 128x128, 2 workers), robot
    and human domain;
  - the scripted expert's and a random policy's success through the rollout harness, with
    evaluation episodes per minute.

    python benchmarks/bench_sim.py --out benchmarks/results/sim.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import clap_vla.sim  # noqa: F401  (chooses the GL backend before mujoco is imported)
from clap_vla.configs.sim import GenConfig, RolloutConfig
from clap_vla.sim.generate import generate
from clap_vla.sim.rollout import evaluate, format_results


def bench_gen(tmp: Path, domain: str, episodes: int, workers: int, size: int) -> dict:
    cfg = GenConfig(
        env="metaworld", out=tmp / f"mt10_{domain}", tasks="mt10", episodes=episodes, workers=workers,
        size=size, domain=domain, progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    summary = generate(cfg)
    seconds = time.perf_counter() - start
    from clap_vla.data.dataset import RobotDataset

    ds = RobotDataset(cfg.out)
    n = ds.num_episodes
    out = {
        "domain": domain,
        "episodes": n,
        "frames": ds.num_frames,
        "seconds": seconds,
        "demos_per_minute": 60 * n / seconds,
        "frames_per_second": ds.num_frames / seconds,
        "expert_attempts": sum(summary["attempts"].values()),
        "dataset_mb": sum(f.stat().st_size for f in cfg.out.rglob("*") if f.is_file()) / 1e6,
    }
    shutil.rmtree(cfg.out)
    return out


def bench_policy(policy: str, episodes: int, workers: int, size: int) -> dict:
    res = evaluate(RolloutConfig(tasks="mt10", episodes=episodes, policy=policy, workers=workers, size=size))
    print(format_results(res))
    return {
        "policy": policy,
        "episodes_per_task": episodes,
        "mean_success_rate": res["mean_success_rate"],
        "pooled_wilson95": res["pooled_wilson95"],
        "episodes_per_minute": res["episodes_per_minute"],
        "env_steps_per_second": res["env_steps_per_second"],
        "per_task": {t: v["success_rate"] for t, v in res["tasks"].items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gen-episodes", type=int, default=5, help="demonstrations per MT10 task")
    p.add_argument("--expert-episodes", type=int, default=20, help="evaluation episodes per task, expert")
    p.add_argument("--random-episodes", type=int, default=5, help="evaluation episodes per task, random policy")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {k: version(k) for k in ("mujoco", "metaworld")},
        "gl": os.environ.get("MUJOCO_GL"),
        "size": args.size,
        "workers": args.workers,
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["gen"] = [
            bench_gen(Path(tmp), d, args.gen_episodes, args.workers, args.size) for d in ("robot", "human")
        ]
    for g in results["gen"]:
        print(f"gen {g['domain']}: {g['episodes']} demos in {g['seconds']:.0f} s = {g['demos_per_minute']:.1f}/min")
    results["expert"] = bench_policy("expert", args.expert_episodes, args.workers, args.size)
    results["random"] = bench_policy("random", args.random_episodes, args.workers, args.size)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
