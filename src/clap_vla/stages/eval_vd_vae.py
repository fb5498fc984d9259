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
  m (clap_vla/eval/vd_vae.py). This is what decides which object a pseudo-labelled video teaches
  the policy to reach for, whatever the exact codes (datasets with chunk-relative actions);
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

# heading_cosines and net_translation are re-exported for scripts written against this module
# (experiments/vd_vae_linear_probe.py); the metrics live in clap_vla/eval/vd_vae.py.
from clap_vla.eval.vd_vae import alignment_metrics, heading_cosines, net_translation  # noqa: F401


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
    from clap_vla.data.providers import feature_provider, robot_normalizers
    from clap_vla.data.transitions import load_transitions
    from clap_vla.errors import ConfigError
    from clap_vla.models.vd_vae import load_vd_vae
    from clap_vla.nn.frame_encoders import build_frame_encoder
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
