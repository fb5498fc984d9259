"""Scripted-expert success rate and throughput on robosuite TwoArmLift (two Pandas, 14-D absolute
end-effector actions), over seeds 0..N-1, rendering the observation cameras as data generation does.

    python benchmarks/bench_bimanual.py --episodes 50 --out benchmarks/results/bimanual.json

An episode ends at the task's own success check or at the step budget. The JSON holds the success
rate with its 95% Wilson score interval, the mean steps, episodes per minute (wall clock, env
construction excluded) and the library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

from clap_vla.sim import robosuite_bimanual as rb
from clap_vla.sim.rollout import wilson_interval


def run_episode(env: rb.RobosuiteBimanualEnv, seed: int) -> tuple[bool, int]:
    obs = env.reset(seed)
    expert = env.expert()
    for step in range(1, env.max_steps + 1):
        res = env.step(expert.infer(obs)[0])
        obs = res.observation
        if res.success:
            return True, step
    return False, env.max_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bimanual.json"))
    ap.add_argument("--task", default="TwoArmLift", choices=rb.TASKS)
    ap.add_argument("--cameras", default=",".join(rb.DEFAULT_CAMERAS), help="comma-separated; 'none' renders nothing")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--first-seed", type=int, default=0)
    args = ap.parse_args()

    cameras = () if args.cameras.lower() == "none" else tuple(c for c in args.cameras.split(",") if c)
    t0 = time.perf_counter()
    env = rb.make(args.task, size=args.size, cameras=cameras)
    build_s = time.perf_counter() - t0

    results = []
    load_start = os.getloadavg()[0]  # this machine is shared: a high load slows the wall clock
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.episodes):
        t = time.perf_counter()
        ok, steps = run_episode(env, seed)
        results.append({"seed": seed, "success": ok, "steps": steps, "seconds": round(time.perf_counter() - t, 3)})
        print(
            f"seed {seed:3d}  {'ok  ' if ok else 'FAIL'}  {steps:3d} steps  {results[-1]['seconds']:.1f}s", flush=True
        )
    wall = time.perf_counter() - t0
    env.close()

    n = len(results)
    wins = sum(r["success"] for r in results)
    lo, hi = wilson_interval(wins, n)
    ok_steps = [r["steps"] for r in results if r["success"]]
    summary = {
        "task": args.task,
        "robot_type": rb.ROBOT_TYPE_NAME,
        "configuration": rb.CONFIGURATION,
        "controller": "OSC_POSE",
        "fps": rb.FPS,
        "max_steps": rb.MAX_STEPS,
        "cameras": list(cameras),
        "image_size": args.size,
        "episodes": n,
        "seeds": [args.first_seed, args.first_seed + n - 1],
        "successes": wins,
        "success_rate": wins / n if n else 0.0,
        "success_rate_wilson95": [round(lo, 4), round(hi, 4)],
        "mean_steps": sum(r["steps"] for r in results) / n if n else 0.0,
        "mean_steps_successful": sum(ok_steps) / len(ok_steps) if ok_steps else None,
        "episodes_per_minute": round(60 * n / wall, 2) if wall > 0 else None,
        "seconds_total": round(wall, 2),
        "env_build_seconds": round(build_s, 2),
        "failed_seeds": [r["seed"] for r in results if not r["success"]],
        "versions": {
            "robosuite": version("robosuite"),
            "mujoco": version("mujoco"),
            "numpy": version("numpy"),
            "python": platform.python_version(),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "loadavg_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        },
        "episodes_detail": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "episodes_detail"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
