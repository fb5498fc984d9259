"""`clap train post`: a CLAP-NTP artifact -> (stage 1) an adapted NTP artifact -> (stage 2) a CLAP-RF
artifact (paper Algorithm 4). Each stage resumes on its own; a finished stage 1 is reused."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from clap_vla.configs.post import PostTrainConfig

STAGE1 = "stage1_ntp"


def adapt(cfg: PostTrainConfig) -> Path:
    """Stage 1: NTP adaptation from the given artifact (robot tokens + video pseudo tokens)."""
    from clap_vla.configs.ntp import NTPTrainConfig
    from clap_vla.train import checkpoint as ck
    from clap_vla.train.ntp import train_ntp

    out = cfg.out / STAGE1
    state = out / ck.CHECKPOINT / ck.STATE
    if state.exists() and adapted(cfg, out):
        print(f"stage 1: reusing the adapted NTP policy in {out}")
        return out
    ncfg = NTPTrainConfig(
        init=cfg.ntp, robot_data=cfg.robot_data, video_tokens=cfg.video_tokens, weights=cfg.weights, out=out,
        train=cfg.adapt, holdout_every=cfg.holdout_every, eval_samples=cfg.eval_samples, eval_generate=0,
        resume=cfg.resume or state.exists(),
    )  # fmt: skip
    train_ntp(ncfg)
    return out


def adapted(cfg: PostTrainConfig, out: Path) -> bool:
    """Whether stage 1 ran to its last step (not stopped early by --adapt.stop-at). With
    --adapt.epochs its last step is the one the run resolved and recorded in its config.json."""
    from clap_vla.train import checkpoint as ck

    steps = cfg.adapt.steps
    if cfg.adapt.epochs > 0:
        steps = ck.read_json(out / ck.CONFIG).get("train", {}).get("steps", steps)
    return ck.read_json(out / ck.CHECKPOINT / ck.STATE).get("step", 0) >= steps


def run(cfg: PostTrainConfig) -> int:
    import torch

    from clap_vla.artifacts import ACT_VAE_DIR, TOKENIZER_DIR, copy_act_vae, save_norm_stats
    from clap_vla.configs.vd_vae import FeatureConfig
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.ntp import NTPSource, TextTokens
    from clap_vla.data.providers import ntp_samples
    from clap_vla.errors import ConfigError
    from clap_vla.eval.clap_policy import rf_metrics
    from clap_vla.models.act_vae import load_act_vae
    from clap_vla.models.clap_policy import ClapModel, reference_copy
    from clap_vla.models.ntp_policy import load_ntp
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.train import checkpoint as ck
    from clap_vla.train.distributed import barrier, setup
    from clap_vla.train.loop import count_parameters, fit, resolve_epochs

    if cfg.ntp is None:
        raise ConfigError("--ntp: name the CLAP-NTP artifact to post-train")
    if not cfg.robot_data:
        raise ConfigError("--robot-data: name the target robot's datasets")
    dry = cfg.train.dry_run
    if dry and cfg.adapt_stage:
        # Nothing is written in a dry run, so stage 2 is built on the given NTP artifact instead of
        # stage 1's output; stage 1 gets its own dry run first.
        from dataclasses import replace

        adapt(replace(cfg, adapt=replace(cfg.adapt, dry_run=True)))
    parent = adapt(cfg) if cfg.adapt_stage and not dry else Path(cfg.ntp)
    if cfg.adapt_stage and not dry and not adapted(cfg, parent):
        print("stage 1 stopped before its last step; stage 2 starts once it is done (--resume)")
        return 0
    mcfg = cfg.resolved_model()
    policy, pmeta = load_ntp(parent)
    pconf = pmeta["config"]
    reference = reference_copy(policy) if mcfg.km_weight > 0 else None
    act_dir = parent / ACT_VAE_DIR
    act_vae, act_meta = load_act_vae(act_dir)
    features = FeatureConfig(**pconf["features"])
    pixels = bool(getattr(policy.vlm, "uses_pixels", False))
    encoder = None if pixels else build_frame_encoder(features.frame_encoder, features.precision)
    info = setup(cfg.train.device, cfg.train.threads)
    if info.enabled and not info.is_main:
        barrier()  # rank 0 builds the frame/feature caches first
    train, held, norms = ntp_samples(
        act_dir, act_vae, act_meta, cfg.robot_data, (), features, encoder, cfg.holdout_every,
        info.is_main and cfg.train.progress,
    )  # fmt: skip
    if info.enabled and info.is_main:
        barrier()
    train_cfg = resolve_epochs(cfg.train, sum(len(s) for s in train))
    torch.manual_seed(cfg.train.seed)
    model = ClapModel(mcfg, policy, act_vae.cfg.horizon, reference)
    text = TextTokens(policy.tokenizer, policy.act_offset)
    if info.is_main:
        print(
            f"post (stage 2): RF head {count_parameters(model.head) / 1e6:.2f} M reading VLM layers {model.layers} "
            f"({mcfg.rf.context}); KM alpha {mcfg.km_weight} ({mcfg.kl_direction}, {mcfg.km_tokens} tokens)"
            f"{', KI' if mcfg.ki else ''}; "
            + ", ".join(f"{s.name} {len(s)} samples" for s in train)
            + (f"; {train_cfg.epochs:g} epochs = {train_cfg.steps} steps" if train_cfg.epochs else "")
        )

    def evaluate(m) -> dict[str, float]:
        return rf_metrics(m, held[0], text, cfg.eval_samples)

    def prepare() -> dict:
        index = save_norm_stats(cfg.out, cfg.robot_data, [n.stats for n in norms])
        for entry, p in zip(index, cfg.robot_data, strict=True):
            entry["robot_type"] = str(RobotDataset(p).info.get("robot_type") or "robot")
        policy.tokenizer.save_pretrained(cfg.out / TOKENIZER_DIR)
        copy_act_vae(act_dir, cfg.out)
        return {"norm_stats": index}

    meta = {
        "stage": "post",
        "parents": {"ntp": ck.parent_entry(cfg.ntp), "reference": ck.parent_entry(parent)},
        "datasets": [
            {"path": str(Path(p).resolve()), "fingerprint": RobotDataset(p).fingerprint(), "kind": "robot"}
            for p in cfg.robot_data
        ],
        "samples": {s.name: len(s) for s in train},
    }
    clap = asdict(mcfg)
    clap["rf"]["layers"] = list(model.layers)  # the resolved layer list, so loading never re-derives it
    stage_config = {
        "clap": clap,
        "ntp_model": asdict(policy.cfg),
        "hf_config": policy.vlm.hf_config(),
        "horizon": act_vae.cfg.horizon,
        "features": pconf["features"],
        "camera": pconf.get("camera"),
        "ntp": str(Path(cfg.ntp).resolve()),
        "reference": str(parent.resolve()),
        "robot_data": [str(p) for p in cfg.robot_data],
        "holdout_every": cfg.holdout_every,
    }
    result = fit(
        model,
        NTPSource(train, [float(len(s)) for s in train], train_cfg.batch_size, text, train_cfg.seed),
        train_cfg,
        cfg.out,
        resume=cfg.resume,
        evaluate=evaluate,
        stage_config=stage_config,
        meta=meta,
        prepare=prepare,
    )
    if result["eval"]:
        e = result["eval"]
        print(
            f"held-out robot samples: sampled-chunk PSNR {e['chunk_psnr']:.2f} dB (MSE {e['chunk_mse']:.4f}), "
            f"action-token accuracy {e['action_acc']:.1%}; artifact {cfg.out}"
        )
    return 0


__all__ = ["adapt", "adapted", "run"]
