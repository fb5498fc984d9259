"""How much of the buttons reach survives action chunking and the Act-VAE? An oracle diagnostic.

The closed loop of `clap eval rollout` (execute `replan_every` rows of a chunk, observe, ask again)
is run with chunks that come from the scripted expert instead of a learned policy:

  expert          the expert itself, one row per observation (the data's own policy)
  chunks          the expert's next H rows, simulated from the true state, executed replan_every at a time
  act_vae         the same chunks through the Act-VAE (normalise -> encode -> tokens -> decode):
                  what a policy that predicted every token right would do

`chunks` and `act_vae` simulate the expert forward in a shadow copy of the scene: the same seed, the
executed rows replayed (the simulation is deterministic), the expert watching every replayed state
so its phase (reach, then press) follows the true trajectory. Success and failure modes as in
`clap eval rollout`; seeds from an evaluation block (validation block 1 by default).

    MUJOCO_GL=egl python experiments/buttons_reach_oracle.py outputs/exp_human_video_transfer/act_vae \
        --tasks red --episodes 20 --seed 1 --replan-every 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from clap_vla.data.action_space import ArmLayout
from clap_vla.data.normalize import ActionNormalizer, NormStats
from clap_vla.models.act_vae import load_act_vae
from clap_vla.sim import buttons
from clap_vla.sim.base import STATE
from clap_vla.sim.rollout import eval_seed, run_episode, wilson_interval


class ExpertChunks:
    """The expert's next `horizon` rows from the true state, optionally through the Act-VAE."""

    def __init__(self, env, seed: int, horizon: int, act_vae=None, norm: ActionNormalizer | None = None):
        self.env, self.seed, self.horizon = env, seed, horizon
        self.act_vae, self.norm = act_vae, norm
        self.shadow = buttons.make(env.task, size=16, max_steps=buttons.MAX_STEPS_LIMIT)
        self.shadow.max_steps = 10_000
        self.executed: list[np.ndarray] = []
        self.pending: list[np.ndarray] = []
        self.errors: list[np.ndarray] = []  # |decoded - true| per row (metres), first rows of each chunk

    def _expert_chunk(self) -> np.ndarray:
        shadow = self.shadow
        shadow.reset(self.seed)
        expert = shadow.expert()
        for row in self.executed:
            expert.infer(None)  # the expert watches the true trajectory (its phase follows it)
            shadow.step(row, render=False)
        rows = []
        for _ in range(self.horizon):
            row = expert.infer(None)[0]
            rows.append(row)
            shadow.step(row, render=False)
        return np.stack(rows)

    def infer(self, observation) -> np.ndarray:
        self.executed += self.pending
        chunk = self._expert_chunk()
        if self.act_vae is not None:
            layout = ArmLayout(tuple(self.norm.stats.arms))
            state = layout.to_unified(np.asarray(observation[STATE], np.float64))
            x = self.norm.normalize(layout.to_unified(chunk), state)
            mask = torch.from_numpy(layout.arm_mask)[None]
            codes = self.act_vae.encode(torch.from_numpy(x)[None], mask)
            decoded = self.act_vae.decode(codes)[0].numpy()
            out = layout.from_unified(self.norm.unnormalize(decoded, state)).astype(np.float32)
            self.errors.append(np.abs(out[:, :3] - chunk[:, :3]))
            chunk = out
        self.pending = list(chunk[: self.replan_every])
        return chunk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("act_vae", help="an Act-VAE artifact directory (its norm stats and horizon are used)")
    p.add_argument("--tasks", default="red")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=1, help="evaluation seed block (1 = the validation block)")
    p.add_argument("--replan-every", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--modes", default="expert,chunks,act_vae")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    act_vae, meta = load_act_vae(args.act_vae)
    norm = ActionNormalizer(NormStats.load(Path(args.act_vae) / meta["norm_stats"][0]["norm_stats"]))
    horizon = act_vae.cfg.horizon
    results = {}
    for mode in args.modes.split(","):
        for task in buttons.resolve_tasks(args.tasks):
            env = buttons.make(task, size=32, max_steps=args.max_steps)
            outcomes, errors = [], []
            for k in range(args.episodes):
                seed = eval_seed(args.seed, k)
                if mode == "expert":
                    policy = env.expert()
                else:
                    policy = ExpertChunks(env, seed, horizon, act_vae if mode == "act_vae" else None, norm)
                    policy.replan_every = args.replan_every
                out = run_episode(env, policy, seed, args.replan_every)
                outcomes.append({"seed": seed, "success": out.success, "steps": out.steps, **(out.info or {})})
                errors += getattr(policy, "errors", [])
            n_ok = sum(o["success"] for o in outcomes)
            fails = {m: sum(o["failure"] == m for o in outcomes) for m in ("wrong_target", "execution")}
            row = {"successes": n_ok, "episodes": len(outcomes), "wilson95": wilson_interval(n_ok, len(outcomes)),
                   "failures": fails, "outcomes": outcomes}  # fmt: skip
            if errors:
                e = np.stack(errors)  # (calls, H, 3)
                row["row_error_m"] = {
                    "first_replan_rows_mean_xyz": e[:, : args.replan_every].mean((0, 1)).round(4).tolist(),
                    "all_rows_mean_xyz": e.mean((0, 1)).round(4).tolist(),
                }
            results[f"{mode}/{task}"] = row
            print(f"{mode:8s} {task}: {n_ok}/{len(outcomes)} {fails} {row.get('row_error_m', '')}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
