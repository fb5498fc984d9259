"""Act-VAE speed on this machine: training throughput (chunks/s; a bimanual chunk counts once, its
two arms are encoded separately) and encode+decode latency for a batch of 64 chunks, for the
small and paper presets, fp32 vs bf16 autocast, measured side by side in one run.

    python benchmarks/bench_act_vae.py --out benchmarks/results/act_vae.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from clap_vla.models.act_vae import ACT_VAE_PRESETS, ActVAE
from clap_vla.train.loop import count_parameters
from clap_vla.train.optim import build_optimizer
from clap_vla.types import ChunkBatch


def batch(n: int, horizon: int, seed: int = 0) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    a = torch.tanh(torch.randn(n, horizon, 2, 7, generator=g).cumsum(1) * 0.1)
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[::2, 0] = False  # half single-arm, half bimanual
    return ChunkBatch(a * mask[:, None, :, None], torch.ones(n, horizon, dtype=torch.bool), mask)


def train_throughput(model: ActVAE, b: ChunkBatch, precision: str, steps: int) -> float:
    opt = build_optimizer(model, 1e-4, 0.01, (("codebook", 50.0),))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with ctx:
            loss, _ = model.compute_loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    return len(b) / statistics.median(times)


@torch.no_grad()
def latency_ms(model: ActVAE, b: ChunkBatch, precision: str, reps: int) -> float:
    model.eval()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for i in range(reps + 2):
        t = time.perf_counter()
        with ctx:
            model.decode(model.encode(b.actions, b.arm_mask))
        if i >= 2:
            times.append(time.perf_counter() - t)
    model.train()
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["act_vae_small", "act_vae_paper"])
    p.add_argument("--batch", type=int, default=256, help="training batch (chunks)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "train_batch": args.batch,
        "latency_batch": 64,
        "presets": {},
    }
    for name in args.presets:
        torch.manual_seed(0)
        cfg = ACT_VAE_PRESETS[name]
        model = ActVAE(cfg)
        tb, lb = batch(args.batch, cfg.horizon), batch(64, cfg.horizon, seed=1)
        row = {"parameters_m": count_parameters(model) / 1e6}
        for precision in ("fp32", "bf16"):  # alternate so drift hits both alike
            row[f"train_chunks_per_s_{precision}"] = train_throughput(model, tb, precision, args.steps)
            row[f"encode_decode_ms_{precision}"] = latency_ms(model, lb, precision, args.reps)
        row["bf16_speedup_train"] = row["train_chunks_per_s_bf16"] / row["train_chunks_per_s_fp32"]
        row["bf16_speedup_latency"] = row["encode_decode_ms_fp32"] / row["encode_decode_ms_bf16"]
        results["presets"][name] = row
        print(name, json.dumps(row, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
