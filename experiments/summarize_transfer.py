"""Table of the video-transfer experiment: pooled closed-loop success on task sets A and B per policy,
with 95% Wilson intervals (experiments/video_transfer.sh writes the rollout JSONs this reads)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clap_vla.sim.rollout import wilson_interval

ARMS = {
    "robot_only": "robot demos of A only",
    "video_con": "+ human videos of A and B (VD-VAE with SigLIP)",
    "video_nocon": "+ the same videos (VD-VAE without SigLIP)",
}


def pooled(results: dict, tasks: list[str]) -> dict:
    outcomes = [o["success"] for t in tasks for o in results["tasks"][t]["outcomes"]]
    k, n = sum(outcomes), len(outcomes)
    lo, hi = wilson_interval(k, n)
    return {"successes": k, "episodes": n, "rate": k / n if n else 0.0, "wilson95": [lo, hi]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--a", required=True, help="comma-separated task set A (robot demos)")
    ap.add_argument("--b", required=True, help="comma-separated task set B (video only)")
    args = ap.parse_args()
    sets = {"A": args.a.split(","), "B": args.b.split(",")}
    rows = {}
    for arm in ARMS:
        path = args.out / "eval" / f"{arm}.json"
        if path.exists():
            res = json.loads(path.read_text())
            rows[arm] = {
                "sets": {s: pooled(res, tasks) for s, tasks in sets.items()},
                "per_task": {t: res["tasks"][t]["success_rate"] for t in res["tasks"]},
            }
    lines = ["| policy | set A (robot demos) | set B (video only) |", "|---|---|---|"]
    for arm, r in rows.items():
        cells = [f"{v['rate']:.0%} [{v['wilson95'][0]:.0%}, {v['wilson95'][1]:.0%}] ({v['successes']}/{v['episodes']})"
                 for v in r["sets"].values()]  # fmt: skip
        lines.append(f"| {arm}: {ARMS[arm]} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / "summary.json").write_text(json.dumps({"sets": sets, "policies": rows}, indent=2) + "\n")
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
