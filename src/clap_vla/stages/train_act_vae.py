"""`clap train act-vae`: action chunks of robot datasets -> an Act-VAE artifact."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from clap_vla.configs.act_vae import ActVAETrainConfig

NORM_DIR = "norm_stats"


def save_norm_stats(out: Path, paths, stats) -> list[dict]:
    """One norm_stats.json per input dataset under out/norm_stats/<k>_<name>/; returns the index."""
    index = []
    for k, (p, st) in enumerate(zip(paths, stats, strict=True)):
        sub = Path(NORM_DIR) / f"{k}_{Path(p).name}"
        st.save(out / sub)
        index.append({"dataset": str(Path(p).resolve()), "norm_stats": str(sub / "norm_stats.json")})
    return index


def run(cfg: ActVAETrainConfig) -> int:
    import torch

    from clap_vla.data.chunks import ChunkSource, iterate, load_chunks
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.errors import ConfigError
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
    return 0


def reconstruction_metrics(model, batches, device) -> dict[str, float]:
    """MSE and PSNR over valid steps of present arms, per dimension too; codebook usage/perplexity."""
    import torch

    from clap_vla.models.act_vae import psnr
    from clap_vla.types import ACTION_DIM_NAMES

    model.eval()
    sq = torch.zeros(len(ACTION_DIM_NAMES), dtype=torch.float64)
    n = 0
    counts = torch.zeros(model.cfg.num_codes, dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            b = type(b)(**{k: getattr(b, k).to(device) for k in b.__dataclass_fields__})
            codes = model.encode(b.actions, b.arm_mask)
            recon = model.decode(codes)  # (B, H, A, D)
            valid = b.action_valid[:, :, None] & b.arm_mask[:, None, :]  # (B, H, A)
            err = ((recon - b.actions) ** 2)[valid]  # (M, D)
            sq += err.double().sum(0).cpu()
            n += err.shape[0]
            ids = codes[codes >= 0]
            counts += torch.bincount(ids.cpu(), minlength=model.cfg.num_codes).double()
    per_dim = sq / max(n, 1)
    mse = float(per_dim.mean())
    p = counts / counts.sum().clamp(min=1)
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    out = {"mse": mse, "psnr": float(psnr(mse)), "usage": float((counts > 0).double().mean()), "perplexity": perplexity}
    out.update({f"mse_{name}": float(v) for name, v in zip(ACTION_DIM_NAMES, per_dim, strict=True)})
    return out
