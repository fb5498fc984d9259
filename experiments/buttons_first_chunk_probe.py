"""Does a policy choose the named button from the first frame? A probe of the buttons testbed.

For each scene of an evaluation seed block and each colour, the policy sees the scene's first frame
with "press the {colour} button" and predicts one chunk; the chunk heads for the button whose
direction from the hand is closest (cosine) to the chunk's motion in the plane. A policy that reads
the instruction and the image heads for the named button; one that does not picks at chance
(1 in 4). This isolates the choice from the closed loop: no step is executed.

    MUJOCO_GL=egl python experiments/buttons_first_chunk_probe.py outputs/exp_human_video_transfer/ntp/robot_only_s0 \
        --scenes 20 --seed 1 --out outputs/exp_human_video_transfer/validation/first_chunk.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from clap_vla.sim import buttons as bt
from clap_vla.sim import metaworld as mw
from clap_vla.sim.rollout import eval_seed, wilson_interval


def heading(chunk: np.ndarray, scene) -> str:
    """The colour of the button the chunk's motion in the plane points at, seen from the hand."""
    hand = np.asarray(scene.tcp_center)[:2]
    move = chunk[-1, :2] - chunk[0, :2]
    cosines = {}
    for colour in bt.COLOURS:
        to = scene.cap_top(colour)[:2] - hand
        cosines[colour] = float(move @ to / (np.linalg.norm(move) * np.linalg.norm(to) + 1e-12))
    return max(cosines, key=cosines.get)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="a trained NTP policy artifact directory")
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--seed", type=int, default=1, help="evaluation seed block (1 = the validation block)")
    p.add_argument("--colours", default=",".join(bt.COLOURS))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    from clap_vla.models.ntp_policy import NTPPolicy

    policy = NTPPolicy(args.policy)
    colours = args.colours.split(",")
    envs = {c: bt.make(c, size=args.size) for c in colours}
    picks: dict[str, dict[str, int]] = {c: {} for c in colours}
    for k in range(args.scenes):
        seed = eval_seed(args.seed, k)
        for c in colours:
            obs = envs[c].reset(seed, appearance=mw.Appearance())
            chosen = heading(policy.infer(obs), envs[c]._env)
            picks[c][chosen] = picks[c].get(chosen, 0) + 1
    rows = {}
    for c in colours:
        hits = picks[c].get(c, 0)
        ci = wilson_interval(hits, args.scenes)
        rows[c] = {"named": hits, "scenes": args.scenes, "wilson95": ci, "picks": picks[c]}
        print(f"{c:7s} first chunk heads for the named button in {hits}/{args.scenes} scenes; picks {picks[c]}")
    total = sum(r["named"] for r in rows.values())
    print(f"all: {total}/{args.scenes * len(colours)} (chance 1/{len(bt.COLOURS)})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"policy": args.policy, "seed_block": args.seed, "colours": rows}, indent=1))


if __name__ == "__main__":
    main()
