"""How much of a buttons dataset can a policy fit without reading the instruction?

For every frame of a robot dataset made by `clap data gen buttons`, is the named button the one
nearest the hand (in the table plane)? Where it is, "go to the nearest button" imitates the expert
as well as reading the instruction does, so the share of such frames measures the shortcut a policy
can learn instead of binding the colour word to a place in the image (causal confusion). Reported
overall and by progress through the episode.

The scenes are re-created from their seeds: the generator draws seeds k = 0, 1, ... per task in
order, so episode e of task j is seed k = e - (episodes before task j) when the expert never failed
(`clap data gen` prints a rate when it did). Every episode's first recorded hand position (in the plane) is checked
against the re-created scene's, so a wrong mapping stops the script instead of skewing the count.

    MUJOCO_GL=egl python experiments/buttons_nearest_button.py outputs/exp_human_video_transfer/data/robot \
        --out outputs/exp_human_video_transfer/validation/nearest_button.json
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np

BINS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0))


def main() -> None:
    import pyarrow.parquet as pq

    from clap_vla.sim import buttons as bt
    from clap_vla.sim import metaworld as mw
    from clap_vla.sim.generate import demo_seed

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="a robot dataset written by `clap data gen buttons`")
    p.add_argument("--seed", type=int, default=0, help="the --seed the dataset was generated with")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    files = sorted(glob.glob(str(args.data / "data" / "**" / "*.parquet"), recursive=True))
    frames = pq.read_table(files, columns=["episode_index", "observation.state", "task_index"]).to_pandas()
    tasks = pq.read_table(args.data / "meta" / "tasks.parquet").to_pandas()
    names = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"], strict=True)}
    episode = frames["episode_index"].to_numpy()
    state = np.stack(frames["observation.state"].to_numpy())
    env = bt.make("red", size=32)
    seen: dict[int, int] = {}  # task index -> episodes so far
    per_episode = []
    for e in np.unique(episode):
        rows = np.nonzero(episode == e)[0]
        task = int(frames["task_index"].iloc[rows[0]])
        k = seen.get(task, 0)
        seen[task] = k + 1
        colour = next(c for c in bt.COLOURS if f" {c} " in f" {names[task]} ")
        env.reset(demo_seed(args.seed, k, False), appearance=mw.Appearance())
        start = np.asarray(env._env.tcp_center)
        if np.abs(start[:2] - state[rows[0], :2]).max() > 2e-3:  # the state's z is the hand's, not the tool centre's
            raise SystemExit(
                f"{args.data}: episode {e} starts at xy {state[rows[0], :2]}, seed {demo_seed(args.seed, k, False)} at "
                f"{start[:2]}: the seed mapping does not hold (did the expert fail a seed, or another --seed?)"
            )
        caps = np.stack([np.asarray(env._env.cap_top(c))[:2] for c in bt.COLOURS])  # (4, 2)
        dist = np.linalg.norm(state[rows, None, :2] - caps[None], axis=-1)  # (T, 4)
        per_episode.append(dist.argmin(1) == list(bt.COLOURS).index(colour))
    env.close()
    hit = np.concatenate(per_episode)
    progress = np.concatenate([np.arange(len(h)) / len(h) for h in per_episode])
    out = {
        "data": str(args.data),
        "frames": int(len(hit)),
        "episodes": len(per_episode),
        "nearest_is_named": float(hit.mean()),
        "first_frame": float(np.mean([h[0] for h in per_episode])),
        "by_progress": [
            {"from": lo, "to": hi, "frames": int(m.sum()), "nearest_is_named": float(hit[m].mean())}
            for lo, hi in BINS
            for m in [(progress >= lo) & ((progress < hi) | (hi == 1.0))]
        ],
    }
    print(f"{args.data}: the named button is the nearest to the hand in {out['nearest_is_named']:.1%} of "
          f"{out['frames']} frames ({out['first_frame']:.1%} of first frames; chance 1/{len(bt.COLOURS)})")  # fmt: skip
    for b in out["by_progress"]:
        print(f"  episode progress {b['from']:.2f}-{b['to']:.2f}: {b['nearest_is_named']:.1%} of {b['frames']} frames")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
