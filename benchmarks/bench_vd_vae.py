"""VD-VAE speed on this machine, on a real on-disk LeRobot dataset, measured side by side in one run:

1. frame-encoder throughput (images/s, batch 64) of the frozen backbone, fp32 vs bf16;
2. feature-cache build time (clean view + augmented views, bf16 encoder; the decoded-frame cache
   already exists, its own build time is reported apart);
3. VD-VAE training throughput (transitions/s, steps/s) with the feature cache (`CachedFeatures`)
   vs without it (`OnlineFeatures`: the uint8 frame cache through the bf16 encoder, clean and
   augmented frames, every batch), fp32 vs bf16 autocast for the VD-VAE itself. A step is
   `TransitionSource.batch` (data) + loss, backward, grad clip, AdamW, `after_step` (model); the
   median over the measured steps is reported for each part and for the whole step, warm-up
   steps excluded. The four variants run round-robin, step by step, so drift hits them alike;
4. labelling throughput (frame pairs/s) of `VDVAE.infer_codes` over cached clean features, as
   `clap label` runs it (every transition of the dataset, `iterate` batches of 256), fp32 vs bf16.

The model is `vd_vae_small` with feature_dim / num_patches from the encoder and codes_per_arm /
code_dim from an untrained `act_vae_small` built in memory (speed does not depend on training).
Default data: a toy robot dataset (10 episodes x 60-87 frames, 128x128, AV1) written to a temp
dir; `--data` measures an existing dataset instead (its feature cache is built into a temp dir,
V x frames x P x C x 2 bytes). `CLAP_CACHE_DIR` points at a temp dir unless `--cache-dir` is given.

    OMP_NUM_THREADS=1 python benchmarks/bench_vd_vae.py --out benchmarks/results/vd_vae.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_info() -> dict[str, object]:
    """CPU model and whether it has native bf16 instructions (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return {"cpu": model, "bf16_isa": [f for f in flags if f in ("avx512_bf16", "amx_bf16")]}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def encoder_throughput(encoders: dict, imgs: torch.Tensor, reps: int, warmup: int = 2) -> dict[str, float]:
    """images/s of each encoder on the same uint8 batch, alternating encoders every repeat."""
    times: dict[str, list[float]] = {k: [] for k in encoders}
    for i in range(reps + warmup):
        for k, enc in encoders.items():
            t = time.perf_counter()
            enc.encode(imgs)
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: len(imgs) / med(v) for k, v in times.items()}


class Run:
    """One training variant: a VD-VAE, its optimiser and a transition source; times each step."""

    def __init__(self, model, source, precision: str, grad_clip: float = 0.1):
        from clap_vla.configs.vd_vae import ENV_CODEBOOK_LR
        from clap_vla.train.optim import build_optimizer

        self.model, self.source, self.precision, self.grad_clip = model.train(), source, precision, grad_clip
        self.opt = build_optimizer(model, 2e-4, 0.01, ENV_CODEBOOK_LR)  # as `clap train vd-vae`
        self.data_s: list[float] = []
        self.model_s: list[float] = []
        self.step_s: list[float] = []

    def step(self, step: int, record: bool) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")
        t0 = time.perf_counter()
        batch = self.source.batch(step)
        t1 = time.perf_counter()
        with ctx:
            loss, _ = self.model.compute_loss(batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: loss {loss.item()}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.model.after_step(step)
        t2 = time.perf_counter()
        if record:
            self.data_s.append(t1 - t0)
            self.model_s.append(t2 - t1)
            self.step_s.append(t2 - t0)

    def summary(self, batch_size: int) -> dict[str, float]:
        step = med(self.step_s)
        return {
            "transitions_per_s": batch_size / step,
            "steps_per_s": 1 / step,
            "step_ms": 1000 * step,
            "data_ms": 1000 * med(self.data_s),
            "model_ms": 1000 * med(self.model_s),
            "data_frac": med(self.data_s) / step,
            "step_ms_all": [round(1000 * x, 1) for x in self.step_s],
        }


@torch.no_grad()
def label_throughput(model, allset, batch_size: int, passes: int) -> dict[str, dict[str, float]]:
    """Frame pairs/s of `infer_codes` over `iterate` batches, whole passes, fp32 and bf16 alternating;
    the first pass of each is warm-up."""
    from clap_vla.data.transitions import iterate

    model.eval()
    out: dict[str, dict[str, list[float]]] = {p: {"data": [], "model": [], "total": []} for p in ("fp32", "bf16")}
    for i in range(passes + 1):
        for precision in ("fp32", "bf16"):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            data_s = model_s = 0.0
            it = iterate(allset, batch_size)
            while True:
                t0 = time.perf_counter()
                item = next(it, None)
                t1 = time.perf_counter()
                if item is None:
                    break
                _, b = item
                with ctx:
                    model.infer_codes(b.features, b.arm_mask)
                data_s += t1 - t0
                model_s += time.perf_counter() - t1
            if i:
                out[precision]["data"].append(data_s)
                out[precision]["model"].append(model_s)
                out[precision]["total"].append(data_s + model_s)
    n = len(allset)
    return {
        p: {
            "pairs_per_s": n / med(v["total"]),
            "pairs_per_s_model_only": n / med(v["model"]),
            "data_frac": med(v["data"]) / med(v["total"]),
            "pass_s_all": [round(x, 3) for x in v["total"]],
        }
        for p, v in out.items()
    }


def table(r: dict) -> str:
    e, fc, tr, lb = r["encoder"], r["feature_cache"], r["train"], r["label"]

    def f(x: float, nd: int = 1) -> str:
        return f"{x:,.{nd}f}"

    rows = [
        "| measurement | fp32 | bf16 | bf16 / fp32 |",
        "|---|---:|---:|---:|",
        f"| encoder images/s (batch {r['config']['batch_size']}) | {f(e['images_per_s_fp32'])} | "
        f"{f(e['images_per_s_bf16'])} | {e['bf16_speedup']:.2f} |",
    ]
    for mode in ("cache", "no_cache"):
        a, b = tr[f"{mode}_fp32"], tr[f"{mode}_bf16"]
        label = "feature cache" if mode == "cache" else "no cache (online encoder)"
        rows.append(
            f"| train transitions/s, {label} | {f(a['transitions_per_s'])} | {f(b['transitions_per_s'])} | "
            f"{b['transitions_per_s'] / a['transitions_per_s']:.2f} |"
        )
        rows.append(
            f"| &nbsp;&nbsp;step / data / model ms | {a['step_ms']:.0f} / {a['data_ms']:.0f} / {a['model_ms']:.0f} | "
            f"{b['step_ms']:.0f} / {b['data_ms']:.0f} / {b['model_ms']:.0f} | |"
        )
    rows.append(
        f"| train cache / no-cache speedup | {tr['cache_speedup_fp32']:.2f} | {tr['cache_speedup_bf16']:.2f} | |"
    )
    a, b = lb["fp32"], lb["bf16"]
    rows.append(
        f"| label pairs/s (batch {r['config']['label_batch']}) | {f(a['pairs_per_s'])} | {f(b['pairs_per_s'])} | "
        f"{b['pairs_per_s'] / a['pairs_per_s']:.2f} |"
    )
    rows.append(
        f"\nfeature cache build (bf16 encoder, {fc['views']} views x {fc['frames']} frames): "
        f"{fc['build_s']:.1f} s, {fc['images_per_s']:.1f} images/s, {fc['mb']:.1f} MB; "
        f"frame cache (video decode): {r['frame_cache_build_s']:.1f} s"
    )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="existing LeRobot dataset (default: a toy one)")
    p.add_argument("--episodes", type=int, default=10, help="toy dataset episodes")
    p.add_argument("--length", type=int, default=60, help="toy episode length (episode i has length + 3i frames)")
    p.add_argument("--size", type=int, default=128, help="toy frame size")
    p.add_argument("--camera", default=None, help="default: the dataset's first camera")
    p.add_argument("--encoder", default="efficientnet-lite0")
    p.add_argument("--augment-views", type=int, default=1, help="augmented views in the feature cache")
    p.add_argument("--batch", type=int, default=64, help="training and encoder batch")
    p.add_argument("--steps", type=int, default=8, help="measured training steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="warm-up training steps per variant (excluded)")
    p.add_argument("--encoder-reps", type=int, default=5)
    p.add_argument("--label-batch", type=int, default=256)
    p.add_argument("--label-passes", type=int, default=3, help="measured passes over the dataset (+1 warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=None, help="CLAP_CACHE_DIR (default: a temp dir)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/vd_vae.json"))
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_vd_vae-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["CLAP_CACHE_DIR"] = str(args.cache_dir or tmp / "cache")
        results = run(args, tmp)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def run(args, tmp: Path) -> dict:
    from clap_vla.data.augment import AugmentConfig
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.feature_cache import build_feature_cache
    from clap_vla.data.frame_cache import build_frame_cache
    from clap_vla.data.normalize import ActionNormalizer
    from clap_vla.data.transitions import (
        CachedFeatures,
        OnlineFeatures,
        TransitionSet,
        TransitionSource,
        load_transitions,
    )
    from clap_vla.data.windows import WindowConfig, fit_norm_stats
    from clap_vla.models.act_vae import ACT_VAE_PRESETS, ActVAE
    from clap_vla.models.vd_vae import VD_VAE_PRESETS, VDVAE
    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.train.loop import count_parameters

    load_start = os.getloadavg()[0]  # this machine is shared: a high load slows the wall clock
    t_start = time.perf_counter()
    write_s = None
    if args.data is None:
        sys.path.insert(0, str(REPO))
        from tests.conftest import write_toy

        data = tmp / "toy"
        t = time.perf_counter()
        write_toy(data, n=args.episodes, length=args.length, size=args.size)
        write_s = time.perf_counter() - t
    else:
        data = args.data
    ds = RobotDataset(data)
    camera = ds.camera_key(args.camera) if args.camera else ds.cameras[0]
    h, w = ds.image_shape(camera)
    t = time.perf_counter()
    frames_path = build_frame_cache(ds, camera, progress=False)
    frame_cache_s = time.perf_counter() - t
    frames = np.memmap(frames_path, dtype=np.uint8, mode="r", shape=(ds.num_frames, h, w, 3))
    print(f"dataset {data}: {ds.num_episodes} episodes, {ds.num_frames} frames {h}x{w} ({camera})", flush=True)

    # 1. Frame encoder, fp32 vs bf16, on real frames spread over the dataset.
    encoders = {p: build_frame_encoder(args.encoder, precision=p) for p in ("fp32", "bf16")}
    rows = np.linspace(0, ds.num_frames - 1, args.batch).round().astype(np.int64)
    imgs = torch.from_numpy(np.ascontiguousarray(frames[rows].transpose(0, 3, 1, 2)))  # (B, 3, h, w) uint8
    ips = encoder_throughput(encoders, imgs, args.encoder_reps)
    enc = encoders["bf16"]  # the stage's default precision (FeatureConfig.precision)
    gh, gw = enc.grid(h, w)
    print(f"encoder images/s: {ips}", flush=True)

    # 2. Feature cache: clean + augmented views, into a fresh dir so it is always built (timed).
    views = 1 + args.augment_views
    augment = AugmentConfig() if args.augment_views else None
    t = time.perf_counter()
    cache = build_feature_cache(
        ds, camera, enc, views=views, augment=augment, seed=0, cache_dir=tmp / "features", progress=False
    )
    build_s = time.perf_counter() - t
    print(f"feature cache: {build_s:.1f} s", flush=True)

    # 3. Training, with vs without the feature cache, fp32 vs bf16.
    torch.manual_seed(0)
    act = ActVAE(ACT_VAE_PRESETS["act_vae_small"])  # untrained: speed only
    H = act.cfg.horizon
    mcfg = replace(
        VD_VAE_PRESETS["vd_vae_small"],
        feature_dim=cache.dim,
        num_patches=cache.num_patches,
        codes_per_arm=act.cfg.codes_per_arm,
        code_dim=act.cfg.code_dim,
    )
    norm = ActionNormalizer(fit_norm_stats(ds, WindowConfig(horizon=H, cameras=()))) if ds.has_action else None
    train_set, held_set = load_transitions(data, H, normalizer=norm, progress=False)
    providers = {
        "cache": CachedFeatures(cache),
        "no_cache": OnlineFeatures(ds, camera, enc, augment, seed=0, progress=False),
    }
    runs: dict[str, Run] = {}
    for mode, provider in providers.items():
        source = TransitionSource([replace(train_set, features=provider)], [1.0], args.batch, seed=0)
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)  # identical initial weights for every variant
            runs[f"{mode}_{precision}"] = Run(VDVAE(mcfg, copy.deepcopy(act)), source, precision)
    n_params = count_parameters(next(iter(runs.values())).model)
    for i in range(args.warmup + args.steps):
        for r in runs.values():  # round-robin: the same batch (step) for every variant, drift shared
            r.step(i, record=i >= args.warmup)
        print(f"train step {i + 1}/{args.warmup + args.steps}", flush=True)
    train = {k: r.summary(args.batch) for k, r in runs.items()}
    for p_ in ("fp32", "bf16"):
        train[f"cache_speedup_{p_}"] = (
            train[f"cache_{p_}"]["transitions_per_s"] / train[f"no_cache_{p_}"]["transitions_per_s"]
        )
    for m in ("cache", "no_cache"):
        train[f"bf16_speedup_{m}"] = train[f"{m}_bf16"]["transitions_per_s"] / train[f"{m}_fp32"]["transitions_per_s"]

    # 4. Labelling: every transition of the dataset (train and held-out), clean cached features.
    allset = TransitionSet(
        name=train_set.name,
        rows=np.concatenate([train_set.rows, held_set.rows]),
        episode=np.concatenate([train_set.episode, held_set.episode]),
        t=np.concatenate([train_set.t, held_set.t]),
        arm_mask=train_set.arm_mask,
        features=CachedFeatures(cache, clean_only=True),
    )
    label = label_throughput(runs["cache_fp32"].model, allset, args.label_batch, args.label_passes)
    label["bf16_speedup"] = label["bf16"]["pairs_per_s"] / label["fp32"]["pairs_per_s"]

    return {
        "benchmark": "VD-VAE: frame encoder, feature cache, training with/without cache, labelling",
        "machine": {
            "cpus": os.cpu_count(),
            **cpu_info(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "loadavg_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        },
        "dataset": {
            "path": str(data)
            if args.data
            else f"toy (tests.conftest.write_toy n={args.episodes}, length={args.length}+3i, size={args.size}, av1)",
            "episodes": ds.num_episodes,
            "frames": ds.num_frames,
            "image": [h, w],
            "camera": camera,
            "train_transitions": len(train_set),
            "all_transitions": len(allset),
            "has_action": ds.has_action,
            "write_s": None if write_s is None else round(write_s, 2),
        },
        "config": {
            "model": "vd_vae_small",
            "act_vae": "act_vae_small (untrained)",
            "parameters_m": n_params / 1e6,
            "feature_dim": mcfg.feature_dim,
            "num_patches": mcfg.num_patches,
            "grid": [gh, gw],
            "codes_per_arm": mcfg.codes_per_arm,
            "code_dim": mcfg.code_dim,
            "horizon": H,
            "encoder": args.encoder,
            "batch_size": args.batch,
            "warmup_steps": args.warmup,
            "measured_steps": args.steps,
            "augment_views": args.augment_views,
            "online_encoder_precision": "bf16",
            "label_batch": args.label_batch,
            "label_passes": args.label_passes,
        },
        "frame_cache_build_s": frame_cache_s,
        "encoder": {
            "images_per_s_fp32": ips["fp32"],
            "images_per_s_bf16": ips["bf16"],
            "bf16_speedup": ips["bf16"] / ips["fp32"],
        },
        "feature_cache": {
            "views": views,
            "frames": ds.num_frames,
            "build_s": build_s,
            "images_per_s": views * ds.num_frames / build_s,
            "mb": cache.path.stat().st_size / 2**20,
        },
        "train": train,
        "label": label,
        "total_s": time.perf_counter() - t_start,
    }


if __name__ == "__main__":
    main()
