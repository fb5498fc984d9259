"""Closed-loop evaluation (`clap eval rollout`): any policy with `infer(observation) -> chunk`.

Action chunking: the policy predicts a chunk of k rows; the harness executes the first
`replan_every` rows (or all, if the chunk is shorter), then observes and asks again. An episode ends
at the simulator's own success check or when its step budget is spent.

Scene seeds come from the evaluation block (>= EVAL_SEED_BASE), disjoint from every demonstration
seed. The success rate of a task gets a 95% Wilson score interval; the overall mean is the mean of
the per-task rates (every task weighs the same, as in Meta-World's MT10/MT50 reporting).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clap_vla.configs.sim import EVAL_SEED_BASE, SEED_STRIDE, RolloutConfig
from clap_vla.errors import ClapError, ConfigError
from clap_vla.sim.base import IMAGES, SimEnv, steps_without_render
from clap_vla.sim.policies import PolicySpec, episode_policy, is_policy_object, load_factory


@dataclass
class EpisodeOutcome:
    task: str
    seed: int
    success: bool
    steps: int  # env steps until success, or the whole budget
    trial: int | None = None  # the env's own trial index, when it has one (LIBERO: initial state seed % 50)
    fps: int = 20
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # first camera, when recorded
    info: dict | None = None  # the env's `episode_info(success)`, when it has one (buttons: failure mode)


def eval_seed(cfg_seed: int, k: int) -> int:
    return EVAL_SEED_BASE + cfg_seed * SEED_STRIDE + k


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_episode(env: SimEnv, policy: PolicySpec, seed: int, replan_every: int, record: bool = False) -> EpisodeOutcome:
    """One closed-loop episode from scene `seed`. `policy` is a factory `(env, seed) -> policy` (a
    class, or a callable without `infer`) or a policy object (an instance with `infer`), see
    `clap_vla.sim.policies`. Errors do not name the task and seed; the harness adds them."""
    obs = env.reset(seed)
    trial = getattr(env, "trial", None)
    policy = episode_policy(policy, env, seed)
    width = 7 * len(env.arms)
    frames: list[np.ndarray] = []
    camera = next(iter(obs[IMAGES]), None)
    if record and camera is not None:
        frames.append(obs[IMAGES][camera])
    steps = 0
    blind = steps_without_render(env)
    while True:
        chunk = np.asarray(policy.infer(obs), dtype=np.float32)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[1] != width or len(chunk) == 0:
            raise ClapError(
                f"the policy returned an action chunk of shape {chunk.shape}; expected (k>=1, {width}) "
                "(per arm x,y,z,roll,pitch,yaw,gripper)"
            )
        if not np.isfinite(chunk).all():
            raise ClapError("the policy returned non-finite actions")
        rows = chunk[:replan_every]
        for i, row in enumerate(rows):
            # Only the window's last observation is read (by the next infer), unless recording.
            result = env.step(row, render=False) if blind and not record and i < len(rows) - 1 else env.step(row)
            steps += 1
            obs = result.observation
            if record and camera is not None:
                frames.append(obs[IMAGES][camera])
            if result.success or result.done:
                task = getattr(env, "task", "")
                info = env.episode_info(bool(result.success)) if hasattr(env, "episode_info") else None
                return EpisodeOutcome(task, seed, bool(result.success), steps, trial, env.fps, frames, info)


@dataclass
class RolloutJob:
    env: str
    task: str
    seed: int
    policy: str | PolicySpec
    replan_every: int
    env_kwargs: dict
    record: bool


def _run_job(job: RolloutJob) -> EpisodeOutcome:
    """One episode (in a worker process); errors come back as a `JobError` naming simulator, task and seed."""
    from clap_vla.sim.workers import cached_env, job_error

    try:
        env = cached_env(job.env, job.task, **job.env_kwargs)
        spec = load_factory(job.policy) if isinstance(job.policy, str) else job.policy
        out = run_episode(env, spec, job.seed, job.replan_every, job.record)
    except Exception as e:
        raise job_error(f"{job.env} task {job.task!r}, seed {job.seed}", e) from e
    out.task = job.task
    return out


def _policy_name(spec: str | PolicySpec) -> str:
    if isinstance(spec, str):
        return spec
    if is_policy_object(spec):
        return f"{type(spec).__module__}.{type(spec).__qualname__} instance"
    return getattr(spec, "__qualname__", repr(spec))


def _check_picklable(spec: PolicySpec) -> None:
    import pickle

    try:
        pickle.dumps(spec)
    except Exception as e:
        raise ConfigError(
            f"policy {_policy_name(spec)!r} cannot be sent to worker processes ({type(e).__name__}: {e}); "
            "define the factory (or policy object) at module level and pass it as 'package.module:name' "
            "(--policy), or use workers=1"
        ) from e


def evaluate(cfg: RolloutConfig, policy: str | PolicySpec | None = None, seeds: list[int] | None = None) -> dict:
    """Run the evaluation; return the results dict (also written to cfg.out as JSON).

    `policy` overrides cfg.policy with a spec string, a factory or a policy object (see
    `clap_vla.sim.policies`; with workers > 1 it must pickle, i.e. be a module-level name); `seeds`
    overrides the evaluation seeds (e.g. to replay demonstrations).
    """
    from tqdm import tqdm

    from clap_vla.sim.registry import check_env_options, resolve_tasks
    from clap_vla.sim.workers import ordered_imap

    spec = policy if policy is not None else cfg.policy
    # Fail before starting any worker.
    if isinstance(spec, str):
        load_factory(spec)
        if spec == "expert" and cfg.env == "libero":
            raise ConfigError("LIBERO has no scripted experts: evaluate a trained policy (or random / noop)")
    elif cfg.workers > 1:
        _check_picklable(spec)
    tasks = resolve_tasks(cfg.env, cfg.tasks)
    seed_list = seeds if seeds is not None else [eval_seed(cfg.seed, k) for k in range(cfg.episodes)]
    env_kwargs: dict = {"size": cfg.size}
    if cfg.cameras:
        env_kwargs["cameras"] = tuple(cfg.cameras)
    if cfg.max_steps is not None:
        env_kwargs["max_steps"] = cfg.max_steps
    if cfg.action_mode is not None:
        env_kwargs["action_mode"] = cfg.action_mode
    check_env_options(cfg.env, env_kwargs)
    jobs = [
        RolloutJob(cfg.env, task, s, spec, cfg.replan_every, env_kwargs, record=k < cfg.video_episodes)
        for task in tasks
        for k, s in enumerate(seed_list)
    ]
    video_dir = (cfg.out.parent / f"{cfg.out.stem}_videos") if cfg.out else Path("outputs/rollout/videos")
    start = time.perf_counter()
    outcomes: list[EpisodeOutcome] = []
    for out in tqdm(ordered_imap(_run_job, jobs, cfg.workers), total=len(jobs), desc="rollout", unit="ep"):
        if out.frames:
            name = f"{out.task}_seed{out.seed}_{'ok' if out.success else 'fail'}.mp4"
            _save_video(video_dir / name, out.frames, out.fps)
            out.frames = []
        outcomes.append(out)
    elapsed = time.perf_counter() - start
    results = summarize(outcomes, tasks)
    results.update(
        {
            "env": cfg.env,
            "policy": _policy_name(spec),
            "action_mode": cfg.action_mode,
            "replan_every": cfg.replan_every,
            "workers": cfg.workers,
            "size": cfg.size,
            "seconds": elapsed,
            "episodes_per_minute": 60 * len(outcomes) / elapsed if elapsed > 0 else None,
            "env_steps_per_second": sum(o.steps for o in outcomes) / elapsed if elapsed > 0 else None,
        }
    )
    if cfg.out is not None:
        import json

        from clap_vla.data.atomic import atomic_write_text

        atomic_write_text(cfg.out, json.dumps(results, indent=2) + "\n")
    return results


def summarize(outcomes: list[EpisodeOutcome], tasks: list[str]) -> dict:
    per_task = {}
    for task in tasks:
        eps = [o for o in outcomes if o.task == task]
        wins = [o for o in eps if o.success]
        lo, hi = wilson_interval(len(wins), len(eps))
        per_task[task] = {
            "episodes": len(eps),
            "successes": len(wins),
            "success_rate": len(wins) / len(eps) if eps else 0.0,
            "wilson95": [lo, hi],
            "mean_steps_to_success": float(np.mean([o.steps for o in wins])) if wins else None,
            "outcomes": [
                {
                    k: v
                    for k, v in asdict(o).items()
                    if k not in ("frames", "fps") and not (k in ("trial", "info") and v is None)
                }
                for o in eps
            ],
        }
        modes = failure_counts(eps)
        if modes is not None:
            per_task[task]["failures"] = modes
    total = sum(v["episodes"] for v in per_task.values())
    wins = sum(v["successes"] for v in per_task.values())
    lo, hi = wilson_interval(wins, total)
    out = {
        "mean_success_rate": float(np.mean([v["success_rate"] for v in per_task.values()])),
        "pooled_success_rate": wins / total if total else 0.0,
        "pooled_wilson95": [lo, hi],
        "episodes": total,
        "tasks": per_task,
    }
    modes = failure_counts(outcomes)
    if modes is not None:
        out["failures"] = modes
    return out


def failure_counts(outcomes: list[EpisodeOutcome]) -> dict[str, int] | None:
    """Failed episodes per failure mode (Table III), for envs that classify them (`info["failure"]`);
    None when no outcome carries a classification."""
    if not any(o.info and "failure" in o.info for o in outcomes):
        return None
    counts: dict[str, int] = {}
    for o in outcomes:
        mode = (o.info or {}).get("failure")
        if mode is not None:
            counts[mode] = counts.get(mode, 0) + 1
    return counts


def _save_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    from clap_vla.data.video import VideoEncoding, VideoFileWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    h, w = frames[0].shape[:2]
    writer = VideoFileWriter(tmp, fps=fps, height=h, width=w, encoding=VideoEncoding(codec="h264"))
    writer.write(np.stack(frames))
    writer.close()
    tmp.replace(path)


def format_results(results: dict) -> str:
    lines = [f"{'task':32s} {'success':>8s}  {'95% Wilson':>15s}  {'steps':>6s}"]
    for task, v in results["tasks"].items():
        lo, hi = v["wilson95"]
        steps = f"{v['mean_steps_to_success']:.0f}" if v["mean_steps_to_success"] is not None else "-"
        lines.append(f"{task:32s} {v['successes']:>3d}/{v['episodes']:<4d} [{lo:5.1%}, {hi:5.1%}]  {steps:>6s}")
    lo, hi = results["pooled_wilson95"]
    lines.append(
        f"mean over tasks {results['mean_success_rate']:.1%} (pooled 95% Wilson [{lo:.1%}, {hi:.1%}]), "
        f"{results['episodes']} episodes, {results['episodes_per_minute']:.1f} episodes/min"
    )
    if "failures" in results:
        lines.append(
            "failed episodes by mode (Table III): " + ", ".join(f"{k} {v}" for k, v in results["failures"].items())
        )
    return "\n".join(lines)
