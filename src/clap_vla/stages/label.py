"""`clap label`: action-token shards for NTP training (data/tokens.py).

--vd-vae ART: pseudo tokens of an action-free video dataset, read off its frame pairs (o_t, o_t+H)
  by the VD-VAE (paper §III-C2: "the discrete pseudo action tokens inferred from human video").
--act-vae ART: the true tokens of a robot dataset's action chunks, with the Act-VAE's own
  normalisation of that dataset (fitted anew, with a note, if it never saw it).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from clap_vla.configs.vd_vae import LabelConfig


def label_video(cfg: LabelConfig) -> tuple[dict, dict]:
    import torch
    from tqdm import tqdm

    from clap_vla.configs.vd_vae import FeatureConfig
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.transitions import TransitionSet, iterate, load_transitions
    from clap_vla.models.vd_vae import load_vd_vae
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.stages.train_vd_vae import feature_provider
    from clap_vla.train.checkpoint import parent_entry

    model, meta = load_vd_vae(cfg.vd_vae)
    config = meta["config"]
    fcfg = FeatureConfig(**{**config["features"], "augment_views": 0})
    encoder = build_frame_encoder(fcfg.frame_encoder, precision=fcfg.precision)
    H = model.act_vae.cfg.horizon
    tr, he = load_transitions(cfg.data, H, video_arms=tuple(config["video_arms"]), progress=cfg.progress)
    # Every episode, train and held-out alike: labels are for the whole dataset.
    allset = TransitionSet(
        name=tr.name,
        rows=np.concatenate([tr.rows, he.rows]),
        episode=np.concatenate([tr.episode, he.episode]),
        t=np.concatenate([tr.t, he.t]),
        arm_mask=tr.arm_mask,
    )
    order = np.lexsort((allset.t, allset.episode))
    keep = order[allset.t[order] % cfg.stride == 0]
    allset.rows, allset.episode, allset.t = allset.rows[keep], allset.episode[keep], allset.t[keep]
    allset.features = feature_provider(cfg.data, fcfg, encoder, cfg.progress)
    codes, dist = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(allset), desc=f"label {Path(cfg.data).name}", unit="pair", disable=not cfg.progress)
    with torch.no_grad():
        for _, b in iterate(allset, cfg.batch_size):
            ids, d, _ = model.infer_codes(b.features, b.arm_mask)
            codes.append(ids.numpy())
            dist.append(d.numpy())
            bar.update(len(ids))
    bar.close()
    act_parent = config.get("act_vae")
    out_meta = {
        "kind": "pseudo",
        "labeller": parent_entry(cfg.vd_vae),
        "act_vae": parent_entry(act_parent) if act_parent and Path(act_parent).exists() else {"path": act_parent},
        "dataset": {"path": str(Path(cfg.data).resolve()), "fingerprint": RobotDataset(cfg.data).fingerprint()},
    }
    cols = {
        "episode": allset.episode,
        "frame": allset.t,
        "codes": np.concatenate(codes),
        "distance": np.concatenate(dist),
    }
    return cols, {**out_meta, "seconds": time.perf_counter() - t0}


def label_robot(cfg: LabelConfig) -> tuple[dict, dict]:
    import torch
    from tqdm import tqdm

    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.windows import WindowConfig, WindowDataset
    from clap_vla.models.act_vae import load_act_vae
    from clap_vla.stages.train_vd_vae import robot_normalizers
    from clap_vla.train.checkpoint import parent_entry

    model, meta = load_act_vae(cfg.act_vae)
    H = model.cfg.horizon
    norm = robot_normalizers(Path(cfg.act_vae), meta, [cfg.data], H, cfg.progress)[0]
    wd = WindowDataset(RobotDataset(cfg.data), WindowConfig(horizon=H, cameras=(), stride=cfg.stride), norm)
    t0 = time.perf_counter()
    codes, dist, eps, frames = [], [], [], []
    bar = tqdm(total=len(wd), desc=f"label {Path(cfg.data).name}", unit="chunk", disable=not cfg.progress)
    for a in range(0, len(wd), cfg.batch_size):
        ws = [wd[i] for i in range(a, min(a + cfg.batch_size, len(wd)))]
        actions = torch.stack([w.actions for w in ws])
        arm = torch.stack([w.arm_mask for w in ws])
        with torch.no_grad():
            x = actions.permute(0, 2, 1, 3)[arm]  # (N, H, D)
            z = model._encode_arms(x)
            q = model.quantizer(z)
            d = torch.full((len(ws), arm.shape[1], model.cfg.codes_per_arm), float("nan"))
            d[arm] = ((z.float() - q.quantized.float()) ** 2).sum(-1)
            ids = torch.full_like(d, -1, dtype=torch.long)
            ids[arm] = q.indices
        codes.append(ids.numpy())
        dist.append(d.numpy())
        eps.extend(w.episode_index for w in ws)
        frames.extend(w.frame_index for w in ws)
        bar.update(len(ws))
    bar.close()
    out_meta = {
        "kind": "true",
        "labeller": parent_entry(cfg.act_vae),
        "act_vae": parent_entry(cfg.act_vae),
        "dataset": {"path": str(Path(cfg.data).resolve()), "fingerprint": RobotDataset(cfg.data).fingerprint()},
    }
    cols = {
        "episode": np.asarray(eps),
        "frame": np.asarray(frames),
        "codes": np.concatenate(codes),
        "distance": np.concatenate(dist),
    }
    return cols, {**out_meta, "seconds": time.perf_counter() - t0}


def run(cfg: LabelConfig) -> int:
    from clap_vla.data.tokens import write_token_shard
    from clap_vla.models.act_vae import load_act_vae

    if cfg.out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} exists; pass --overwrite to replace it")
    if cfg.vd_vae is not None:
        cols, meta = label_video(cfg)
        from clap_vla.models.vd_vae import load_vd_vae

        act_cfg = load_vd_vae(cfg.vd_vae)[0].act_vae.cfg
    else:
        cols, meta = label_robot(cfg)
        act_cfg = load_act_vae(cfg.act_vae)[0].cfg
    n = len(cols["episode"])
    meta.update(
        num_codes=act_cfg.num_codes,
        codes_per_arm=act_cfg.codes_per_arm,
        horizon=act_cfg.horizon,
        stride=cfg.stride,
        windows=n,
        windows_per_s=n / max(meta["seconds"], 1e-9),
    )
    write_token_shard(cfg.out, cols["episode"], cols["frame"], cols["codes"], cols["distance"], meta, cfg.overwrite)
    print(f"labelled {n} windows of {cfg.data} ({meta['windows_per_s']:.0f}/s, {meta['kind']} tokens) -> {cfg.out}")
    return 0
