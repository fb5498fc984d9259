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
    from clap_vla.data.providers import feature_provider
    from clap_vla.data.transitions import iterate, load_transitions
    from clap_vla.models.vd_vae import load_vd_vae
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.train.checkpoint import parent_entry

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_vd_vae(cfg.vd_vae, device)
    config = meta["config"]
    fcfg = FeatureConfig(**config["features"])
    encoder = build_frame_encoder(fcfg.frame_encoder, precision=fcfg.precision)
    H = model.act_vae.cfg.horizon
    # Every episode (no held-out split): labels are for the whole dataset, however small.
    allset, _ = load_transitions(
        cfg.data, H, video_arms=tuple(config["video_arms"]), holdout_every=None, progress=cfg.progress
    )
    keep = allset.t % cfg.stride == 0
    allset.rows, allset.episode, allset.t = allset.rows[keep], allset.episode[keep], allset.t[keep]
    allset.features = feature_provider(cfg.data, fcfg, encoder, cfg.progress, clean_only=True)
    codes, dist = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(allset), desc=f"label {Path(cfg.data).name}", unit="pair", disable=not cfg.progress)
    with torch.no_grad():
        for _, b in iterate(allset, cfg.batch_size):
            ids, d, _ = model.infer_codes(b.features.to(device), b.arm_mask.to(device))
            codes.append(ids.cpu().numpy())
            dist.append(d.cpu().numpy())
            bar.update(len(ids))
    bar.close()
    out_meta = {
        "kind": "pseudo",
        "labeller": parent_entry(cfg.vd_vae),
        # The Act-VAE frozen inside the VD-VAE as it was at training time (not whatever sits at that
        # path now): these tokens speak for that codebook.
        "act_vae": (meta.get("parents") or {}).get("act_vae", {"path": config.get("act_vae")}),
        "dataset": {"path": str(Path(cfg.data).resolve()), "fingerprint": RobotDataset(cfg.data).fingerprint()},
    }
    cols = {
        "episode": allset.episode,
        "frame": allset.t,
        "codes": np.concatenate(codes),
        "distance": np.concatenate(dist),
    }
    return cols, {**out_meta, "seconds": time.perf_counter() - t0, "act_cfg": model.act_vae.cfg}


def label_robot(cfg: LabelConfig) -> tuple[dict, dict]:
    import torch
    from tqdm import tqdm

    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.providers import robot_normalizers
    from clap_vla.data.windows import WindowConfig, WindowDataset
    from clap_vla.models.act_vae import load_act_vae
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
        ids, d = model.encode_with_distance(torch.stack([w.actions for w in ws]), torch.stack([w.arm_mask for w in ws]))
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
    return cols, {**out_meta, "seconds": time.perf_counter() - t0, "act_cfg": model.cfg}


def run(cfg: LabelConfig) -> int:
    from clap_vla.data.tokens import write_token_shard

    if cfg.out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} exists; pass --overwrite to replace it")
    cols, meta = label_video(cfg) if cfg.vd_vae is not None else label_robot(cfg)
    act_cfg = meta.pop("act_cfg")
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
