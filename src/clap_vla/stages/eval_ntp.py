"""`clap eval ntp`: token accuracy on held-out episodes and decode latency with / without KV cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from clap_vla.configs.ntp import NTPEvalConfig
from clap_vla.eval.ntp import token_metrics


def decode_latency(policy_model, visual, prompt: list[int], n_actions: int, repeats: int = 10) -> dict[str, float]:
    """p50/p95 seconds per action chunk and tokens/s of greedy decoding, with and without KV cache."""
    out = {}
    for use_cache in (True, False):
        policy_model.generate(visual, [prompt], [n_actions], use_cache=use_cache)  # warm-up
        times, n_tok = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            txt, acts, _ = policy_model.generate(visual, [prompt], [n_actions], use_cache=use_cache)
            times.append(time.perf_counter() - t0)
            n_tok = len(txt[0]) + len(acts[0])
        key = "cache" if use_cache else "no_cache"
        out[f"{key}_p50_s"] = float(np.percentile(times, 50))
        out[f"{key}_p95_s"] = float(np.percentile(times, 95))
        out[f"{key}_tokens_per_s"] = n_tok / float(np.median(times))
        out["tokens_per_chunk"] = n_tok
    return out


def run(cfg: NTPEvalConfig) -> int:
    import json

    from clap_vla.artifacts import ACT_VAE_DIR
    from clap_vla.data.atomic import atomic_write_text
    from clap_vla.data.ntp import TextTokens, robot_samples
    from clap_vla.data.providers import robot_normalizers, visual_provider
    from clap_vla.models.act_vae import load_act_vae
    from clap_vla.models.ntp_policy import load_ntp
    from clap_vla.nn.frame_encoders import build_frame_encoder

    model, meta = load_ntp(cfg.ntp)
    conf = meta["config"]
    act_vae, _ = load_act_vae(Path(cfg.ntp) / ACT_VAE_DIR)
    text = TextTokens(model.tokenizer, model.act_offset)
    from clap_vla.configs.vd_vae import FeatureConfig

    features = FeatureConfig(**conf["features"])
    encoder = None if model.vlm.uses_pixels else build_frame_encoder(conf["features"]["frame_encoder"],
                                                                    conf["features"]["precision"])  # fmt: skip
    results: dict = {"ntp": str(Path(cfg.ntp).resolve()), "datasets": {}}
    for p in conf["robot_data"]:
        norm = robot_normalizers(Path(cfg.ntp), meta, [p], act_vae.cfg.horizon, progress=False)[0]
        _, held = robot_samples(p, act_vae, norm, conf["holdout_every"], progress=False)
        held.visual = visual_provider(p, features, encoder, progress=True)
        m = token_metrics(model, held, text, cfg.samples, cfg.generate)
        results["datasets"][Path(p).name] = {"held_out_samples": len(held), **m}
        print(
            f"{Path(p).name}: action tokens {m['action_acc']:.1%} teacher-forced, "
            f"{m.get('gen_action_acc', float('nan')):.1%} free-running ({m.get('gen_exact', float('nan')):.1%} "
            f"chunks exact); subtask text {m['text_acc']:.1%}"
        )
        if "latency" not in results:
            vis = held.visual.get(held.rows[:1], np.zeros(1, np.int64))[:, None]
            prompt = text.prompt(held.robot_type, held.instructions[held.instruction[0]])
            n_act = int((held.codes[0] >= 0).all(-1).sum()) * model.cfg.codes_per_arm
            results["latency"] = decode_latency(model, vis, prompt, n_act)
            lat = results["latency"]
            print(
                f"decode latency per chunk: {lat['cache_p50_s'] * 1e3:.0f} ms p50 / {lat['cache_p95_s'] * 1e3:.0f} ms "
                f"p95 with KV cache, {lat['no_cache_p50_s'] * 1e3:.0f} / {lat['no_cache_p95_s'] * 1e3:.0f} ms "
                f"without; {lat['cache_tokens_per_s']:.0f} tokens/s"
            )
    out = cfg.out or Path(cfg.ntp) / "eval" / "ntp_eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
