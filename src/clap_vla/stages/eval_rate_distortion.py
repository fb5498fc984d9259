"""`clap eval rate-distortion`: one Act-VAE per (Nq, K) point; the paper's Table V / Fig. 5 study.

Each point is an ordinary `clap train act-vae` run (train/act_vae.py) in <out>/nq{Nq}_k{K}/
(resumable: a finished point is not retrained). The table reports held-out MSE and PSNR (normalised
data, R = 2) and the rate of eq. 8 with Na = H, Da = 7 (per arm), next to the paper's numbers where
the point is one of Table V's. The elbow is the point of the PSNR-vs-rate curve farthest from the
chord joining its ends (in axes scaled to [0, 1]), the usual "knee" construction.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from clap_vla.configs.act_vae import TABLE_V_RESULTS, RateDistortionConfig


def elbow(points: list[tuple[float, float]]) -> int:
    """Index (into `points`, (rate, psnr) pairs) of the knee of the curve sorted by rate."""
    import numpy as np

    order = np.argsort([p[0] for p in points])
    xy = np.array([points[i] for i in order], dtype=np.float64)
    if len(xy) < 3:
        return int(order[-1])
    span = xy.max(0) - xy.min(0)
    xy = (xy - xy.min(0)) / np.where(span > 0, span, 1)
    a, b = xy[0], xy[-1]
    d = b - a
    dist = np.abs(d[0] * (xy[:, 1] - a[1]) - d[1] * (xy[:, 0] - a[0])) / max(np.hypot(*d), 1e-12)
    return int(order[int(np.argmax(dist))])


def run(cfg: RateDistortionConfig) -> int:
    from clap_vla.models.act_vae import rate
    from clap_vla.train import checkpoint as ck
    from clap_vla.train.act_vae import train_act_vae

    rows = []
    for nq, k in cfg.grid:
        point_dir = cfg.out / f"nq{nq}_k{k}"
        model = replace(cfg.base.model, codes_per_arm=nq, num_codes=k)
        train_cfg = replace(cfg.base, data=cfg.data, out=point_dir, model=model, resume=True)
        print(f"== Nq {nq}, K {k} -> {point_dir}")
        train_act_vae(train_cfg)
        ev = ck.read_json(point_dir / ck.META)["eval"]
        paper = TABLE_V_RESULTS.get((nq, k))
        rows.append(
            {
                "Nq": nq,
                "K": k,
                "mse": ev["mse"],
                "psnr": ev["psnr"],
                "rate": rate(nq, k, model.horizon, model.action_dim, ev["mse"]),
                "usage": ev["usage"],
                "perplexity": ev["perplexity"],
                "paper": None if paper is None else {"mse": paper[0], "psnr": paper[1], "rate": paper[2]},
            }
        )
    knee = elbow([(r["rate"], r["psnr"]) for r in rows])
    for i, r in enumerate(rows):
        r["elbow"] = i == knee
    (cfg.out / "table.md").write_text(table_markdown(rows))
    plot(rows, cfg.out / "plot.png")
    # Last: table.json marks the sweep finished (`clap demo` and the experiment scripts test for it).
    ck.write_json(cfg.out / "table.json", {"data": [str(p) for p in cfg.data], "rows": rows})
    print(table_markdown(rows))
    print(f"wrote {cfg.out}/table.md, table.json, plot.png")
    return 0


def table_markdown(rows: list[dict]) -> str:
    lines = [
        "| Nq | K | MSE | PSNR (dB) | rate r | codebook usage | paper MSE | paper PSNR | paper r |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["rate"]):
        p = r["paper"] or {}
        mark = " **(elbow)**" if r["elbow"] else ""
        lines.append(
            f"| {r['Nq']} | {r['K']}{mark} | {r['mse']:.4f} | {r['psnr']:.2f} | {r['rate']:.3f} | {r['usage']:.0%} | "
            + " | ".join(f"{p[k]:.4g}" if k in p else "-" for k in ("mse", "psnr", "rate"))
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rs = sorted(rows, key=lambda r: r["rate"])
    ax.plot([r["rate"] for r in rs], [r["psnr"] for r in rs], "o-", label="clap-vla (held-out)")
    paper = [r for r in rs if r["paper"]]
    if paper:
        ax.plot(
            [r["paper"]["rate"] for r in paper],
            [r["paper"]["psnr"] for r in paper],
            "s",
            mfc="none",
            color="gray",
            label="paper Table V",
        )
    for r in rs:
        ax.annotate(
            f"{r['Nq']},{r['K']}", (r["rate"], r["psnr"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
        if r["elbow"]:
            ax.plot(r["rate"], r["psnr"], "r*", ms=14, label="elbow")
    ax.set_xlabel("rate r (eq. 8)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
