"""`clap eval latency`: per-chunk latency of CLAP-NTP vs CLAP-RF on the same backbone and inputs.

Both columns run the post-trained VLM on the same observation (a dataset frame, its instruction and
state): NTP decodes the subtask and the action tokens greedily with the KV cache, then the Act-VAE
decoder; RF runs one prefix forward and N Euler steps of the head. Each call's time is split into
encode (frame features), prefix (the VLM over images + prompt), decode / denoise, and post
(tokens or velocities -> absolute actions). The paper's ratio (H100): 382.0 / 70.1 = 5.45x.

`ratio_ceiling` = NTP / (encode + prefix) is what the ratio would be if the head cost nothing: the
two columns share those phases, so it bounds the NTP/RF ratio for this backbone on this machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from clap_vla.configs.post import LatencyConfig


def observation_from(data: Path, robot_type: str) -> dict:
    """The first frame of episode 0 as the policy sees it in closed loop."""
    from clap_vla.data import lerobot_format as lf
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.types import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE

    ds = RobotDataset(data)
    cols = ds.episode_columns(0, [lf.STATE, lf.TASK_INDEX])
    cam = ds.cameras[0]
    short = cam.removeprefix(lf.IMAGES_PREFIX)
    return {
        IMAGES: {short: ds.frames(0, cam, [0])[0]},
        STATE: np.asarray(cols[lf.STATE][0], np.float32),
        INSTRUCTION: ds.task_of(int(cols[lf.TASK_INDEX][0])),
        ROBOT_TYPE: robot_type,
    }


def time_policy(policy, obs: dict, repeats: int, warmup: int) -> dict:
    parts: dict[str, list[float]] = {}
    totals = []
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        policy.infer(obs)
        dt = time.perf_counter() - t0
        if k >= warmup:
            totals.append(dt)
            for name, v in policy.last_timing.items():
                parts.setdefault(name, []).append(v)
    out = {"p50_ms": 1e3 * float(np.percentile(totals, 50)), "p95_ms": 1e3 * float(np.percentile(totals, 95))}
    out.update({f"{name.removesuffix('_s')}_p50_ms": 1e3 * float(np.median(v)) for name, v in parts.items()})
    return out


def run(cfg: LatencyConfig) -> int:
    import torch

    from clap_vla.data.atomic import atomic_write_text
    from clap_vla.models.clap_policy import ClapPolicy
    from clap_vla.train import checkpoint as ck

    meta = ck.read_json(Path(cfg.policy) / ck.META)
    if meta.get("stage") != "post":
        raise SystemExit(f"{cfg.policy}: not a post-training artifact (stage {meta.get('stage')!r})")
    entry = (meta.get("norm_stats") or [{}])[0]
    data = cfg.data or Path(entry["dataset"])
    obs = observation_from(data, entry.get("robot_type", "robot"))
    results: dict = {"policy": str(Path(cfg.policy).resolve()), "data": str(data), "threads": torch.get_num_threads()}
    ntp = ClapPolicy(cfg.policy, mode="ntp", precision=cfg.precision)
    results["precision"] = ntp.precision
    results["ntp"] = time_policy(ntp, obs, cfg.repeats, cfg.warmup)
    arms = len(ntp._normalizer(obs["robot_type"]).stats.arms)
    results["ntp"]["tokens"] = len(ntp.model.tokenizer(ntp.last_subtask).input_ids) + arms * ntp.model.cfg.codes_per_arm
    for steps in cfg.steps:
        rf = ClapPolicy(cfg.policy, mode="rf", steps=steps, precision=cfg.precision)
        results[f"rf_{steps}"] = time_policy(rf, obs, cfg.repeats, cfg.warmup)
        results[f"ratio_ntp_over_rf_{steps}"] = results["ntp"]["p50_ms"] / results[f"rf_{steps}"]["p50_ms"]
    # Both columns pay for the frame features and the prefix, so even a head that cost nothing could
    # not beat NTP by more than this: the ceiling of the ratio on this backbone and machine.
    shared = [results[f"rf_{s}"].get("encode_p50_ms", 0.0) + results[f"rf_{s}"].get("prefix_p50_ms", 0.0)
              for s in cfg.steps]  # fmt: skip
    results["shared_encode_prefix_p50_ms"] = float(np.median(shared))
    results["ratio_ceiling"] = results["ntp"]["p50_ms"] / results["shared_encode_prefix_p50_ms"]
    for name in ["ntp", *[f"rf_{s}" for s in cfg.steps]]:
        r = results[name]
        extra = ", ".join(f"{k.removesuffix('_p50_ms')} {v:.1f}" for k, v in r.items() if k.endswith("_p50_ms") and
                          k != "p50_ms")  # fmt: skip
        print(f"{name:6s} p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  ({extra} ms)")
    for s in cfg.steps:
        print(f"NTP / RF ({s} Euler steps): {results[f'ratio_ntp_over_rf_{s}']:.2f}x (paper, H100: 5.45x)")
    print(f"ceiling with a free head, NTP / (encode + prefix): {results['ratio_ceiling']:.2f}x ({ntp.precision})")
    out = cfg.out or Path(cfg.policy) / "eval" / "latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
