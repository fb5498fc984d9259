"""`clap train vd-vae`: robot transitions + action-free videos + a frozen Act-VAE -> a VD-VAE artifact."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from clap_vla.configs.vd_vae import VDVAETrainConfig

# Also re-exported for scripts written against this module (experiments/vd_vae_linear_probe.py).
from clap_vla.data.providers import feature_provider, robot_normalizers


def load_sets(cfg, act_vae_dir: Path, act_meta: dict, horizon: int, encoder, progress: bool):
    """(train sets, held-out sets, normalizers) for the robot datasets then the videos."""
    from clap_vla.data.transitions import load_transitions

    norms = robot_normalizers(act_vae_dir, act_meta, cfg.robot_data, horizon, progress)
    train, held = [], []
    for p, n in [(p, n) for p, n in zip(cfg.robot_data, norms, strict=True)] + [(p, None) for p in cfg.video_data]:
        tr, he = load_transitions(
            p, horizon, normalizer=n, video_arms=cfg.video_arms, holdout_every=cfg.holdout_every, progress=progress
        )
        tr.features = he.features = feature_provider(p, cfg.features, encoder, progress)
        train.append(tr)
        held.append(he)
    return train, held, norms


def run(cfg: VDVAETrainConfig) -> int:
    import torch

    from clap_vla.artifacts import save_norm_stats
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.transitions import TransitionSource
    from clap_vla.errors import ConfigError
    from clap_vla.eval.vd_vae import alignment_metrics
    from clap_vla.models.act_vae import load_act_vae
    from clap_vla.models.vd_vae import VDVAE
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.train import checkpoint as ck
    from clap_vla.train.distributed import barrier, setup
    from clap_vla.train.loop import count_parameters, fit

    if cfg.act_vae is None:
        raise ConfigError("--act-vae: name the Act-VAE artifact whose codebook the VD-VAE aligns to")
    if not cfg.robot_data:
        raise ConfigError("--robot-data: name at least one robot dataset (the contrastive anchors)")
    info = setup(cfg.train.device, cfg.train.threads)
    act_vae, act_meta = load_act_vae(cfg.act_vae)
    encoder = build_frame_encoder(cfg.features.frame_encoder, precision=cfg.features.precision)
    # Rank 0 builds the feature caches; the other ranks wait, then open them.
    if info.enabled and not info.is_main:
        barrier()
    train, held, norms = load_sets(
        cfg, Path(cfg.act_vae), act_meta, act_vae.cfg.horizon, encoder, info.is_main and cfg.train.progress
    )
    if info.enabled and info.is_main:
        barrier()
    P, C = train[0].features.num_patches, train[0].features.dim
    for s in train:
        if (s.features.num_patches, s.features.dim) != (P, C):
            raise ConfigError(
                f"{s.name}: features are {s.features.num_patches} patches x {s.features.dim}, "
                f"{train[0].name}'s are {P} x {C}; use one image size for all datasets"
            )
    mcfg = replace(
        cfg.model,
        feature_dim=C,
        num_patches=P,
        codes_per_arm=act_vae.cfg.codes_per_arm,
        code_dim=act_vae.cfg.code_dim,
    )
    weights = list(cfg.weights) or [float(len(s)) for s in train]
    torch.manual_seed(cfg.train.seed)
    model = VDVAE(mcfg, act_vae)
    if info.is_main:
        n_robot = sum(len(s) for s in train if s.has_action)
        print(
            f"vd-vae: {count_parameters(model) / 1e6:.2f} M trainable parameters; features {P} x {C} "
            f"({cfg.features.frame_encoder}); {n_robot} robot and {sum(len(s) for s in train) - n_robot} "
            f"video transitions; mixture "
            + ", ".join(f"{s.name} {w / sum(weights):.2f}" for s, w in zip(train, weights, strict=True))
        )
    robot_held = [s for s in held if s.has_action]

    def evaluate(m) -> dict[str, float]:
        return alignment_metrics(m, robot_held[0], cfg.eval_transitions, batch_size=256)

    def prepare() -> dict:
        return {"norm_stats": save_norm_stats(cfg.out, cfg.robot_data, [n.stats for n in norms])}

    meta = {
        "stage": "vd-vae",
        "parents": {"act_vae": ck.parent_entry(cfg.act_vae)},
        "datasets": [
            {"path": str(Path(p).resolve()), "fingerprint": RobotDataset(p).fingerprint(), "kind": kind}
            for kind, ps in (("robot", cfg.robot_data), ("video", cfg.video_data))
            for p in ps
        ],
        "transitions": {s.name: len(s) for s in train},
    }
    stage_config = {
        "model": asdict(mcfg),
        "act_vae_model": asdict(act_vae.cfg),
        "act_vae": str(Path(cfg.act_vae).resolve()),
        "features": asdict(cfg.features),
        "robot_data": [str(p) for p in cfg.robot_data],
        "video_data": [str(p) for p in cfg.video_data],
        "weights": weights,
        "video_arms": list(cfg.video_arms),
        "holdout_every": cfg.holdout_every,
    }
    result = fit(
        model,
        TransitionSource(train, weights, cfg.train.batch_size, cfg.train.seed),
        cfg.train,
        cfg.out,
        resume=cfg.resume,
        evaluate=evaluate,
        stage_config=stage_config,
        meta=meta,
        dist_info=info,
        prepare=prepare,
    )
    if info.is_main and result["eval"]:
        e = result["eval"]
        print(
            f"held-out robot transitions: token accuracy {e['token_acc']:.1%}, decoded PSNR {e['psnr']:.2f} dB, "
            f"retrieval top-1 {e['top1']:.1%} / top-5 {e['top5']:.1%}; artifact {cfg.out}"
        )
    return 0
