"""Does a policy choose the named button from the first frame? A probe of the buttons testbed.

For each scene of an evaluation seed block and each colour, the policy sees the scene's first frame
with "press the {colour} button" and predicts one chunk; the chunk heads for the button whose
direction from the hand is closest (cosine) to the chunk's motion in the plane. A policy that reads
the instruction and the image heads for the named button; one that does not picks at chance
(1 in 4). This isolates the choice from the closed loop: no step is executed.

It also measures how much the instruction moves the first action token at all: with the subtask text
teacher-forced ("reach the {colour} button"), the total-variation distance between the first
action token's distributions under two colours' prompts, averaged over scenes and over pairs of the
colours probed (0: the instruction does not matter; 1: disjoint choices), and how often the two
greedy first tokens are the same code.

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
    p.add_argument(
        "--domain",
        choices=("robot", "human"),
        default="robot",
        help="render the scenes as the robot sees them or in the human videos' look (diagnostic)",
    )
    p.add_argument(
        "--robot-type",
        default=None,
        help="robot category written in the prompt instead of the environment's (diagnostic: the human "
        "videos are prompted with their dataset's robot_type, 'human')",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    from clap_vla.models.ntp_policy import NTPPolicy
    from clap_vla.sim.base import ROBOT_TYPE

    policy = NTPPolicy(args.policy)
    colours = args.colours.split(",")
    envs = {c: bt.make(c, size=args.size) for c in colours}
    picks: dict[str, dict[str, int]] = {c: {} for c in colours}
    tvs, same = [], 0
    for k in range(args.scenes):
        seed = eval_seed(args.seed, k)
        dists = []
        for c in colours:
            look = bt.human_appearance(seed) if args.domain == "human" else mw.Appearance()
            obs = envs[c].reset(seed, appearance=look)
            if args.robot_type is not None:
                obs[ROBOT_TYPE] = args.robot_type
            chosen = heading(policy.infer(obs), envs[c]._env)
            picks[c][chosen] = picks[c].get(chosen, 0) + 1
            dists.append(first_token_distribution(policy, obs, c))
        for i in range(len(dists)):
            for j in range(i + 1, len(dists)):
                tvs.append(0.5 * float((dists[i] - dists[j]).abs().sum()))
                same += int(dists[i].argmax() == dists[j].argmax())
    rows = {}
    for c in colours:
        hits = picks[c].get(c, 0)
        ci = wilson_interval(hits, args.scenes)
        rows[c] = {"named": hits, "scenes": args.scenes, "wilson95": ci, "picks": picks[c]}
        print(f"{c:7s} first chunk heads for the named button in {hits}/{args.scenes} scenes; picks {picks[c]}")
    total = sum(r["named"] for r in rows.values())
    print(f"all: {total}/{args.scenes * len(colours)} (chance 1/{len(bt.COLOURS)})")
    sensitivity = {"mean_tv": float(np.mean(tvs)) if tvs else 0.0, "same_greedy_token": same, "pairs": len(tvs)}
    print(
        f"first action token, prompts of two colours: mean total variation {sensitivity['mean_tv']:.3f}, "
        f"same greedy token in {same}/{len(tvs)} (scene, colour pair)s"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "policy": args.policy,
            "seed_block": args.seed,
            "domain": args.domain,
            "robot_type": args.robot_type,
            "colours": rows,
            "first_token": sensitivity,
        }
        args.out.write_text(json.dumps(out, indent=1))


def first_token_distribution(policy, obs, colour: str):
    """Distribution of the first action token (over the action vocabulary) given the frame, the
    prompt naming `colour` and the teacher-forced subtask "reach the {colour} button"."""
    import torch

    from clap_vla.models.ntp_policy import target_text
    from clap_vla.sim.base import ROBOT_TYPE

    m = policy.model
    visual = policy._visual(obs)
    prompt = policy.text.prompt(str(obs.get(ROBOT_TYPE) or "robot"), f"press the {colour} button")
    ids = torch.tensor([prompt + policy.text.ids(target_text(f"reach the {colour} button"))], device=visual.device)
    mask = torch.ones(1, m.vlm.visual_tokens(visual) + ids.shape[1], dtype=torch.long, device=visual.device)
    with torch.no_grad():
        out = m.vlm(visual, ids, mask, prefix_len=torch.tensor([len(prompt)], device=visual.device))
        logits = m.vlm.logits(out.hidden[0, -1])[m.act_offset : m.act_offset + m.cfg.num_codes]
    return torch.softmax(logits, -1).cpu()


if __name__ == "__main__":
    main()
