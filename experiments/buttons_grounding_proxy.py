"""Which target lets a small policy learn the buttons choice and carry it from human video to the robot?

A diagnostic of the human-video transfer testbed (issue 24). The full NTP policy trained for 6000
steps chooses the named button in its first chunk at chance on OOD colours, even with the videos'
TRUE actions (pilot 16), and even on the human-look scenes it was trained on. This script asks
whether the frozen features, the change of look, or the target the policy predicts is the limit, in
minutes instead of an hour: one first frame per scene, no text model, no closed loop.

Data, as in the testbed: robot-look first frames of `--robot-scenes` demonstration scenes with the
instructions red and green only (the in-distribution colours); human-look first frames (actor
visible, robot absent) of `--human-scenes` demonstration scenes with all four colours, a third of
each batch. Evaluation: `--eval-scenes` scenes of validation seed block 1, in both looks, every
colour (blue and yellow are OOD for the robot look: seen only in the human look).

Model: the policy's own visual input (frozen EfficientNet-lite0 stage-5 features, 8x8 patches merged
2x2 into 16 tokens, sin-cos 2-D positions) and its size (4 layers, width 256, 4 heads), with the
colour as one learned word token. Three targets, one model each:
- `xy`:     the named button's position (regression): grounding alone;
- `chunk`:  the scripted expert's first action chunk, normalised as the Act-VAE sees it (regression,
            16 query tokens of 2 rows each): a continuous action target, as CLAP-RF's;
- `tokens`: that chunk's Act-VAE codes (cross-entropy, Nq query tokens): CLAP-NTP's target;
- `rf`:     both from one trunk: the codes of every sample (robot and video, the videos' true codes)
            and the continuous chunk of the robot samples only, scored on the chunk: the route by which
            human video reaches CLAP-RF in the paper (videos shape the backbone through tokens, the
            continuous head learns from robot data; §III-E, Algorithm 4). Co-trained here, where the
            paper trains NTP first and then the head with KM.
Score: the predicted (or decoded) chunk's motion in the plane heads for the named button (cosine from
the hand, as `buttons_first_chunk_probe.py`); for `xy`, the nearest button is the named one. The
expert's own chunk passed through the Act-VAE sets the ceiling of the chunk scores.

    MUJOCO_GL=egl python experiments/buttons_grounding_proxy.py \\
        --act-vae outputs/exp_human_video_transfer/act_vae --out outputs/exp_grounding_proxy \\
        --steps 1000 --pos vit --json benchmarks/results/buttons_grounding_proxy.json

About 60 min on 2 cores: rendering 1 min, expert chunks 5 min, features 8 min (all three cached
in `--out`), then 7 to 12 min per target at 1000 steps. Results: docs/results.md, "Which target the
choice can be learned from: a proxy".
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

SPLITS = ("rob_tr", "hum_tr", "rob_ev", "hum_ev")
H_EXPERT = 32  # rows of the expert chunk (the Act-VAE horizon of the testbed)


def render_scenes(out: Path, robot_scenes: int, human_scenes: int, eval_scenes: int) -> dict[str, np.ndarray]:
    """First frames (N, h, w, 3), button positions (N, 4, 2) and hand positions (N, 2) per split."""
    path = out / "scenes.npz"
    if path.exists():
        cached = dict(np.load(path))
        want = {"rob_tr": robot_scenes, "hum_tr": human_scenes, "rob_ev": eval_scenes, "hum_ev": eval_scenes}
        got = {k: len(cached[f"{k}_im"]) for k in want}
        if got != want:  # the chunk and feature caches beside it follow these scenes
            raise SystemExit(f"{path}: cached scene counts {got} differ from the requested {want}; use another --out")
        return cached
    from clap_vla.sim import buttons as bt
    from clap_vla.sim import metaworld as mw
    from clap_vla.sim.generate import demo_seed
    from clap_vla.sim.rollout import eval_seed

    env = bt.make(next(iter(bt.COLOURS)), size=128)
    seeds = {
        "rob_tr": ([demo_seed(0, k, False) for k in range(robot_scenes)], False),
        "hum_tr": ([demo_seed(0, k, True) for k in range(human_scenes)], True),
        "rob_ev": ([eval_seed(1, k) for k in range(eval_scenes)], False),
        "hum_ev": ([eval_seed(1, k) for k in range(eval_scenes)], True),
    }
    res = {}
    for split, (ss, human) in seeds.items():
        ims, pos, hands = [], [], []
        for s in ss:
            obs = env.reset(s, appearance=bt.human_appearance(s) if human else mw.Appearance())
            ims.append(obs["images"]["front"])
            pos.append([env._env.cap_top(c)[:2] for c in bt.COLOURS])
            hands.append(np.asarray(env._env.tcp_center)[:2])
        res[f"{split}_im"], res[f"{split}_pos"] = np.stack(ims), np.asarray(pos, np.float32)
        res[f"{split}_hand"], res[f"{split}_seed"] = np.asarray(hands, np.float32), np.asarray(ss)
        print(f"rendered {split}: {len(ss)} scenes", flush=True)
    np.savez_compressed(path, **res)
    return res


def expert_chunks(out: Path, scenes: dict[str, np.ndarray], stats_path: Path) -> dict[str, np.ndarray]:
    """The expert's first chunk per (scene, colour), normalised like the Act-VAE's input: (N, 4, H, D)
    of the arm the robot has. The look does not change the expert, so rob_ev serves hum_ev too."""
    path = out / "chunks.npz"
    if path.exists():
        return dict(np.load(path))
    from clap_vla.data.action_space import ArmLayout
    from clap_vla.data.normalize import ActionNormalizer, NormStats
    from clap_vla.sim import buttons as bt
    from clap_vla.sim.base import STATE

    norm = ActionNormalizer(NormStats.load(stats_path))
    layout = ArmLayout(tuple(norm.stats.arms))
    arm = int(np.flatnonzero(layout.arm_mask)[0])
    envs = {c: bt.make(c, size=32) for c in bt.COLOURS}
    res = {}
    for split in ("rob_tr", "hum_tr", "rob_ev"):
        seeds = scenes[f"{split}_seed"]
        chunks = np.zeros((len(seeds), len(envs), H_EXPERT, 7), np.float32)
        for i, s in enumerate(seeds):
            for ci, env in enumerate(envs.values()):
                obs = env.reset(int(s))
                expert = bt.ButtonsExpert(env)
                state = layout.to_unified(np.asarray(obs[STATE], np.float64))
                rows = []
                for _ in range(H_EXPERT):
                    rows.append(expert.infer(obs)[0])
                    env.step(rows[-1], render=False)
                chunk = layout.to_unified(np.asarray(rows, np.float64))  # (H, A, D)
                chunks[i, ci] = norm.normalize(chunk, state)[:, arm]
        res[split] = chunks
        print(f"expert chunks {split}: {chunks.shape}", flush=True)
    res["arm"] = np.asarray(arm)
    np.savez_compressed(path, **res)
    return res


def features(out: Path, scenes: dict[str, np.ndarray], spec: str):
    """Frozen frame features, merged 2x2 as the policy's projector reads them: (N, P/4, 4C)."""
    import torch

    path = out / f"features_{spec.replace(':', '_').replace('/', '_')}.pt"
    if path.exists():
        return torch.load(path)
    from einops import rearrange

    from clap_vla.nn.frame_encoders import build_frame_encoder

    enc = build_frame_encoder(spec)
    res = {}
    for split in SPLITS:
        im = scenes[f"{split}_im"]
        f = torch.cat(
            [
                enc.encode(torch.from_numpy(im[i : i + 100]).permute(0, 3, 1, 2).contiguous())
                for i in range(0, len(im), 100)
            ]
        )  # (N, P, C)
        g = math.isqrt(f.shape[1])
        res[split] = rearrange(f, "n (h a w b) c -> n (h w) (a b c)", h=g // 2, a=2, w=g // 2, b=2)
        print(f"features {split}: {tuple(res[split].shape)}", flush=True)
    torch.save(res, path)
    return res


def build_model(visual_dim: int, grid: int, queries: int, out_dim: int, pos: str = "concat"):
    import torch
    from torch import nn

    from clap_vla.nn.vlm import grid_position_features

    class Proxy(nn.Module):
        """[colour word, 16 visual tokens, queries] -> bidirectional transformer -> per-query output.
        The visual tokens are projected as the policy's are: features + fixed grid position
        features -> Linear, GELU, Linear (nn/vlm.py)."""

        def __init__(self) -> None:
            super().__init__()
            width = 256
            if pos == "vit":  # ViT's: fixed 2-D sin-cos embeddings at the model width, added after the projector
                self.register_buffer("pos", vit_sincos_2d(grid, width))  # (P', width)
            else:  # the policy's grid features (nn/vlm.py)
                self.register_buffer("pos", grid_position_features(grid))  # (P', pos_dim)
            d_in = visual_dim + (self.pos.shape[1] if pos == "concat" else 0)
            if pos == "add":  # visual_pos=sincos2d_add: a linear map of them, added after the projector
                self.pos_embed = nn.Linear(self.pos.shape[1], width, bias=False)
            self.proj = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, width))
            self.word = nn.Embedding(4, width)
            self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
            layer = nn.TransformerEncoderLayer(width, 4, 768, 0.0, batch_first=True, norm_first=True)
            self.body = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
            self.head = nn.Linear(width, out_dim)

        def forward(self, feats: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
            B = feats.shape[0]
            if pos == "concat":
                visual = self.proj(torch.cat([feats, self.pos.expand(B, -1, -1)], -1))  # (B, P', width)
            elif pos == "add":
                visual = self.proj(feats) + self.pos_embed(self.pos)
            else:
                visual = self.proj(feats) + self.pos
            x = torch.cat([self.word(colour)[:, None], visual, self.queries.expand(B, -1, -1)], 1)
            return self.head(self.body(x)[:, -self.queries.shape[0] :])  # (B, queries, out_dim)

    return Proxy()


def vit_sincos_2d(side: int, width: int):
    """(side*side, width) ViT-style 2-D sin-cos embeddings: a quarter of the width each for sin and
    cos of the column and of the row, at frequencies 1 / 10000^(i / (width/4))."""
    import torch

    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(width // 4) / (width // 4))
    x, y = x.flatten()[:, None] * omega, y.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], 1)


def heads_for(move: np.ndarray, pos: np.ndarray, hand: np.ndarray) -> np.ndarray:
    """Index of the button each planar motion (B, 2) points at from the hand (cosine): (B,)."""
    to = pos - hand[:, None]  # (B, 4, 2)
    cos = np.einsum("bkd,bd->bk", to, move) / (
        np.linalg.norm(to, axis=-1) * np.linalg.norm(move, axis=-1)[:, None] + 1e-12
    )
    return cos.argmax(1)


def run_target(target: str, feats, scenes, chunks, act_vae, half, steps: int, human_share: float, seed: int, pos: str):
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arm = int(chunks["arm"])
    nq = act_vae.cfg.codes_per_arm if act_vae is not None else 0
    codes = {}
    if target in ("tokens", "rf"):
        from clap_vla.data.action_space import NUM_ARMS

        for split in ("rob_tr", "hum_tr", "rob_ev"):
            c = torch.from_numpy(chunks[split])  # (N, 4, H, D)
            N, K = c.shape[:2]
            full = torch.zeros(N * K, H_EXPERT, NUM_ARMS, c.shape[-1])
            full[:, :, arm] = c.reshape(N * K, H_EXPERT, -1)
            mask = torch.zeros(N * K, NUM_ARMS, dtype=torch.bool)
            mask[:, arm] = True
            codes[split] = act_vae.encode(full, mask)[:, arm].reshape(N, K, nq)
        codes["hum_ev"] = codes["rob_ev"]
    K = act_vae.cfg.num_codes
    queries, out_dim = {"xy": (1, 2), "chunk": (16, 2 * 7), "tokens": (nq, K), "rf": (nq + 16, K + 2 * 7)}[target]
    places = {s: torch.from_numpy(scenes[f"{s}_pos"]) for s in SPLITS}  # (N, 4, 2) button centres
    mu, sd = places["rob_tr"].reshape(-1, 2).mean(0), places["rob_tr"].reshape(-1, 2).std(0)
    grid = math.isqrt(feats["rob_tr"].shape[1])
    model = build_model(feats["rob_tr"].shape[2], grid, queries, out_dim, pos)
    opt = torch.optim.AdamW(model.parameters(), 3e-4, weight_decay=0.01)
    B = 64
    nh = round(B * human_share)
    rob_colours = (0, 1)  # red, green: bt.COLOURS order

    def target_of(split: str, i: np.ndarray, c: np.ndarray) -> torch.Tensor:
        if target == "xy":
            return (places[split][i, c] - mu) / sd
        if target == "chunk":
            return torch.from_numpy(chunks[split][i, c])
        if target == "rf":
            return torch.cat([codes[split][i, c].float(), torch.from_numpy(chunks[split][i, c]).reshape(len(i), -1)], 1)
        return codes[split][i, c]

    def decode_move(pred: torch.Tensor) -> np.ndarray:
        """Planar motion of the predicted chunk, in metres (B, 2)."""
        if target in ("chunk", "rf"):
            rows = pred.reshape(len(pred), H_EXPERT, 7)[:, :, :2].numpy()
        else:
            from clap_vla.data.action_space import NUM_ARMS

            full = torch.full((len(pred), NUM_ARMS, nq), -1, dtype=torch.long)
            full[:, arm] = pred
            rows = act_vae.decode(full)[:, :, arm, :2].numpy()
        return (rows[:, -1] - rows[:, 0]) * half

    def score(split: str, colours) -> tuple[int, int]:
        hits = total = 0
        with torch.no_grad():
            for c in colours:
                cc = torch.full((len(feats[split]),), c)
                out = model(feats[split], cc)
                if target == "xy":
                    p = out[:, 0] * sd + mu
                    chosen = (places[split] - p[:, None]).norm(dim=-1).argmin(1).numpy()
                else:
                    pred = {"tokens": out.argmax(-1), "chunk": out, "rf": out[:, nq:, K:]}[target]
                    chosen = heads_for(decode_move(pred), scenes[f"{split}_pos"], scenes[f"{split}_hand"])
                hits += int((chosen == c).sum())
                total += len(cc)
        return hits, total

    def report(step: int) -> dict:
        row = {
            "step": step,
            "robot_in": score("rob_ev", rob_colours),
            "robot_ood": score("rob_ev", (2, 3)),
            "human_in": score("hum_ev", rob_colours),
            "human_ood": score("hum_ev", (2, 3)),
            "train_robot": score("rob_tr", rob_colours),
        }
        print(
            f"{target:6s} step {step:5d}: "
            + "  ".join(f"{k} {v[0]}/{v[1]} ({v[0] / v[1]:.0%})" for k, v in row.items() if k != "step"),
            flush=True,
        )
        return row

    history = []
    for step in range(steps + 1):
        if step % 500 == 0 or step == steps:
            history.append(report(step))
        if step == steps:
            break
        i = rng.integers(0, len(feats["rob_tr"]), B - nh)
        c = rng.choice(rob_colours, B - nh)
        j = rng.integers(0, len(feats["hum_tr"]), nh)
        ch = rng.integers(0, 4, nh)
        x = torch.cat([feats["rob_tr"][i], feats["hum_tr"][j]])
        colour = torch.from_numpy(np.concatenate([c, ch]))
        y = torch.cat([target_of("rob_tr", i, c), target_of("hum_tr", j, ch)])
        out = model(x, colour)
        if target == "tokens":
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        elif target == "rf":
            # Tokens from every sample (robot and video), the continuous chunk from the robot's alone.
            ce = F.cross_entropy(out[:, :nq, :K].reshape(-1, K), y[:, :nq].long().reshape(-1))
            flow = F.mse_loss(out[: B - nh, nq:, K:].reshape(B - nh, -1), y[: B - nh, nq:])
            loss = ce + flow
        else:
            loss = F.mse_loss(out.reshape(y.shape), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--act-vae", type=Path, required=True, help="the testbed's Act-VAE artifact (tokens target)")
    p.add_argument(
        "--out", type=Path, default=Path("outputs/exp_grounding_proxy"), help="cache of frames, chunks, features"
    )
    p.add_argument("--targets", default="xy,chunk,tokens,rf")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--robot-scenes", type=int, default=600)
    p.add_argument("--human-scenes", type=int, default=100)
    p.add_argument("--eval-scenes", type=int, default=100)
    p.add_argument("--human-share", type=float, default=1 / 3, help="share of each batch from the human-look scenes")
    p.add_argument("--frame-encoder", default="efficientnet-lite0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pos",
        choices=("concat", "add", "vit"),
        default="concat",
        help="visual token positions: `concat` the policy's fixed grid features concatenated before the projector "
        "(visual_pos=sincos2d); `add` a linear map of them added after it (visual_pos=sincos2d_add); `vit` fixed "
        "ViT-style sin-cos embeddings at the model width added after it",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import torch

    from clap_vla.data.normalize import ActionNormalizer, NormStats
    from clap_vla.models.act_vae import load_act_vae
    from clap_vla.sim.rollout import wilson_interval

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    stats = sorted((args.act_vae / "norm_stats").glob("*/norm_stats.json"))
    if not stats:
        raise SystemExit(f"{args.act_vae}/norm_stats: no norm_stats.json; is this an Act-VAE artifact?")
    scenes = render_scenes(args.out, args.robot_scenes, args.human_scenes, args.eval_scenes)
    chunks = expert_chunks(args.out, scenes, stats[0])
    feats = features(args.out, scenes, args.frame_encoder)
    act_vae, _ = load_act_vae(args.act_vae, "cpu")
    half = ActionNormalizer(NormStats.load(stats[0])).half[int(chunks["arm"]), :2]

    # Ceiling: the expert's own first chunk, through the Act-VAE, scored as the predictions are.
    from clap_vla.data.action_space import NUM_ARMS

    arm = int(chunks["arm"])
    ev = torch.from_numpy(chunks["rob_ev"])  # (N, 4, H, D)
    N = ev.shape[0]
    full = torch.zeros(N * 4, H_EXPERT, NUM_ARMS, ev.shape[-1])
    full[:, :, arm] = ev.reshape(N * 4, H_EXPERT, -1)
    mask = torch.zeros(N * 4, NUM_ARMS, dtype=torch.bool)
    mask[:, arm] = True
    recon = act_vae.decode(act_vae.encode(full, mask))[:, :, arm, :2].numpy().reshape(N, 4, H_EXPERT, 2)
    raw = ev[..., :2].numpy()
    ceiling = {}
    for name, rows in (("expert_chunk", raw), ("through_act_vae", recon)):
        hits = sum(
            int(
                (
                    heads_for((rows[:, c, -1] - rows[:, c, 0]) * half, scenes["rob_ev_pos"], scenes["rob_ev_hand"]) == c
                ).sum()
            )
            for c in range(4)
        )
        ceiling[name] = [hits, N * 4]
        print(f"ceiling ({name}): {hits}/{N * 4}", flush=True)

    results = {}
    for target in args.targets.split(","):
        history = run_target(
            target, feats, scenes, chunks, act_vae, half, args.steps, args.human_share, args.seed, args.pos
        )
        final = history[-1]
        results[target] = {
            k: {"named": v[0], "probes": v[1], "wilson95": wilson_interval(*v)} for k, v in final.items() if k != "step"
        }
        results[target]["history"] = history
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "experiment": "buttons_grounding_proxy",
                    "seed_block": 1,
                    "act_vae": str(args.act_vae),
                    "codes_per_arm": act_vae.cfg.codes_per_arm,
                    "num_codes": act_vae.cfg.num_codes,
                    "steps": args.steps,
                    "robot_scenes": args.robot_scenes,
                    "human_scenes": args.human_scenes,
                    "eval_scenes": args.eval_scenes,
                    "human_share": args.human_share,
                    "pos": args.pos,
                    "ceiling": ceiling,
                    "targets": results,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
