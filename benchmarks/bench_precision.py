"""fp32 vs bf16 matrix products on this CPU, side by side (what `precision auto` decides on).

One thread, a (256 x 1024) @ (1024 x 256) product, the two dtypes alternating for `--rounds`
rounds of about a second each; medians. Also records whether PyTorch sees native bf16 units
(AVX512-BF16 or AMX), i.e. what `clap_vla.nn.precision.resolve("auto", "cpu")` returns.

    python benchmarks/bench_precision.py --out benchmarks/results/precision.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def ms_per_product(x: torch.Tensor, y: torch.Tensor, seconds: float) -> float:
    for _ in range(3):
        x @ y
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x @ y
        n += 1
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/precision.json"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from clap_vla.nn.precision import native_bf16, resolve

    torch.set_num_threads(1)
    a, b = torch.randn(256, 1024), torch.randn(1024, 256)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        times["fp32"].append(ms_per_product(a, b, 1.0))
        times["bf16"].append(ms_per_product(a.bfloat16(), b.bfloat16(), 1.0))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "matmul": "(256 x 1024) @ (1024 x 256), 1 thread",
        "ms_median": med,
        "bf16_slowdown": med["bf16"] / med["fp32"],
        "native_bf16": native_bf16("cpu"),
        "auto_resolves_to": resolve("auto", "cpu"),
        "all_rounds_ms": times,
        "machine": {"processor": platform.processor(), "platform": platform.platform(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("ms_median", "bf16_slowdown", "native_bf16", "auto_resolves_to")}))


if __name__ == "__main__":
    main()
