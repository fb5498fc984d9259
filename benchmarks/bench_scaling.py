"""Training throughput from one process to two on this machine (issue 9), through the real CLI.

Each case trains a stage for a fixed number of steps on a synthetic LeRobot dataset and reads the
samples/s the training loop logs (`metrics.jsonl`; the first log window, with warm-up, is
dropped; median of the rest). Cases per stage, all on the same global batch:

  1p x 1t   one process, one thread (one core)
  1p x 2t   one process, two threads (both cores: what a user gets without torchrun)
  2p x 1t   torchrun --nproc-per-node 2, one thread per rank (DDP on gloo; FSDP for NTP too)

NTP runs in fp32: bf16 autocast is only fast on CPUs with bf16 matrix units (AVX512-BF16 / AMX).

Reported ratios: 2p x 1t over 1p x 1t (data-parallel scaling efficiency; 2.0 is perfect) and over
1p x 2t (the gain on this 2-core machine). The cases of a stage run back to back in rounds, so
drift in the machine's load hits them alike.

Memory: `--train.dry-run` of CLAP-NTP on the pretrained SmolLM2-135M backbone (all 30 layers) under
DDP and FSDP on two ranks reports the bytes of parameters, gradients and AdamW state that rank 0
holds after one step (the model states that FSDP divides by the number of ranks).

    python benchmarks/bench_scaling.py --out benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = (("1p x 1t", 1, 1), ("1p x 2t", 1, 2), ("2p x 1t", 2, 1))


def clap(args: list[str], nproc: int, threads: int, env: dict[str, str]) -> None:
    launch = [sys.executable, "-m", "clap_vla"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                  "-m", "clap_vla"]  # fmt: skip
    res = subprocess.run([*launch, *args], env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                         text=True)  # fmt: skip
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{res.stderr[-3000:]}")


def clap_out(args: list[str], nproc: int, env: dict[str, str]) -> str:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
              "clap_vla"]  # fmt: skip
    res = subprocess.run([*launch, *args], env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def model_states(stdout: str) -> dict[str, float]:
    """Parse the dry run's 'model states per rank ...: T MB (parameters P, gradients G, optimiser O)'."""
    import re

    m = re.search(r"model states per rank .*?: ([\d.]+) MB \(parameters ([\d.]+), gradients ([\d.]+), "
                  r"optimiser ([\d.]+)\)", stdout)  # fmt: skip
    if m is None:
        raise SystemExit(f"no model-state line in the dry run's output:\n{stdout[-2000:]}")
    return dict(zip(("total_mb", "params_mb", "grads_mb", "optimizer_mb"), map(float, m.groups()), strict=True))


def samples_per_s(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if r["split"] == "train"][1:]
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    env = {**os.environ, "CLAP_CACHE_DIR": str(work / "cache")}
    data, av = work / "robot", work / "av"
    clap(["data", "synth", "--config", "default", "--out", str(data)], 1, 2, env)
    clap(["train", "act-vae", "--config", "act_vae_tiny", "--data", str(data), "--out", str(av), "--train.steps",
          "2", "--train.no-progress"], 1, 2, env)  # fmt: skip
    common = ["--train.steps", str(args.steps), "--train.log-every", "10", "--train.no-progress",
              "--train.checkpoint-every", str(args.steps), "--train.eval-every", str(10 * args.steps)]  # fmt: skip
    stages = {
        "act_vae_small (batch 64, fp32, DDP)": ["train", "act-vae", "--config", "act_vae_small", "--data", str(data),
                                                "--train.batch-size", "64"],
        "ntp_small (batch 32, fp32, DDP)": ["train", "ntp", "--config", "ntp_small", "--act-vae", str(av),
                                            "--robot-data", str(data), "--train.precision", "fp32"],
        "ntp_small (batch 32, fp32, FSDP)": ["train", "ntp", "--config", "ntp_small", "--act-vae", str(av),
                                             "--robot-data", str(data), "--train.precision", "fp32",
                                             "--train.strategy", "fsdp"],
    }  # fmt: skip
    # Build the frame-feature cache once, outside the measurements.
    clap([*stages["ntp_small (batch 32, fp32, DDP)"], "--out", str(work / "warm"), "--train.steps", "1",
          "--train.no-progress"], 1, 2, env)  # fmt: skip
    results: dict[str, dict] = {}
    for name, stage in stages.items():
        rates: dict[str, list[float]] = {c[0]: [] for c in CASES}
        for r in range(args.rounds):
            for case, nproc, threads in CASES:
                if "FSDP" in name and nproc == 1:
                    continue  # FSDP is a multi-rank strategy; its one-process baselines are the DDP rows
                out = work / f"run_{len(results)}_{r}_{nproc}_{threads}"
                clap([*stage, *common, "--out", str(out)], nproc, threads, env)
                rates[case].append(samples_per_s(out))
                shutil.rmtree(out)
        med = {c: statistics.median(v) for c, v in rates.items() if v}
        base = results.get("ntp_small (batch 32, fp32, DDP)", {}).get("samples_per_s", {}) if "FSDP" in name else med
        row = {"samples_per_s": med, "all_rounds": rates}
        if "2p x 1t" in med and "1p x 1t" in base:
            row["scaling_2p_over_1p1t"] = med["2p x 1t"] / base["1p x 1t"]
            row["gain_2p_over_1p2t"] = med["2p x 1t"] / base["1p x 2t"]
        results[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "all_rounds"}, indent=1), flush=True)
    memory = {}
    for strategy in ("ddp", "fsdp"):
        stdout = clap_out(["train", "ntp", "--config", "ntp_small", "--model.vlm.name", "smollm2-135m",
                           "--model.vlm.tokenizer", "smollm2", "--act-vae", str(av), "--robot-data", str(data),
                           "--out", str(work / "dry"), "--train.dry-run", "--train.batch-size", "4",
                           "--train.precision", "fp32", "--train.strategy", strategy], 2, env)  # fmt: skip
        memory[strategy] = model_states(stdout)
        print(f"smollm2-135m, 2 ranks, {strategy}: {memory[strategy]}", flush=True)
    memory["fsdp_over_ddp"] = memory["fsdp"]["total_mb"] / memory["ddp"]["total_mb"]
    shutil.rmtree(work, ignore_errors=True)
    import torch

    out = {
        "steps_per_case": args.steps,
        "rounds": args.rounds,
        "stages": results,
        "model_states_per_rank_smollm2_135m_2_ranks": memory,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "loadavg_end": os.getloadavg(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
