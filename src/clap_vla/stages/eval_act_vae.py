"""`clap eval act-vae`: reconstruction quality of an Act-VAE artifact on a dataset's chunks.

Metrics (normalised space, valid steps of present arms): MSE per dimension and overall, PSNR as
the paper defines it (20 log10(R / sqrt(MSE)), R = 2; eq. 8's distortion term), the rate of eq. 8,
codebook usage and perplexity over the tokens of the evaluated chunks; plus reconstruction plots.
"""

from __future__ import annotations

from pathlib import Path

from clap_vla.configs.act_vae import ActVAEEvalConfig


def evaluate_artifact(cfg: ActVAEEvalConfig, progress: bool = True) -> dict:
    import torch

    from clap_vla.artifacts import norm_stats_for
    from clap_vla.data.chunks import ChunkTensors, iterate, load_chunks
    from clap_vla.eval.act_vae import reconstruction_metrics
    from clap_vla.models.act_vae import load_act_vae, rate
    from clap_vla.train.checkpoint import write_json

    model, meta = load_act_vae(cfg.act_vae)
    mcfg = model.cfg
    stats = norm_stats_for(cfg.act_vae, meta, cfg.data)
    seen = stats is not None
    holdout = int(meta["config"].get("holdout_every", 10))
    train, held, _ = load_chunks(
        [cfg.data], mcfg.horizon, holdout_every=holdout, stats=[stats] if seen else None, progress=progress
    )
    if cfg.split == "heldout":
        chunks = held
    elif cfg.split == "train":
        chunks = train
    else:
        chunks = ChunkTensors(*(torch.cat([getattr(train, f), getattr(held, f)]) for f in train.__dataclass_fields__))
    metrics = reconstruction_metrics(model, iterate(chunks, cfg.batch_size), torch.device("cpu"))
    result = {
        "act_vae": str(Path(cfg.act_vae).resolve()),
        "data": str(Path(cfg.data).resolve()),
        "split": cfg.split,
        "chunks": len(chunks),
        "dataset_seen_in_training": seen,
        "codes_per_arm": mcfg.codes_per_arm,
        "num_codes": mcfg.num_codes,
        "rate": rate(mcfg.codes_per_arm, mcfg.num_codes, mcfg.horizon, mcfg.action_dim, metrics["mse"]),
        **metrics,
    }
    out = cfg.out or Path(cfg.act_vae) / "eval" / Path(cfg.data).name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result)
    if cfg.plots:
        plot_reconstructions(model, chunks, cfg.plots, out / "reconstructions.png")
    result["out"] = str(out)
    return result


def plot_reconstructions(model, chunks, n: int, path: Path) -> None:
    """Original vs reconstructed chunks, one row per (chunk, arm), one column per dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from clap_vla.types import ACTION_DIM_NAMES, ARM_NAMES

    full = torch.nonzero(chunks.valid.all(1)).flatten()  # chunks that do not run past the episode end
    pool = full if len(full) else torch.arange(len(chunks))
    idx = pool[torch.linspace(0, len(pool) - 1, min(n, len(pool))).long()]
    b = chunks.batch(idx)
    with torch.no_grad():
        recon = model.decode(model.encode(b.actions, b.arm_mask))
    rows = [(i, a) for i in range(len(idx)) for a in range(2) if b.arm_mask[i, a]]
    fig, axes = plt.subplots(len(rows), 7, figsize=(14, 1.6 * len(rows)), squeeze=False, sharex=True)
    for r, (i, a) in enumerate(rows):
        valid = b.action_valid[i]
        for d in range(7):
            ax = axes[r, d]
            ax.plot(b.actions[i, valid, a, d].numpy(), color="black", lw=1.2, label="original")
            ax.plot(recon[i, valid, a, d].numpy(), color="tab:red", lw=1.0, ls="--", label="reconstruction")
            ax.set_ylim(-1.05, 1.05)
            if r == 0:
                ax.set_title(ACTION_DIM_NAMES[d], fontsize=9)
            if d == 0:
                ax.set_ylabel(f"chunk {int(idx[i])}\n{ARM_NAMES[a]}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(cfg: ActVAEEvalConfig) -> int:
    r = evaluate_artifact(cfg)
    per_dim = ", ".join(f"{k[4:]} {r[k]:.2g}" for k in r if k.startswith("mse_"))
    print(
        f"{r['chunks']} {r['split']} chunks: MSE {r['mse']:.4g} ({per_dim}); PSNR {r['psnr']:.2f} dB; "
        f"rate {r['rate']:.3f}; codebook usage {r['usage']:.0%}, perplexity {r['perplexity']:.1f}"
    )
    if not r["dataset_seen_in_training"]:
        print("note: the artifact did not train on this dataset; its chunks were normalised with stats fitted here")
    print(f"wrote {r['out']}/eval.json")
    return 0
