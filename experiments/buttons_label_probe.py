"""Do the pseudo-labels of the buttons testbed's human videos head for the named button?

What a pseudo-labelled human video can teach CLAP-NTP about an OOD colour is, first of all, which
button to go for. For each video of a token shard (`clap label --vd-vae ...`), this decodes the
pseudo tokens of its first frame (the chunk o_0 -> o_H) with the Act-VAE and asks which button that
chunk's motion in the table plane points at, seen from the hand (the same rule as
`buttons_first_chunk_probe.py`), per colour. The scene is rebuilt from the episode's seed; the
same rule applied to the video's true first chunk (from the evaluation-only file, which training
never reads) is printed beside it as the check that the rule and the scene are right. Chance: 1 in 4.

    MUJOCO_GL=egl python experiments/buttons_label_probe.py outputs/exp_human_video_transfer/tokens/human_siglip \\
        --data outputs/exp_human_video_transfer/data/human --act-vae outputs/exp_human_video_transfer/act_vae
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from clap_vla.sim import buttons as bt
from clap_vla.sim import metaworld as mw
from clap_vla.sim.rollout import wilson_interval


def main() -> None:
    import torch
    from buttons_first_chunk_probe import heading

    from clap_vla.data.normalize import ActionNormalizer, NormStats
    from clap_vla.data.tokens import read_token_shard
    from clap_vla.models.act_vae import load_act_vae
    from clap_vla.sim.generate import load_true_actions
    from clap_vla.types import ARM_NAMES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tokens", type=Path, help="token shard of the human videos (clap label --vd-vae)")
    p.add_argument("--data", type=Path, required=True, help="the labelled human-domain dataset")
    p.add_argument("--act-vae", type=Path, required=True, help="the Act-VAE the tokens speak for")
    p.add_argument("--robot-data", type=Path, default=None, help="robot dataset whose action normalisation the "
                   "Act-VAE uses (default: the first it trained on)")  # fmt: skip
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    cols, meta = read_token_shard(args.tokens)
    act, am = load_act_vae(args.act_vae)
    entries = am.get("norm_stats") or []
    entry = next(
        (e for e in entries if args.robot_data is None or Path(e["dataset"]) == args.robot_data.resolve()), None
    )
    if entry is None:
        raise SystemExit(f"{args.act_vae}: no normalisation stats for {args.robot_data}")
    norm = ActionNormalizer(NormStats.load(args.act_vae / entry["norm_stats"]))
    if not norm.stats.relative:
        raise SystemExit("the probe reads chunk-relative actions; this Act-VAE's are absolute")
    truth = load_true_actions(args.data)
    H, arm = act.cfg.horizon, ARM_NAMES.index("right")
    first = {}
    for i in np.nonzero((cols["frame_index"] == 0) & (cols["arm"] == "right"))[0]:
        first[int(cols["episode_index"][i])] = cols["codes"][i]
    envs: dict[str, object] = {}
    picks = {"label": {}, "truth": {}}
    for ep in sorted(first):
        t = truth[ep]
        colour = next(c for c in bt.COLOURS if c in t["task"])  # "press the blue button"
        if colour not in envs:
            envs[colour] = bt.make(colour, size=args.size)
        env = envs[colour]
        env.reset(int(t["seed"]), appearance=mw.Appearance())
        ids = torch.full((1, 2, act.cfg.codes_per_arm), -1, dtype=torch.long)
        ids[0, arm] = torch.as_tensor(first[ep], dtype=torch.long)
        rel = act.decode(ids)[0, :, arm, :2].double().numpy() * norm.half[arm, :2] + norm.center[arm, :2]  # (H, 2)
        true = t["action"][: min(H, len(t["action"])), :2]  # absolute targets of the right arm
        for kind, chunk in (("label", rel), ("truth", true)):
            chosen = heading(chunk, env._env)
            row = picks[kind].setdefault(colour, {"named": 0, "videos": 0, "picks": {}})
            row["videos"] += 1
            row["named"] += int(chosen == colour)
            row["picks"][chosen] = row["picks"].get(chosen, 0) + 1
    for kind in ("label", "truth"):
        for colour, row in picks[kind].items():
            row["wilson95"] = wilson_interval(row["named"], row["videos"])
            print(
                f"{kind:5s} {colour:7s}: the first chunk heads for the named button in {row['named']}/{row['videos']} "
                f"videos; picks {row['picks']}"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"tokens": str(args.tokens), "tokens_meta": meta, **picks}, indent=1))


if __name__ == "__main__":
    main()
