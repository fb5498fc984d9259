"""The CLAP-NTP training run (paper §III-D): robot episodes + labelled videos + a frozen Act-VAE ->
a CLAP-NTP artifact. `clap train ntp` runs it; `clap train post` runs it as stage 1 (NTP adaptation).

The artifact is self-contained for inference: config.json (with the backbone's architecture),
model.safetensors, tokenizer/ (with the action vocabulary), act_vae/ (a copy of the Act-VAE whose
decoder turns tokens into chunks), norm_stats/ (per robot dataset) and meta.json (parents by hash).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from clap_vla.configs.ntp import NTPTrainConfig


def train_ntp(cfg: NTPTrainConfig) -> dict:
    """Train CLAP-NTP (from scratch, or from `cfg.init`'s weights) and write its artifact to
    `cfg.out`; returns `fit`'s result (last step, train and held-out metrics)."""
    import torch

    from clap_vla.artifacts import ACT_VAE_DIR, TOKENIZER_DIR, copy_act_vae, save_norm_stats
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.ntp import NTPSource, TextTokens
    from clap_vla.data.providers import ntp_samples
    from clap_vla.errors import ConfigError
    from clap_vla.eval.ntp import token_metrics
    from clap_vla.models.act_vae import load_act_vae
    from clap_vla.models.ntp_policy import NTPModel
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.train import checkpoint as ck
    from clap_vla.train.distributed import barrier, setup
    from clap_vla.train.loop import count_parameters, fit, resolve_epochs

    if cfg.act_vae is None and cfg.init is not None:
        cfg = replace(cfg, act_vae=Path(cfg.init) / ACT_VAE_DIR)
    if cfg.act_vae is None:
        raise ConfigError("--act-vae: name the Act-VAE artifact whose codebook the action tokens index")
    if cfg.init is not None:
        init_av = ck.parent_entry(Path(cfg.init) / ACT_VAE_DIR)["sha256"]
        if ck.parent_entry(cfg.act_vae)["sha256"] != init_av:
            raise ConfigError(
                f"--act-vae {cfg.act_vae} is not the Act-VAE that {cfg.init} speaks (weights sha256 "
                f"{ck.parent_entry(cfg.act_vae)['sha256'][:12]} vs {init_av[:12]}); omit --act-vae to use its own"
            )
    if not cfg.robot_data:
        raise ConfigError("--robot-data: name at least one robot dataset")
    init_model = None
    if cfg.init is not None:  # its architecture, tokenizer and frame features win over --model/--features
        from clap_vla.configs.vd_vae import FeatureConfig
        from clap_vla.models.ntp_policy import load_ntp

        init_model, init_meta = load_ntp(cfg.init)
        cfg = replace(cfg, model=init_model.cfg, features=FeatureConfig(**init_meta["config"]["features"]))
    info = setup(cfg.train.device, cfg.train.threads)
    progress = info.is_main and cfg.train.progress
    act_vae, act_meta = load_act_vae(cfg.act_vae)
    pixels = cfg.model.vlm.name.startswith("qwen3-vl:")
    encoder = None if pixels else build_frame_encoder(cfg.features.frame_encoder, precision=cfg.features.precision)
    if info.enabled and not info.is_main:
        barrier()  # rank 0 builds the frame/feature caches first
    train, held, norms = ntp_samples(
        Path(cfg.act_vae), act_vae, act_meta, cfg.robot_data, cfg.video_tokens, cfg.features, encoder,
        cfg.holdout_every, progress,
    )  # fmt: skip
    if info.enabled and info.is_main:
        barrier()
    mcfg = replace(
        cfg.model,
        codes_per_arm=act_vae.cfg.codes_per_arm,
        num_codes=act_vae.cfg.num_codes,
        vlm=replace(cfg.model.vlm, num_action_tokens=act_vae.cfg.num_codes),
    )
    if encoder is not None:
        dims = {s.visual.dim for s in train}
        if len(dims) != 1:
            raise ConfigError(f"datasets give features of different widths {sorted(dims)}; use one frame encoder")
        mcfg = replace(mcfg, vlm=replace(mcfg.vlm, visual_dim=dims.pop()))
    torch.manual_seed(cfg.train.seed)
    tokenizer = None
    if init_model is not None:
        if mcfg != init_model.cfg:
            raise ConfigError(
                f"{cfg.init}: its model ({init_model.cfg.vlm.name}, K {init_model.cfg.num_codes}, Nq "
                f"{init_model.cfg.codes_per_arm}, visual dim {init_model.cfg.vlm.visual_dim}) does not fit this data "
                f"and Act-VAE (K {mcfg.num_codes}, Nq {mcfg.codes_per_arm}, visual dim {mcfg.vlm.visual_dim})"
            )
        model = init_model.train()
    elif mcfg.vlm.tokenizer == "corpus":
        from clap_vla.data.ntp import corpus_texts
        from clap_vla.nn.vlm import corpus_tokenizer

        tokenizer = corpus_tokenizer(corpus_texts(train), mcfg.vlm.corpus_vocab)
    if init_model is None:
        model = NTPModel(mcfg, tokenizer=tokenizer, seed=cfg.train.seed)
    text = TextTokens(model.tokenizer, model.act_offset)
    weights = list(cfg.weights) or [float(len(s)) for s in train]
    if len(weights) != len(train):
        raise ConfigError(f"--weights: {len(weights)} values for {len(train)} datasets (robot first, then videos)")
    if info.is_main:
        print(
            f"ntp: {count_parameters(model) / 1e6:.1f} M trainable parameters ({mcfg.vlm.name}, "
            f"{model.vlm.num_layers} layers, vocabulary {model.vlm.vocab_size}); "
            + ", ".join(f"{s.name} ({s.kind}) {len(s)} samples, weight {w / sum(weights):.2f}"
                        for s, w in zip(train, weights, strict=True))
        )  # fmt: skip
    robot_held = [s for s in held if s.kind == "robot" and len(s)]
    cfg = replace(cfg, train=resolve_epochs(cfg.train, sum(len(s) for s in train)))
    if info.is_main and cfg.train.epochs:
        print(f"ntp: {cfg.train.epochs:g} epochs = {cfg.train.steps} steps of {cfg.train.batch_size}")

    def evaluate(m) -> dict[str, float]:
        if not robot_held:
            return {}
        return token_metrics(m, robot_held[0], text, cfg.eval_samples, cfg.eval_generate, batch_size=64)

    def prepare() -> dict:
        index = save_norm_stats(cfg.out, cfg.robot_data, [n.stats for n in norms])
        for entry, p in zip(index, cfg.robot_data, strict=True):
            entry["robot_type"] = str(RobotDataset(p).info.get("robot_type") or "robot")
        model.tokenizer.save_pretrained(cfg.out / TOKENIZER_DIR)
        copy_act_vae(Path(cfg.act_vae), cfg.out)
        return {"norm_stats": index}

    meta = {
        "stage": "ntp",
        "parents": {
            "act_vae": ck.parent_entry(cfg.act_vae),
            **({"init": ck.parent_entry(cfg.init)} if cfg.init is not None else {}),
            **{f"video_tokens_{k}": {"path": str(Path(p).resolve())} for k, p in enumerate(cfg.video_tokens)},
        },
        "datasets": [
            {"path": str(Path(p).resolve()), "fingerprint": RobotDataset(p).fingerprint(), "kind": "robot"}
            for p in cfg.robot_data
        ],
        "samples": {f"{s.name} ({s.kind})": len(s) for s in train},
    }
    stage_config = {
        "model": asdict(mcfg),
        "hf_config": model.vlm.hf_config(),
        "act_vae_model": asdict(act_vae.cfg),
        "act_vae": str(Path(cfg.act_vae).resolve()),
        "init": str(Path(cfg.init).resolve()) if cfg.init is not None else None,
        "features": asdict(cfg.features),
        "camera": cfg.features.camera,
        "robot_data": [str(p) for p in cfg.robot_data],
        "video_tokens": [str(p) for p in cfg.video_tokens],
        "weights": weights,
        "holdout_every": cfg.holdout_every,
    }
    result = fit(
        model,
        NTPSource(train, weights, cfg.train.batch_size, text, cfg.train.seed),
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
        g = float(e.get("gen_action_acc", float("nan")))
        free = "" if g != g else f", {g:.1%} (free-running)"  # not measured (nan) when eval_generate is 0
        print(f"held-out robot samples: action-token accuracy {e['action_acc']:.1%} (teacher-forced){free}; "
              f"artifact {cfg.out}")  # fmt: skip
    return result
