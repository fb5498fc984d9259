"""The Act-VAE training run (paper §III-C1): action chunks of robot datasets -> an Act-VAE artifact.
`clap train act-vae` runs it once; `clap eval rate-distortion` once per (Nq, K) point."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from clap_vla.configs.act_vae import ActVAETrainConfig


def train_act_vae(cfg: ActVAETrainConfig) -> dict:
    """Train an Act-VAE on `cfg.data`'s action chunks and write its artifact to `cfg.out`; returns
    `fit`'s result (last step, train and held-out metrics)."""
    import torch

    from clap_vla.artifacts import save_norm_stats
    from clap_vla.data.chunks import ChunkSource, iterate, load_chunks
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.errors import ConfigError
    from clap_vla.eval.act_vae import reconstruction_metrics
    from clap_vla.models.act_vae import ActVAE
    from clap_vla.train.distributed import setup
    from clap_vla.train.loop import count_parameters, fit

    if not cfg.data:
        raise ConfigError("--data: name at least one robot dataset")
    info = setup(cfg.train.device, cfg.train.threads)
    train, held, stats = load_chunks(
        list(cfg.data), cfg.model.horizon, holdout_every=cfg.holdout_every, progress=info.is_main and cfg.train.progress
    )
    data_dim = int(train.actions.shape[-1])
    if cfg.model.action_dim != data_dim:  # refuse before the first step, not in it
        raise ConfigError(
            f"--model.action-dim {cfg.model.action_dim}: the data ({', '.join(map(str, cfg.data))}) holds {data_dim} "
            f"action values per arm [x, y, z, roll, pitch, yaw, gripper]; drop the flag or pass {data_dim}"
        )
    torch.manual_seed(cfg.train.seed)
    model = ActVAE(cfg.model)
    if info.is_main:
        print(
            f"act-vae: {count_parameters(model) / 1e6:.2f} M parameters; {len(train)} training chunks, "
            f"{len(held)} held-out chunks from {len(cfg.data)} dataset(s)"
        )

    def evaluate(m) -> dict[str, float]:
        return reconstruction_metrics(m, iterate(held, cfg.eval_batch_size), info.device)

    def prepare() -> dict:
        return {"norm_stats": save_norm_stats(cfg.out, cfg.data, stats)}

    meta = {
        "stage": "act-vae",
        "datasets": [{"path": str(Path(p).resolve()), "fingerprint": RobotDataset(p).fingerprint()} for p in cfg.data],
        "chunks": {"train": len(train), "heldout": len(held)},
    }
    stage_config = {"model": asdict(cfg.model), "data": [str(p) for p in cfg.data], "holdout_every": cfg.holdout_every}
    result = fit(
        model,
        ChunkSource(train, cfg.train.batch_size, cfg.train.seed),
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
            f"held-out: MSE {e['mse']:.3g}, PSNR {e['psnr']:.2f} dB, codebook usage {e['usage']:.0%}, "
            f"perplexity {e['perplexity']:.1f}; artifact {cfg.out}"
        )
    return result
