"""`clap demo`: the whole CLAP pipeline on embedded defaults, in one command.

1. Data from the buttons testbed (docs/simulation.md; the paper's object generalisation, §V-A5):
   robot demonstrations of task set A (two button colours), and action-free human-domain videos (a
   human hand and forearm in place of the robot) of sets A and B (all four colours); the robot never
   sees set B.
2. Act-VAE on the robot chunks (+ held-out PSNR), and a small rate-distortion sweep (Table V).
3. VD-VAE aligned to the frozen Act-VAE on robot transitions + human videos (SigLIP, §III-C2);
   its alignment on held-out robot transitions and on the human videos, with the latent t-SNE.
4. Labels: pseudo action tokens for the human videos.
5. CLAP-NTP on robot tokens + pseudo-labelled video (§III-D), and the same without the videos (the
   control: Table VII's "w/o human data").
6. Post-training (Algorithm 4): NTP adaptation, then the RF head with Knowledge Matching.
7. Closed-loop success of NTP (with and without videos) and RF on sets A and B, with Table III's
   failure modes, the NTP/RF latency, plots, a rollout video.

Every step runs the same `clap ...` command a user would type (printed before it runs), writes its
output atomically, and is skipped when that output exists; a killed training step resumes from its
last checkpoint. The sizes are chosen to finish on a 2-core CPU: the numbers show the pipeline
working, not the paper's results (docs/results.md has the longer runs).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from clap_vla.configs.demo import DemoConfig
from clap_vla.errors import ClapError


@dataclass
class Step:
    name: str
    argv: list[str]
    """The `clap` command of this step."""
    output: Path
    """What the step writes (a directory or a file): moved aside when it is stale."""
    done: Callable[[], bool]


def _trained(art: Path, steps: int) -> Callable[[], bool]:
    """A training artifact is finished when its meta.json records the full step count."""

    def done() -> bool:
        meta = art / "meta.json"
        return meta.exists() and int(json.loads(meta.read_text()).get("step", 0)) >= steps

    return done


def _exists(path: Path) -> Callable[[], bool]:
    return path.exists


def _train_flags(prefix: str, steps: int, warmup_div: int, cfg: DemoConfig) -> list[str]:
    """Steps, warmup, a checkpoint every quarter of the run (so an interrupted step resumes close to
    where it stopped) and progress bars, for one `TrainConfig` (`--train.` or `--adapt.`)."""
    return [f"--{prefix}.steps", str(steps), f"--{prefix}.warmup-steps", str(max(1, steps // warmup_div)),
            f"--{prefix}.checkpoint-every", str(max(1, steps // 4)),
            f"--{prefix}.progress" if cfg.progress else f"--{prefix}.no-progress"]  # fmt: skip


def steps(cfg: DemoConfig) -> list[Step]:
    o = cfg.out
    robot, human = o / "data" / "robot", o / "data" / "human"
    act, rd, vd, ntp, post = o / "act_vae", o / "rate_distortion", o / "vd_vae", o / "ntp", o / "post"
    ntp_robot = o / "ntp_robot_only"
    tokens = o / "tokens" / "human"
    ev = o / "eval"
    bs = ["--train.batch-size", str(cfg.batch_size)]
    hold = ["--holdout-every", str(cfg.holdout_every)]
    gen = ["data", "gen", cfg.env, "--size", str(cfg.size), "--workers", str(cfg.workers),
           "--seed", str(cfg.seed), "--codec", "h264"]  # fmt: skip
    if not cfg.progress:
        gen.append("--no-progress")
    # fmt: off
    all_tasks = ",".join(cfg.tasks_a + cfg.tasks_b)
    rollout = ["eval", "rollout", "--env", cfg.env, "--tasks", all_tasks, "--episodes", str(cfg.eval_episodes),
               "--workers", str(cfg.workers), "--size", str(cfg.size), "--max-steps", str(cfg.eval_max_steps)]
    rd_grid = [str(x) for x in cfg.rd_grid]
    return [
        Step("robot demonstrations (task set A)",
             [*gen, "--tasks", cfg.robot_tasks, "--episodes", str(cfg.robot_episodes), "--out", str(robot)],
             robot, _exists(robot / "meta" / "info.json")),
        Step("human-domain videos, action-free (task sets A + B)",
             [*gen, "--domain", "human", "--tasks", all_tasks, "--episodes", str(cfg.video_episodes),
              "--out", str(human)],
             human, _exists(human / "meta" / "info.json")),
        Step("Act-VAE",
             ["train", "act-vae", "--config", cfg.act_vae, "--data", str(robot), "--out", str(act),
              *_train_flags("train", cfg.act_vae_steps, 10, cfg), *hold, "--resume"],
             act, _trained(act, cfg.act_vae_steps)),
        Step("Act-VAE held-out reconstruction",
             ["eval", "act-vae", "--act-vae", str(act), "--data", str(robot), "--out", str(ev / "act_vae")],
             ev / "act_vae", _exists(ev / "act_vae" / "eval.json")),
        Step("rate-distortion sweep (paper Table V)",
             ["eval", "rate-distortion", "--config", cfg.rate_distortion,
              "--data", str(robot), "--out", str(rd), "--grid", *rd_grid,
              *_train_flags("base.train", cfg.rd_steps, 10, replace(cfg, progress=False)),
              "--base.holdout-every", str(cfg.holdout_every)],
             rd, _exists(rd / "table.json")),
        Step("VD-VAE (contrastive alignment to the frozen Act-VAE)",
             ["train", "vd-vae", "--config", cfg.vd_vae, "--act-vae", str(act), "--robot-data", str(robot),
              "--video-data", str(human), "--out", str(vd), *_train_flags("train", cfg.vd_vae_steps, 10, cfg),
              *bs, *hold, "--resume"],
             vd, _trained(vd, cfg.vd_vae_steps)),
        Step("VD-VAE alignment on robot and human video, latent t-SNE",
             ["eval", "vd-vae", "--vd-vae", str(vd), "--robot-data", str(robot), "--video-data", str(human),
              "--out", str(ev / "vd_vae")],
             ev / "vd_vae", _exists(ev / "vd_vae" / "eval.json")),
        Step("pseudo action tokens for the human videos",
             ["label", "--vd-vae", str(vd), "--data", str(human), "--out", str(tokens)]
             + ([] if cfg.progress else ["--no-progress"]),
             tokens, _exists(tokens / "meta.json")),
        Step("CLAP-NTP (robot tokens + pseudo-labelled video)",
             ["train", "ntp", "--config", cfg.ntp, "--act-vae", str(act), "--robot-data", str(robot),
              "--video-tokens", str(tokens), "--out", str(ntp), *_train_flags("train", cfg.ntp_steps, 20, cfg),
              "--model.vlm.visual-merge", str(cfg.visual_merge), *bs, *hold, "--resume"],
             ntp, _trained(ntp, cfg.ntp_steps)),
        Step("CLAP-NTP on robot tokens only (the control: what do the videos add?)",
             ["train", "ntp", "--config", cfg.ntp, "--act-vae", str(act), "--robot-data", str(robot),
              "--out", str(ntp_robot), *_train_flags("train", cfg.ntp_steps, 20, cfg),
              "--model.vlm.visual-merge", str(cfg.visual_merge), *bs, *hold, "--resume"],
             ntp_robot, _trained(ntp_robot, cfg.ntp_steps)),
        Step("CLAP-RF post-training (NTP adaptation, then RF head + Knowledge Matching)",
             ["train", "post", "--config", cfg.post, "--ntp", str(ntp), "--robot-data", str(robot),
              "--video-tokens", str(tokens), "--out", str(post),
              *_train_flags("adapt", cfg.adapt_steps, 10, cfg), "--adapt.batch-size", str(cfg.batch_size),
              *_train_flags("train", cfg.post_steps, 10, cfg), "--train.lr", str(cfg.post_lr),
              *bs, *hold, "--resume"],
             post, _trained(post, cfg.post_steps)),
        Step("closed loop: CLAP-NTP",
             [*rollout, "--policy", str(ntp), "--out", str(ev / "rollout_ntp.json")],
             ev / "rollout_ntp.json", _exists(ev / "rollout_ntp.json")),
        Step("closed loop: CLAP-NTP without videos",
             [*rollout, "--policy", str(ntp_robot), "--out", str(ev / "rollout_ntp_robot_only.json")],
             ev / "rollout_ntp_robot_only.json", _exists(ev / "rollout_ntp_robot_only.json")),
        Step("closed loop: CLAP-RF (records one video per task)",
             [*rollout, "--policy", str(post), "--video-episodes", "1", "--out", str(ev / "rollout_rf.json")],
             ev / "rollout_rf.json", _exists(ev / "rollout_rf.json")),
        Step("latency: NTP decoding vs RF denoising on the same backbone",
             ["eval", "latency", "--policy", str(post), "--repeats", str(cfg.latency_repeats),
              "--out", str(ev / "latency.json")],
             ev / "latency.json", _exists(ev / "latency.json")),
    ]
    # fmt: on


# Settings that do not change what a step produces: a demo directory may be rerun with others.
_FREE_SETTINGS = ("out", "progress", "workers")


def _check_same_config(cfg: DemoConfig, plan: list[Step]) -> None:
    """A demo directory belongs to one config: finished steps are reused only when every setting
    that shapes them is the one they were made with."""
    from dataclasses import asdict

    path = cfg.out / "demo_config.json"
    now = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k not in _FREE_SETTINGS}
    if path.exists():
        before = json.loads(path.read_text())
        diffs = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
        if diffs:
            raise ClapError(
                f"{cfg.out} holds a demo run with other settings ({'; '.join(diffs)}); its finished steps would "
                f"not match them. Use another --out, or delete {cfg.out} to start over."
            )
        return
    made = [s.name for s in plan if s.output.exists()]
    if made:
        raise ClapError(
            f"{cfg.out} has demo outputs ({', '.join(made[:3])}{', ...' if len(made) > 3 else ''}) but no "
            f"demo_config.json saying which settings made them; use another --out, or delete {cfg.out}."
        )
    _write_json(path, now)


def _move_aside(path: Path) -> Path:
    """Rename a stale output out of the way (kept, never deleted): <name>.stale-1, -2, ..."""
    k = 1
    while (dest := path.with_name(f"{path.name}.stale-{k}")).exists():
        k += 1
    path.rename(dest)
    return dest


def run(cfg: DemoConfig) -> int:
    from clap_vla.cli import main

    cfg.out.mkdir(parents=True, exist_ok=True)
    plan = steps(cfg)
    _check_same_config(cfg, plan)
    t_start = time.time()
    record_path = cfg.out / "steps.json"
    record: dict[str, dict] = json.loads(record_path.read_text()) if record_path.exists() else {}
    newest = 0.0  # when the latest earlier step finished: a step made before that is stale
    for i, step in enumerate(plan, 1):
        head = f"[demo {i}/{len(plan)}] {step.name}"
        rec = record.get(step.name)
        if step.done() and rec and rec["finished"] < newest:
            moved = _move_aside(step.output)
            print(f"{head}: an earlier step was redone since this one ran; its output moved to {moved}", flush=True)
        if step.done():
            print(f"{head}: already done, skipping", flush=True)
            newest = max(newest, rec["finished"] if rec else 0.0)
            continue
        print(f"{head}\n  $ clap {' '.join(step.argv)}", flush=True)
        t0 = time.time()
        rc = main(step.argv)
        if rc != 0:
            print(f"[demo] step {i} ({step.name}) failed with exit code {rc}; fix it and run `clap demo` again: "
                  f"finished steps are kept", flush=True)  # fmt: skip
            return rc
        if not step.done():
            raise ClapError(f"step {i} ({step.name}) returned 0 but did not write its output")
        newest = time.time()
        record[step.name] = {"seconds": round(newest - t0, 1), "finished": newest}
        _write_json(record_path, record)
        print(f"  done in {newest - t0:.0f} s (demo so far {newest - t_start:.0f} s)", flush=True)
    timings = {s.name: record[s.name]["seconds"] for s in plan if s.name in record}
    report = build_report(cfg, timings)
    plots(cfg, report)
    _write_json(cfg.out / "report.json", report)
    print(format_report(report))
    print(f"[demo] finished in {time.time() - t_start:.0f} s this run; report at {cfg.out / 'report.json'}")
    return 0


def _write_json(path: Path, obj) -> None:
    from clap_vla.data.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def build_report(cfg: DemoConfig, timings: dict) -> dict:
    o, ev = cfg.out, cfg.out / "eval"
    act = _read(ev / "act_vae" / "eval.json")
    vd = _read(ev / "vd_vae" / "eval.json")
    rd = _read(o / "rate_distortion" / "table.json")
    lat = _read(ev / "latency.json")
    ntp_meta, post_meta = _read(o / "ntp" / "meta.json"), _read(o / "post" / "meta.json")
    success = {}
    for name in POLICIES:
        r = _read(ev / f"rollout_{name}.json")
        per = {t: r["tasks"][t]["success_rate"] for t in r["tasks"]}
        sets = {}
        for label, tasks in (("A", cfg.tasks_a), ("B", cfg.tasks_b)):
            outcomes = [x["success"] for t in tasks for x in r["tasks"][t]["outcomes"]]
            if outcomes:
                sets[label] = _rate(outcomes)
                if any("failures" in r["tasks"][t] for t in tasks):  # Table III's modes, where the env has them
                    fails: dict[str, int] = {}
                    for t in tasks:
                        for mode, n in r["tasks"][t].get("failures", {}).items():
                            fails[mode] = fails.get(mode, 0) + n
                    sets[label]["failures"] = fails
        success[name] = {"per_task": per, "sets": sets, "episodes_per_task": cfg.eval_episodes}
    video = _report_video(ev)
    return {
        "task_set_a_robot_and_video": cfg.tasks_a,
        "task_set_b_video_only": cfg.tasks_b,
        "act_vae": {k: act.get(k) for k in ("psnr", "mse", "usage", "perplexity", "rate") if k in act},
        "rate_distortion": [{k: r[k] for k in ("Nq", "K", "psnr", "rate", "elbow")} for r in rd["rows"]],
        "vd_vae": _vd_summary(vd),
        "ntp_heldout": ntp_meta.get("eval", {}),
        "rf_heldout": post_meta.get("eval", {}),
        "success": success,
        "latency_ms": {
            "ntp_p50": lat["ntp"]["p50_ms"],
            **{f"{k}_p50": v["p50_ms"] for k, v in lat.items() if k.startswith("rf_")},
            **{k: v for k, v in lat.items() if k.startswith("ratio")},
        },
        "video": str(video) if video else None,
        "plots": {
            "rate_distortion": str(o / "rate_distortion" / "plot.png"),
            "latent_tsne": str(vd.get("tsne") or ""),
            "success": str(o / "plots" / "success.png"),
            "latency": str(o / "plots" / "latency.png"),
        },
        "seconds_per_step": timings,
        "seconds_total": round(sum(timings.values()), 1),
    }


POLICIES = {"ntp": "CLAP-NTP", "ntp_robot_only": "CLAP-NTP, no videos", "rf": "CLAP-RF"}


def _report_video(ev: Path) -> Path | None:
    """The rollout video for the report: the first successful episode of this RF evaluation (by
    its outcomes, so videos of an earlier run are never picked), else its first recorded episode."""
    outcomes = _read(ev / "rollout_rf.json")["tasks"]
    found = []
    for task, r in outcomes.items():
        for o in r["outcomes"]:
            path = ev / "rollout_rf_videos" / f"{task}_seed{o['seed']}_{'ok' if o['success'] else 'fail'}.mp4"
            if path.exists():
                found.append((not o["success"], path))
    return min(found)[1] if found else None


def _rate(outcomes: list[bool]) -> dict:
    from clap_vla.sim.rollout import wilson_interval

    k, n = sum(bool(x) for x in outcomes), len(outcomes)
    lo, hi = wilson_interval(k, n)
    return {"successes": k, "episodes": n, "rate": k / n, "wilson95": [lo, hi]}


def _vd_summary(vd: dict) -> dict:
    """Token accuracy, decoded PSNR (with the Act-VAE ceiling and the zero-chunk floor) and
    retrieval per domain, from `clap eval vd-vae`'s eval.json."""
    keys = ("token_acc", "psnr", "psnr_act_vae", "psnr_zero", "top1", "top5")
    return {d["kind"]: {k: d["vd_vae"][k] for k in keys if k in d["vd_vae"]} for d in vd["datasets"]}


def plots(cfg: DemoConfig, report: dict) -> None:
    """Success bars (NTP vs RF per task, 95% Wilson intervals) and latency bars (per phase)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pdir = cfg.out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    ev = cfg.out / "eval"
    tasks = cfg.tasks_a + cfg.tasks_b
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 3.8))
    x = np.arange(len(tasks))
    colors = {"ntp": "tab:blue", "ntp_robot_only": "tab:gray", "rf": "tab:orange"}
    width = 0.8 / len(POLICIES)
    for j, (name, label) in enumerate(POLICIES.items()):
        r = _read(ev / f"rollout_{name}.json")["tasks"]
        rates = np.array([r[t]["success_rate"] for t in tasks])
        ci = np.array([r[t]["wilson95"] for t in tasks])
        ax.bar(x + (j - (len(POLICIES) - 1) / 2) * width, rates, width, color=colors[name], label=label,
               yerr=[rates - ci[:, 0], ci[:, 1] - rates], capsize=3)  # fmt: skip
    ax.set_xticks(x, [t.removesuffix("-v3") + ("\n(video only)" if t in cfg.tasks_b else "") for t in tasks],
                  fontsize=8)  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"success ({cfg.eval_episodes} episodes, 95% CI)")
    ax.legend()
    ax.set_title("Closed-loop success: task set A (robot demos) and B (human video only)", fontsize=9)
    fig.tight_layout()
    _save(fig, pdir / "success.png")

    lat = _read(ev / "latency.json")
    cols = [k for k in lat if k == "ntp" or k.startswith("rf_")]
    phases = ["encode", "prefix", "decode", "denoise", "post"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = np.zeros(len(cols))
    for ph in phases:
        vals = np.array([lat[c].get(f"{ph}_p50_ms", 0.0) for c in cols])
        if vals.any():
            ax.bar(cols, vals, bottom=bottom, label=ph)
            bottom += vals
    ax.set_ylabel("ms per chunk (p50)")
    ax.set_xticks(range(len(cols)), ["NTP" if c == "ntp" else f"RF, {c[3:]} Euler steps" for c in cols])
    ax.legend(fontsize=8)
    ax.set_title("Latency per action chunk, same backbone and input")
    fig.tight_layout()
    _save(fig, pdir / "latency.png")
    if report.get("video"):
        shutil.copyfile(report["video"], pdir / "rollout.mp4")
        report["video"] = str(pdir / "rollout.mp4")


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    from clap_vla.data.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def format_report(r: dict) -> str:
    lines = ["", "[demo] report", f"  task set A (robot demos + video): {', '.join(r['task_set_a_robot_and_video'])}",
             f"  task set B (human video only):     {', '.join(r['task_set_b_video_only']) or '-'}"]  # fmt: skip
    a = r["act_vae"]
    lines.append(f"  Act-VAE held-out PSNR {a.get('psnr', float('nan')):.1f} dB, codebook usage "
                 f"{a.get('usage', 0):.0%}")  # fmt: skip
    rd = ", ".join(f"Nq{p['Nq']}/K{p['K']}: {p['psnr']:.1f} dB" for p in r["rate_distortion"])
    lines.append(f"  rate-distortion: {rd}")
    for dom, v in r["vd_vae"].items():
        lines.append(f"  VD-VAE on {dom}: token accuracy {v['token_acc']:.1%}, decoded PSNR {v.get('psnr', 0):.1f} dB"
                     f" (Act-VAE ceiling {v.get('psnr_act_vae', 0):.1f}, zero chunk {v.get('psnr_zero', 0):.1f}),"
                     f" retrieval top-1 {v.get('top1', 0):.1%}")  # fmt: skip
    lines.append("  closed-loop success (per task):")
    names = [n for n in POLICIES if n in r["success"]]
    tasks = list(r["success"]["ntp"]["per_task"])
    lines.append("    " + f"{'task':28s} " + " ".join(f"{POLICIES[n]:>20s}" for n in names))
    for t in tasks:
        tag = " (B)" if t in r["task_set_b_video_only"] else ""
        lines.append(f"    {t + tag:28s} " + " ".join(f"{r['success'][n]['per_task'][t]:20.0%}" for n in names))
    for s, what in (("A", "set A (robot demos + video)"), ("B", "set B (video only, OOD)")):
        parts = []
        for name in names:
            v = r["success"][name]["sets"].get(s)
            if v:
                fails = v.get("failures")
                modes = (
                    ("; failed: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in fails.items())) if fails else ""
                )
                parts.append(f"{POLICIES[name]} {v['rate']:.0%} [{v['wilson95'][0]:.0%}, {v['wilson95'][1]:.0%}]"
                             f" ({v['successes']}/{v['episodes']}{modes})")  # fmt: skip
        if parts:
            lines.append(f"    {what}:")
            lines.extend(f"      {p}" for p in parts)
    lat = r["latency_ms"]
    rf = ", ".join(f"RF {k.split('_')[1]} Euler steps {v:.0f} ms" for k, v in lat.items() if k.startswith("rf_"))
    lines.append(f"  latency p50: NTP {lat['ntp_p50']:.0f} ms, {rf}; "
                 + ", ".join(f"{k} {v:.2f}x" for k, v in lat.items() if k.startswith("ratio")))  # fmt: skip
    lines.append(f"  plots: {', '.join(r['plots'].values())}")
    lines.append(f"  rollout video: {r['video']}")
    per = ", ".join(f"{k.split(' (')[0]} {v:.0f}" for k, v in r["seconds_per_step"].items())
    lines.append(f"  time: {r['seconds_total']:.0f} s of steps ({per})")
    return "\n".join(lines)
