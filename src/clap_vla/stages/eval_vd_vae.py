"""`clap eval vd-vae`: how well a VD-VAE reads the Act-VAE's tokens off video.

On held-out robot transitions and on action-free "human" videos (scored against their
evaluation-only true actions, never seen in training):
- token accuracy: VD-VAE codes vs the Act-VAE codes of the true chunk, per code position;
- decoded PSNR: the Act-VAE decoder applied to the VD-VAE codes vs the true normalised chunk
  (valid steps of present arms, R = 2 as in eq. 8), next to the Act-VAE's own reconstruction
  (the ceiling: what perfect tokens would give) and a zero chunk (the floor: no information);
- heading: how well the decoded chunks' horizontal motion departs from the usual one the way the
  true chunks' does: the cosine between decoded and true net x, y translation (each chunk's last
  valid step relative to its start, un-normalised), both taken relative to the set's mean true
  translation (most chunks share a general direction, which a constant guess would get for free: it
  scores 0 here), over items whose true translation departs from that mean by at least `MIN_MOTION`
  m. This is what decides which object a pseudo-labelled video teaches the policy to reach for,
  whatever the exact codes (datasets with chunk-relative actions);
- retrieval top-1 / top-5: within groups of `retrieval_batch` items, the cosine similarity of the
  VD-VAE's continuous latents to every item's Act-VAE code vectors ranks the true one (an item whose
  true tokens equal the true one's also counts);
- a t-SNE of the action latents of robot and video transitions coloured by task and domain (Fig. 9).
With `--compare ART` a second VD-VAE (e.g. lambda_con = 0) is scored on the same transitions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clap_vla.configs.vd_vae import VDVAEEvalConfig

MIN_MOTION = 0.02
"""Metres: chunks whose true translation departs less from the mean have no heading to score."""


def net_translation(chunks, valid, normalizer) -> np.ndarray:
    """Normalised chunk-relative chunks (B, H, A, D) and validity (B, H) -> the un-normalised x, y
    of each chunk's last valid step relative to its start (B, A, 2), float64."""
    x = chunks.double().cpu().numpy()
    last = np.maximum(valid.cpu().numpy().astype(np.int64).cumsum(1).argmax(1), 0)  # (B,) last valid step
    end = x[np.arange(len(x)), last, :, :2]  # (B, A, 2)
    return end * normalizer.half[:, :2] + normalizer.center[:, :2]


def heading_cosines(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, 2) predicted and true translations -> cosines (M,) of the items whose true translation is
    at least MIN_MOTION long (a predicted zero translation scores 0)."""
    n_true = np.linalg.norm(true, axis=-1)
    keep = n_true >= MIN_MOTION
    n_pred = np.maximum(np.linalg.norm(pred[keep], axis=-1), 1e-12)
    return (pred[keep] * true[keep]).sum(-1) / (n_pred * n_true[keep])


def alignment_metrics(
    model, tset, limit: int | None, batch_size: int = 256, retrieval_batch: int = 64, normalizer=None
) -> dict:
    """Token accuracy, decoded PSNR, retrieval and code usage of `model` on `tset`; with the
    `normalizer` of its actions (chunk-relative), also the heading of the decoded chunks."""
    import torch

    from clap_vla.data.transitions import iterate
    from clap_vla.models.act_vae import psnr
    from clap_vla.train.loop import to_device

    act = model.act_vae
    hits = codes = 0
    sq = sq_act = sq_zero = 0.0
    n = 0
    z_all, v_all, k_all, ids_all, pred_all, true_all = [], [], [], [], [], []
    device = next(model.parameters()).device
    with torch.no_grad():
        for _, b in iterate(tset, batch_size, limit):
            b = to_device(b, device)
            ids, _, z = model.infer_codes(b.features, b.arm_mask)
            true_ids, true_vec = act.encode_vectors(b.actions, b.arm_mask)
            present = b.arm_mask  # (B, A)
            hits += int((ids == true_ids)[present].sum())
            codes += int(present.sum()) * ids.shape[-1]
            valid = b.action_valid[:, :, None] & present[:, None, :]  # (B, H, A)
            decoded = act.decode(ids)  # (B, H, A, D)
            sq += float(((decoded - b.actions) ** 2)[valid].double().sum())
            if normalizer is not None and normalizer.stats.relative:
                arm = present.cpu().numpy()
                pred_all.append(net_translation(decoded, b.action_valid, normalizer)[arm])
                true_all.append(net_translation(b.actions, b.action_valid, normalizer)[arm])
            sq_act += float(((act.decode(true_ids) - b.actions) ** 2)[valid].double().sum())
            sq_zero += float((b.actions**2)[valid].double().sum())
            n += int(valid.sum()) * b.actions.shape[-1]
            z_all.append(z[present].flatten(1))
            v_all.append(true_vec[present].flatten(1))
            k_all.append(true_ids[present])
            ids_all.append(ids[present])
    z, v, k = torch.cat(z_all).cpu(), torch.cat(v_all).cpu(), torch.cat(k_all).cpu()
    top1, top5 = retrieval(z, v, k, retrieval_batch)
    mse, mse_act = sq / max(n, 1), sq_act / max(n, 1)
    # Which codes are read: a VD-VAE that parks a domain in codes the true chunks never use
    # scores 0% tokens however its retrieval and PSNR look.
    read, truth = torch.cat(ids_all).cpu().reshape(-1), k.reshape(-1).unique()
    out = {
        "items": len(z),
        "token_acc": hits / max(codes, 1),
        "mse": mse,
        "psnr": float(psnr(mse)),
        "psnr_act_vae": float(psnr(mse_act)),
        # No-information baseline: predicting a zero chunk (no motion, gripper at mid-range).
        "psnr_zero": float(psnr(sq_zero / max(n, 1))),
        "top1": top1,
        "top5": top5,
        "codes_read": int(read.unique().numel()),  # distinct codes the VD-VAE emits
        "codes_true": int(truth.numel()),  # distinct codes of the true chunks
        # share of emitted codes that are among the true chunks' codes of this set
        "read_in_true": float(torch.isin(read, truth).float().mean()),
    }
    if pred_all:
        pred, true = np.concatenate(pred_all), np.concatenate(true_all)
        mean = true.mean(0)
        cos = heading_cosines(pred - mean, true - mean)
        out["heading_cos"] = float(cos.mean()) if len(cos) else float("nan")
        out["heading_within_45deg"] = float((cos >= np.cos(np.pi / 4)).mean()) if len(cos) else float("nan")
        out["heading_items"] = len(cos)
    return out


def retrieval(z, v, keys, group: int) -> tuple[float, float]:
    """Top-1/top-5 of the true item among `group` consecutive items by cosine similarity."""
    import torch
    import torch.nn.functional as F

    z, v = F.normalize(z.float(), dim=-1), F.normalize(v.float(), dim=-1)
    t1 = t5 = total = 0
    for a in range(0, len(z), group):
        zs, vs, ks = z[a : a + group], v[a : a + group], keys[a : a + group]
        if len(zs) < 2:
            continue
        ranked = (zs @ vs.T).argsort(dim=1, descending=True)  # (g, g)
        same = (ks[:, None, :] == ks[None, :, :]).all(-1)  # (g, g): equal true token sequences
        ok = torch.gather(same, 1, ranked)  # (g, g): is the j-th ranked item a correct one
        t1 += int(ok[:, 0].sum())
        t5 += int(ok[:, :5].any(1).sum())
        total += len(zs)
    return t1 / max(total, 1), t5 / max(total, 1)


def attach_true_actions(tset, root: Path, normalizer, horizon: int) -> None:
    """Fill an action-free set's actions from the dataset's evaluation-only true actions."""
    import torch

    from clap_vla.data.action_space import ArmLayout
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.errors import ConfigError
    from clap_vla.sim.generate import load_true_actions

    truth = load_true_actions(root)
    layout = None
    acts, vals = [], []
    ds = RobotDataset(root)
    lengths: dict[int, int] = {}
    for ep, t in zip(tset.episode, tset.t, strict=True):
        if int(ep) not in truth:
            raise ConfigError(f"{root}: the evaluation-only true actions have no episode {int(ep)}")
        d = truth[int(ep)]
        a, s = d["action"], d["state"]
        if int(ep) not in lengths:
            lengths[int(ep)] = n = ds.episodes[int(ep)].length
            if len(a) != n or len(s) != n:
                raise ConfigError(
                    f"{root}: episode {int(ep)} has {n} frames but {len(a)} true actions and {len(s)} states"
                )
        if layout is None:
            layout = ArmLayout.for_dim(a.shape[1], f"{root}: evaluation-only actions")
            if tuple(normalizer.stats.arms) != layout.arms:
                raise ConfigError(
                    f"{root}: true actions are for arms {layout.arms}, the normalisation for {normalizer.stats.arms}"
                )
        T = len(a)
        steps = np.arange(t, t + horizon)
        valid = steps < T
        chunk = layout.to_unified(a[np.minimum(steps, T - 1)])
        acts.append(normalizer.normalize(chunk, layout.to_unified(s[t])))
        vals.append(valid)
    tset.actions = torch.from_numpy(np.asarray(acts, dtype=np.float32))
    tset.valid = torch.from_numpy(np.asarray(vals))
    tset.arm_mask = torch.from_numpy(layout.arm_mask)


def evaluate(cfg: VDVAEEvalConfig, progress: bool = True) -> dict:
    from clap_vla.configs.vd_vae import FeatureConfig
    from clap_vla.data.transitions import load_transitions
    from clap_vla.errors import ConfigError
    from clap_vla.models.vd_vae import load_vd_vae
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.stages.train_vd_vae import feature_provider, robot_normalizers
    from clap_vla.train.checkpoint import write_json

    models = {"vd_vae": load_vd_vae(cfg.vd_vae)}
    model, meta = models["vd_vae"]
    config = meta["config"]
    if cfg.compare is not None:
        models["compare"] = other = load_vd_vae(cfg.compare)
        # Scored on the same transitions and features: only fair when both saw the same features,
        # held out the same episodes and speak for the same Act-VAE.
        oc, om = other[1]["config"], other[1]
        for what, a, b in (
            ("features", config["features"], oc["features"]),
            ("holdout_every", config.get("holdout_every"), oc.get("holdout_every")),
            ("Act-VAE", (meta.get("parents") or {}).get("act_vae"), (om.get("parents") or {}).get("act_vae")),
        ):
            if a != b:
                raise ConfigError(f"--compare {cfg.compare}: {what} differs from {cfg.vd_vae}'s ({b} vs {a})")
    fcfg = FeatureConfig(**config["features"])
    horizon = model.act_vae.cfg.horizon
    holdout = int(config.get("holdout_every", 10))
    robot = list(cfg.robot_data) or [Path(p) for p in config["robot_data"]]
    if not robot:
        raise ConfigError("--robot-data: name at least one robot dataset")
    encoder = build_frame_encoder(fcfg.frame_encoder, precision=fcfg.precision)
    norms = robot_normalizers(Path(cfg.vd_vae), meta, robot, horizon, progress)
    stats_src = Path(cfg.action_stats_from) if cfg.action_stats_from else robot[0]
    if stats_src in robot:
        video_norm = norms[robot.index(stats_src)]
    else:
        video_norm = robot_normalizers(Path(cfg.vd_vae), meta, [stats_src], horizon, progress)[0]
    # A dataset the VD-VAE trained on is read on its held-out episodes; one it never saw, on all of them.
    trained = {Path(p).resolve() for key in ("robot_data", "video_data") for p in config.get(key, [])}

    def evaluation_split(p, **kw):
        if Path(p).resolve() in trained:
            return load_transitions(p, horizon, holdout_every=holdout, progress=progress, **kw)[1], "held-out episodes"
        return load_transitions(p, horizon, holdout_every=None, progress=progress, **kw)[0], "all (not trained on)"

    sets = []
    for p, norm in zip(robot, norms, strict=True):
        held, split = evaluation_split(p, normalizer=norm)
        held.features = feature_provider(p, fcfg, encoder, progress, clean_only=True)
        sets.append(("robot", p, held, split, norm))
    for p in cfg.video_data:
        held, split = evaluation_split(p)
        attach_true_actions(held, Path(p), video_norm, horizon)
        held.features = feature_provider(p, fcfg, encoder, progress, clean_only=True)
        sets.append(("video", p, held, split, video_norm))
    results: dict = {"vd_vae": str(Path(cfg.vd_vae).resolve()), "datasets": []}
    for kind, p, s, split, norm in sets:
        row = {"kind": kind, "data": str(Path(p).resolve()), "episodes": split, "transitions": min(len(s), cfg.limit)}
        for name, (m, _) in models.items():
            row[name] = alignment_metrics(m, s, cfg.limit, cfg.batch_size, cfg.retrieval_batch, normalizer=norm)
        results["datasets"].append(row)
    out = Path(cfg.out) if cfg.out else Path(cfg.vd_vae) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.tsne_points:
        results["tsne"] = str(plot_tsne(model, sets, cfg.tsne_points, out / "latents_tsne.png"))
    write_json(out / "eval.json", results)
    results["out"] = str(out)
    return results


def tsne_legend(task: list[str], domain: list[str]) -> dict[tuple[str, str], str]:
    """One legend entry per task (the colour), on its first series: the robot one when the task has
    robot samples, else the video one, marked "(video only)" — tasks seen only in action-free
    video (e.g. the paper's video-only task set) must still be named."""
    kinds: dict[str, set[str]] = {}
    for t, d in zip(task, domain, strict=True):
        kinds.setdefault(t, set()).add(d)
    out = {}
    for t, ks in kinds.items():
        if "robot" in ks:
            out[(t, "robot")] = t[:30]
        else:
            out[(t, "video")] = f"{t[:30]} (video only)"
    return out


def plot_tsne(model, sets, points: int, path: Path) -> Path:
    """t-SNE of the action latents (present arms) of robot and video transitions (paper Fig. 9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.manifold import TSNE

    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.transitions import iterate

    feats, domain, task = [], [], []
    per = max(points // max(len(sets), 1), 10)
    for kind, p, s, *_ in sets:
        ds = RobotDataset(p)
        for pos, b in iterate(s, 256, per):
            dev = next(model.parameters()).device
            _, _, z = model.infer_codes(b.features.to(dev), b.arm_mask.to(dev))
            feats.append(z[b.arm_mask.to(dev)].flatten(1).cpu())
            reps = b.arm_mask.sum(1).tolist()
            for i, r in zip(pos, reps, strict=True):
                tname = ds.episodes[int(s.episode[i])].tasks[0] if ds.episodes[int(s.episode[i])].tasks else "?"
                domain.extend([kind] * r)
                task.extend([tname] * r)
    x = torch.cat(feats).numpy()
    emb = TSNE(n_components=2, init="pca", perplexity=min(30, max(5, len(x) // 10)), random_state=0).fit_transform(x)
    tasks = sorted(set(task))
    labels = tsne_legend(task, domain)
    cmap = plt.get_cmap("tab10" if len(tasks) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8, 7))
    for j, tname in enumerate(tasks):
        for kind, marker in (("robot", "o"), ("video", "^")):
            sel = np.array([(t == tname and d == kind) for t, d in zip(task, domain, strict=True)])
            if sel.any():
                ax.scatter(
                    emb[sel, 0],
                    emb[sel, 1],
                    s=8,
                    marker=marker,
                    color=cmap(j % cmap.N),
                    alpha=0.7,
                    label=labels.get((tname, kind)),
                )
    ax.set_title("VD-VAE action latents (t-SNE): o robot, ^ action-free video; colour = task")
    ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(cfg: VDVAEEvalConfig) -> int:
    r = evaluate(cfg)
    for row in r["datasets"]:
        for name in ("vd_vae", "compare"):
            if name in row:
                m = row[name]
                print(
                    f"{row['kind']:5s} {Path(row['data']).name} [{name}]: token accuracy {m['token_acc']:.1%}, "
                    f"decoded PSNR {m['psnr']:.2f} dB (Act-VAE ceiling {m['psnr_act_vae']:.2f}, zero chunk "
                    f"{m['psnr_zero']:.2f}), "
                    f"retrieval top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%}, {m['codes_read']} distinct codes read "
                    f"(the truth uses {m['codes_true']}) ({m['items']} items)"
                    + (
                        f", heading cosine {m['heading_cos']:.2f} ({m['heading_within_45deg']:.0%} within 45 deg, "
                        f"{m['heading_items']} items; a constant guess scores 0)"
                        if "heading_cos" in m
                        else ""
                    )
                )
    print(f"wrote {r['out']}/eval.json")
    return 0
