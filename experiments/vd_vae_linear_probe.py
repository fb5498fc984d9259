"""How much of an action chunk a linear reader gets from the VD-VAE's frozen frame features, on robot
and human-domain transitions (diagnostic for the VD-VAE's reading, issue 24 item 2).

A VD-VAE reads the chunk a[t:t+H] off the frozen features of o_t and o_t+H. This script asks what the
same features allow, without the VD-VAE's training: a ridge regression from [f(o_t), f(o_t+H) - f(o_t)]
(every patch, standardised) to the normalised chunk, solved in its dual form over a subsample of
transitions, the ridge strength chosen on held-out training episodes. Scored with `clap eval vd-vae`'s
decoded PSNR (valid steps, R = 2, eq. 8) and its zero-chunk floor, and with its heading (the net x-y
translation's direction relative to the set's mean; a constant guess scores 0) on every scored
transition and on those at an episode's first frame, where the target is chosen:

- robot -> robot:  fitted on the robot dataset's training episodes, scored on its held-out episodes;
- robot -> human:  the same reader on the human-domain evaluation set (the domain gap, linearly);
- human -> human:  fitted on the human-domain training videos WITH their evaluation-only true actions,
                   scored on the human-domain evaluation set. Diagnostic only: CLAP never has these
                   labels. It says whether the features carry the hand's motion at all.

    python experiments/vd_vae_linear_probe.py outputs/exp_human_video_transfer/vd_vae_siglip \\
        --robot-data outputs/exp_human_video_transfer/data/robot \\
        --human-data outputs/exp_human_video_transfer/data/human \\
        --human-eval outputs/exp_human_video_transfer/data/human_eval --out probe.json

The features and normalisation are the VD-VAE artifact's (its frame encoder, its Act-VAE's action
statistics; `--frame-encoder` reads other frozen features instead); feature caches are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def features(tset, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(X, Y, valid, episode, first) of up to `limit` transitions drawn without replacement: X (N, 2 P C)
    float32, Y (N, H D) normalised chunk of the first present arm, valid (N, H D) bool, episode (N,),
    first (N,) bool: the transition starts at its episode's first frame."""
    import torch

    n = len(tset)
    sel = np.sort(rng.choice(n, size=min(n, limit), replace=False)) if limit and limit < n else np.arange(n)
    arm = int(torch.nonzero(tset.arm_mask)[0, 0])
    xs = []
    for a in range(0, len(sel), 512):
        rows = tset.rows[sel[a : a + 512]]  # (b, 2)
        flat = rows.reshape(-1)
        f = tset.features.get(flat, np.zeros_like(flat)).float().reshape(len(rows), 2, -1)  # (b, 2, P C)
        xs.append(torch.cat([f[:, 0], f[:, 1] - f[:, 0]], 1).numpy())
    act = tset.actions[sel][:, :, arm]  # (N, H, D)
    valid = tset.valid[sel][:, :, None].expand_as(act)
    x, y, v = np.concatenate(xs), act.reshape(len(sel), -1).numpy(), valid.reshape(len(sel), -1).numpy()
    start = {int(e): int(tset.rows[tset.episode == e, 0].min()) for e in np.unique(tset.episode[sel])}
    first = np.array([tset.rows[i, 0] == start[int(tset.episode[i])] for i in sel], dtype=bool)
    return x, y, v, tset.episode[sel], first


def heading(pred: np.ndarray, y: np.ndarray, valid: np.ndarray, norm, arm: int) -> dict:
    """`clap eval vd-vae`'s heading (cosine of the net x-y translation relative to the mean true one)
    of predicted vs true normalised chunks (N, H D) of arm slot `arm` (the one `features` took)."""
    import torch

    from clap_vla.stages.eval_vd_vae import heading_cosines, net_translation
    from clap_vla.types import ARM_DIM

    def xy(chunks: np.ndarray) -> np.ndarray:
        c = torch.zeros(len(chunks), chunks.shape[1] // ARM_DIM, 2, ARM_DIM, dtype=torch.float64)
        c[:, :, arm] = torch.from_numpy(np.ascontiguousarray(chunks, dtype=np.float64)).view(len(chunks), -1, ARM_DIM)
        return net_translation(c, torch.from_numpy(valid[:, ::ARM_DIM]), norm)[:, arm]  # (N, 2)

    p, t = xy(pred), xy(y)
    cos = heading_cosines(p - t.mean(0), t - t.mean(0))
    return {
        "heading_cos": float(cos.mean()),
        "within_45deg": float((cos >= np.cos(np.pi / 4)).mean()),
        "items": len(cos),
    }


def psnr(pred: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float:
    """Decoded PSNR over the valid entries, with the Act-VAE's formula and range (eq. 8)."""
    from clap_vla.models.act_vae import psnr as act_psnr

    return float(act_psnr(float(((pred - y) ** 2)[valid].mean())))


class DualRidge:
    """Ridge regression in its dual form (N << features): W = X^T (X X^T + alpha I)^-1 Y, with the
    eigendecomposition of the Gram matrix shared by every alpha."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        self.x = (x - self.mu) / self.sd
        self.ymu = y.mean(0)
        k = self.x.astype(np.float64) @ self.x.T.astype(np.float64)
        self.evals, self.evecs = np.linalg.eigh(k)
        self.uy = self.evecs.T @ (y - self.ymu)
        self.alpha = 1.0

    def predict(self, x: np.ndarray, alpha: float | None = None) -> np.ndarray:
        a = self.alpha if alpha is None else alpha
        dual = self.evecs @ (self.uy / (self.evals + a)[:, None])  # (N, out)
        xs = ((x - self.mu) / self.sd).astype(np.float64)
        return xs @ (self.x.T.astype(np.float64) @ dual) + self.ymu


def fit(xtr, ytr, eptr, alphas) -> tuple[DualRidge, dict]:
    """Choose alpha on every 5th training episode, refit on all training transitions."""
    val = eptr % 5 == 4
    inner = DualRidge(xtr[~val], ytr[~val])
    scores = {}
    for a in alphas:
        pred = inner.predict(xtr[val], a)
        scores[a] = float(((pred - ytr[val]) ** 2).mean())
    best = min(scores, key=scores.get)
    model = DualRidge(xtr, ytr)
    model.alpha = best
    return model, {"alpha": best, "val_mse": scores}


def main() -> None:
    from clap_vla.configs.vd_vae import FeatureConfig
    from clap_vla.data.transitions import load_transitions
    from clap_vla.models.vd_vae import load_vd_vae
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.stages.eval_vd_vae import attach_true_actions
    from clap_vla.stages.train_vd_vae import feature_provider, robot_normalizers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vd_vae", type=Path, help="VD-VAE artifact (its features and action normalisation)")
    ap.add_argument("--robot-data", type=Path, required=True)
    ap.add_argument("--human-data", type=Path, required=True, help="human-domain videos with EVAL_ONLY true actions")
    ap.add_argument("--human-eval", type=Path, required=True, help="other human-domain scenes to score on")
    ap.add_argument("--fit", type=int, default=4000, help="transitions the ridge is fitted on (subsample)")
    ap.add_argument("--score", type=int, default=3000, help="transitions scored per set (subsample)")
    ap.add_argument(
        "--frame-encoder", default=None, help="read other frozen features (e.g. efficientnet-lite0:stages=3+5)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    model, meta = load_vd_vae(a.vd_vae)
    cfg = meta["config"]
    fcfg = FeatureConfig(**{**cfg["features"], **({"frame_encoder": a.frame_encoder} if a.frame_encoder else {})})
    horizon = model.act_vae.cfg.horizon
    encoder = build_frame_encoder(fcfg.frame_encoder, precision=fcfg.precision)
    norm = robot_normalizers(a.vd_vae, meta, [a.robot_data], horizon)[0]
    rng = np.random.default_rng(a.seed)

    r_train, r_held = load_transitions(a.robot_data, horizon, normalizer=norm, holdout_every=10)
    h_train = load_transitions(a.human_data, horizon, holdout_every=None)[0]
    h_eval = load_transitions(a.human_eval, horizon, holdout_every=None)[0]
    attach_true_actions(h_train, a.human_data, norm, horizon)
    attach_true_actions(h_eval, a.human_eval, norm, horizon)
    for s, p in ((r_train, a.robot_data), (r_held, a.robot_data), (h_train, a.human_data), (h_eval, a.human_eval)):
        s.features = feature_provider(p, fcfg, encoder, clean_only=True)

    alphas = [10.0**k for k in range(0, 7)]
    xr, yr, _, er, _ = features(r_train, a.fit, rng)
    xrh, yrh, vrh, _, frh = features(r_held, a.score, rng)
    xh, yh, _, eh, _ = features(h_train, a.fit, rng)
    xhe, yhe, vhe, _, fhe = features(h_eval, a.score, rng)
    robot, robot_sel = fit(xr, yr, er, alphas)
    human, human_sel = fit(xh, yh, eh, alphas)
    out = {
        "vd_vae": str(a.vd_vae),
        "frame_encoder": fcfg.frame_encoder,
        "horizon": horizon,
        "fit_transitions": {"robot": len(xr), "human": len(xh)},
        "scored_transitions": {"robot_held_out": len(xrh), "human_eval": len(xhe)},
        "alpha": {"robot": robot_sel["alpha"], "human": human_sel["alpha"]},
        "psnr_db": {
            "robot_to_robot": psnr(robot.predict(xrh), yrh, vrh),
            "robot_to_human": psnr(robot.predict(xhe), yhe, vhe),
            "human_to_human": psnr(human.predict(xhe), yhe, vhe),
            "robot_mean_chunk_on_robot": psnr(np.broadcast_to(yr.mean(0), yrh.shape), yrh, vrh),
            "robot_mean_chunk_on_human": psnr(np.broadcast_to(yr.mean(0), yhe.shape), yhe, vhe),
            "zero_chunk_robot": psnr(np.zeros_like(yrh), yrh, vrh),
            "zero_chunk_human": psnr(np.zeros_like(yhe), yhe, vhe),
        },
    }
    # Heading (clap eval vd-vae's, relative to the scored set's mean true translation), on every scored
    # transition and on those starting at an episode's first frame, where the choice of target is made.
    pairs = {
        "robot_to_robot": (robot.predict(xrh), yrh, vrh, frh),
        "robot_to_human": (robot.predict(xhe), yhe, vhe, fhe),
        "human_to_human": (human.predict(xhe), yhe, vhe, fhe),
    }
    arm = int(np.nonzero(r_train.arm_mask.numpy())[0][0])  # the first present arm, as features() reads
    out["heading"] = {
        name: {"all": heading(pred, y, v, norm, arm), "first_frame": heading(pred[f], y[f], v[f], norm, arm)}
        for name, (pred, y, v, f) in pairs.items()
    }
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
