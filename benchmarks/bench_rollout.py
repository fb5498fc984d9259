"""Closed-loop evaluation speed of a trained policy with parallel workers: threads per worker.

Each rollout worker is its own torch process, and torch defaults to one intra-op thread per core.
With N workers that is N x cores threads on the machine. The harness now gives each worker
cores // N threads (`clap_vla.sim.workers`). This runs the same rollouts one after the other in one
invocation, first with every worker at all cores (OMP_NUM_THREADS = cores, the old behaviour), then
with the split, and reports episodes per minute (wall time, policy loading included) and the ratio.

    python benchmarks/bench_rollout.py --policy outputs/demo/ntp --out benchmarks/results/rollout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def run(policy: str, tasks: str, episodes: int, workers: int, max_steps: int, env: dict) -> dict:
    out = Path(f"/tmp/bench_rollout_{os.getpid()}.json")
    cmd = [sys.executable, "-m", "clap_vla", "eval", "rollout", "--policy", policy, "--tasks", tasks,
           "--episodes", str(episodes), "--workers", str(workers), "--max-steps", str(max_steps),
           "--out", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    res = json.loads(out.read_text())
    out.unlink()
    return {
        "seconds": seconds,
        "episodes": res["episodes"],
        "episodes_per_minute": 60 * res["episodes"] / seconds,
        "env_steps_per_second": res["env_steps_per_second"],
        "success": res["mean_success_rate"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="outputs/demo/ntp", help="a trained policy artifact")
    ap.add_argument("--tasks", default="door-open-v3,drawer-close-v3")
    ap.add_argument("--episodes", type=int, default=4, help="per task")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    rows = {}
    for name, env in (
        ("all_cores_per_worker", {**base, "OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores)}),
        ("cores_split_over_workers", base),
    ):
        rows[name] = run(args.policy, args.tasks, args.episodes, args.workers, args.max_steps, env)
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in rows[name].items()})
    speedup = (
        rows["cores_split_over_workers"]["episodes_per_minute"] / rows["all_cores_per_worker"]["episodes_per_minute"]
    )
    print(f"split / all cores per worker: {speedup:.2f}x episodes per minute")
    result = {
        "benchmark": "rollout_threads",
        "machine": {"cores": cores, "python": platform.python_version()},
        "policy": args.policy,
        "tasks": args.tasks,
        "episodes_per_task": args.episodes,
        "workers": args.workers,
        "max_steps": args.max_steps,
        **rows,
        "speedup": speedup,
    }
    if args.out:
        from clap_vla.data.atomic import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
