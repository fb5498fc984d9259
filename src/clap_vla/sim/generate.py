"""Scripted demonstrations -> LeRobot v3 dataset (`clap data gen`).

Each episode is one scene seed: reset, let the expert act until the simulator reports success (or
the step budget ends), record per step the observation before the action, the state, the absolute
action row and the expert's phase as subtask text. Episodes are generated in worker processes and
written in a fixed order, so a run is reproducible: for every task the dataset holds the first
`episodes` successful seeds of the seed block.

The "human" domain renders the same kind of scenes with the robot drawn as a human would look (per
simulator: `HUMAN_DEFAULTS` of sim/metaworld.py and sim/buttons.py) and with camera and light changes;
it writes no action or state columns.
The true actions go to `EVAL_ONLY_true_actions.parquet` beside the dataset's meta/ folder, for
measuring pseudo-label accuracy; no loader in clap-vla reads it for training.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clap_vla.configs.sim import HUMAN_SEED_OFFSET, SEED_STRIDE, GenConfig
from clap_vla.errors import ClapError
from clap_vla.sim.base import IMAGES, STATE

EVAL_ONLY_FILE = "EVAL_ONLY_true_actions.parquet"
APPEARANCE_KEY = b"clap_vla_human_appearance"  # parquet metadata: the human-domain options, JSON
MAX_ATTEMPTS_FACTOR = 4  # give up on a task after episodes * 4 + 20 seeds


@dataclass
class Job:
    env: str
    task: str
    seed: int
    k: int  # position in the task's seed sequence
    env_kwargs: dict
    human: dict | None = None  # Appearance.sample_human kwargs for the human domain


@dataclass
class Demo:
    task: str
    seed: int
    k: int
    success: bool
    instruction: str = ""
    robot_type: str = ""
    arms: tuple[str, ...] = ()
    fps: int = 0
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (T, h, w, 3)
    state: np.ndarray | None = None  # (T, n*7)
    action: np.ndarray | None = None  # (T, n*7)
    subtasks: list[str] = field(default_factory=list)


def demo_seed(cfg_seed: int, k: int, human: bool) -> int:
    return cfg_seed * SEED_STRIDE + k + (HUMAN_SEED_OFFSET if human else 0)


def run_demo(job: Job) -> Demo:
    """One expert episode (runs in a worker process). An error is re-raised as a `JobError` naming
    the simulator, task and seed, with the original as its `__cause__`."""
    from clap_vla.sim.workers import job_error

    try:
        return _run_demo(job)
    except Exception as e:
        raise job_error(f"{job.env} task {job.task!r}, seed {job.seed}", e) from e


def _run_demo(job: Job) -> Demo:
    from clap_vla.sim.workers import cached_env

    env = cached_env(job.env, job.task, **job.env_kwargs)
    if job.human is not None:
        from clap_vla.sim.metaworld import human_appearance  # job.human holds every option (HUMAN_DEFAULTS)

        obs = env.reset(job.seed, appearance=human_appearance(job.seed, **job.human))
    else:
        obs = env.reset(job.seed)
    expert = env.expert()
    frames: dict[str, list[np.ndarray]] = {cam: [] for cam in obs[IMAGES]}
    states, actions, subtasks = [], [], []
    success = False
    for _ in range(env.max_steps):
        row = np.asarray(expert.infer(obs), dtype=np.float32)[0]
        for cam, img in obs[IMAGES].items():
            frames[cam].append(img)
        states.append(obs[STATE])
        actions.append(row)
        subtasks.append(expert.subtask)
        result = env.step(row)
        obs = result.observation
        if result.success:
            success = True
            break
        if result.done:
            break
    return Demo(
        task=job.task,
        seed=job.seed,
        k=job.k,
        success=success,
        instruction=env.instruction,
        robot_type=env.robot_type,
        arms=tuple(env.arms),
        fps=env.fps,
        images={cam: np.stack(v) for cam, v in frames.items()},
        state=np.stack(states).astype(np.float32),
        action=np.stack(actions).astype(np.float32),
        subtasks=subtasks,
    )


def generate(cfg: GenConfig) -> dict:
    """Write the dataset; return a summary (episodes, attempts and success rate per task)."""
    from tqdm import tqdm

    from clap_vla.data.lerobot_writer import LeRobotWriter
    from clap_vla.data.video import VideoEncoding
    from clap_vla.sim.registry import check_env_options, resolve_tasks
    from clap_vla.sim.workers import ordered_imap
    from clap_vla.types import ACTION_DIM_NAMES

    if Path(cfg.out).exists() and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} exists; pass --overwrite to replace it")
    tasks = resolve_tasks(cfg.env, cfg.tasks)
    human = cfg.domain == "human"
    action_free = human and not cfg.human_keep_actions  # what the dataset itself holds
    env_kwargs: dict = {"size": cfg.size}
    if cfg.cameras:
        env_kwargs["cameras"] = tuple(cfg.cameras)
    if cfg.max_steps is not None:
        env_kwargs["max_steps"] = cfg.max_steps
    human_kwargs = human_options(cfg) if human else None
    check_env_options(cfg.env, env_kwargs)  # before any worker starts
    accepted = {t: 0 for t in tasks}
    attempts = {t: 0 for t in tasks}
    max_attempts = cfg.episodes * MAX_ATTEMPTS_FACTOR + 20

    def jobs():
        # Seeds k = 0, 1, ... of each task until it has its episodes or max_attempts seeds are out.
        # The pool runs a few jobs ahead, so `accepted` lags: the consumer, which sees results in
        # order, skips the surplus and decides when a task has failed; the outcome does not depend
        # on the number of workers.
        for task in tasks:
            for k in range(max_attempts):
                if accepted[task] >= cfg.episodes:
                    break
                seed = demo_seed(cfg.seed, k, human)
                yield Job(cfg.env, task, seed, k, env_kwargs, human_kwargs)

    truth: list[dict] = []
    writer: LeRobotWriter | None = None
    bar = tqdm(total=len(tasks) * cfg.episodes, desc=f"{cfg.env} demos", unit="ep", disable=not cfg.progress)
    try:
        for demo in ordered_imap(run_demo, jobs(), cfg.workers):
            if accepted[demo.task] >= cfg.episodes:
                continue  # a look-ahead seed past what the task needed
            attempts[demo.task] += 1
            keep = demo.success or cfg.keep_failures
            if attempts[demo.task] >= max_attempts and accepted[demo.task] + keep < cfg.episodes:
                raise ClapError(
                    f"{cfg.env} task {demo.task!r}: the expert succeeded in only {accepted[demo.task] + keep} of "
                    f"{attempts[demo.task]} episodes; asked for {cfg.episodes} (use --keep-failures or fewer "
                    "--episodes)"
                )
            if not keep:
                continue
            if writer is None:
                names = [f"{arm}_{d}" for arm in demo.arms for d in ACTION_DIM_NAMES]
                writer = LeRobotWriter(
                    cfg.out,
                    fps=demo.fps,
                    robot_type="human" if action_free else demo.robot_type,
                    encoding=VideoEncoding(codec=cfg.codec),
                    overwrite=cfg.overwrite,
                    feature_names={} if action_free else {"action": names, "observation.state": names},
                ).__enter__()
            ep = writer.add_episode(
                task=demo.instruction,
                images=demo.images,
                action=None if action_free else demo.action,
                state=None if action_free else demo.state,
                subtasks=demo.subtasks,
            )
            if human:
                truth.append(
                    {
                        "episode_index": ep,
                        "task": demo.task,
                        "seed": demo.seed,
                        "action": demo.action,
                        "state": demo.state,
                    }
                )
            accepted[demo.task] += 1
            bar.update(1)
        if writer is None:
            raise ClapError(f"no episode was kept for tasks {tasks}")
        if human:
            writer.write_file(EVAL_ONLY_FILE, _truth_parquet(truth, human_kwargs))
        writer.__exit__(None, None, None)
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, e.__traceback__)
        raise
    finally:
        bar.close()
    return {
        "out": str(cfg.out),
        "episodes": {t: accepted[t] for t in tasks},
        "attempts": {t: attempts[t] for t in tasks},
        "expert_success_rate": {t: accepted[t] / max(attempts[t], 1) for t in tasks} if not cfg.keep_failures else None,
    }


def human_options(cfg: GenConfig) -> dict:
    """The human-domain options of a run: the simulator module's `HUMAN_DEFAULTS` with the flags the
    user set on top (the evaluation-only file stores this dict, so a replay renders the same scenes)."""
    from clap_vla.sim.registry import env_module

    given = {
        "camera_jitter": cfg.human_camera_jitter,
        "light_jitter": cfg.human_light_jitter,
        "table_tint": cfg.human_table_tint,
        "arm": cfg.human_arm,
    }
    return {**env_module(cfg.env).HUMAN_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}


def _truth_parquet(rows: list[dict], appearance: dict | None = None) -> bytes:
    """The evaluation-only table; `appearance` (the human-domain options the episodes were drawn
    with) goes into its metadata, so a replay can render the same scenes."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {k: [] for k in ("episode_index", "frame_index", "task", "seed", "action", "state")}
    for r in rows:
        n = len(r["action"])
        cols["episode_index"] += [r["episode_index"]] * n
        cols["frame_index"] += list(range(n))
        cols["task"] += [r["task"]] * n
        cols["seed"] += [r["seed"]] * n
        cols["action"] += list(r["action"])
        cols["state"] += list(r["state"])
    dim = len(cols["action"][0])
    table = pa.table(
        {
            "episode_index": pa.array(cols["episode_index"], pa.int64()),
            "frame_index": pa.array(cols["frame_index"], pa.int64()),
            "task": pa.array(cols["task"], pa.string()),
            "seed": pa.array(cols["seed"], pa.int64()),
            "action": pa.array([np.asarray(a, np.float32) for a in cols["action"]], pa.list_(pa.float32(), dim)),
            "state": pa.array([np.asarray(a, np.float32) for a in cols["state"]], pa.list_(pa.float32(), dim)),
        },
        metadata={
            b"clap_vla": b"evaluation only: true actions of action-free episodes; never train on these",
            APPEARANCE_KEY: json.dumps(appearance or {}, sort_keys=True).encode(),
        },
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def load_true_actions(root: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """episode_index -> {"action": (T, n*7), "state": (T, n*7), "seed": int, "task": str,
    "appearance": dict} for an action-free dataset generated by `clap data gen --domain human`.
    `appearance` holds the human-domain options (`human_appearance(seed, **appearance)` renders the
    episode's scene; {} for files written before they were stored). Evaluation only."""
    import json

    import pyarrow.parquet as pq

    path = Path(root) / EVAL_ONLY_FILE
    if not path.exists():
        raise ClapError(f"{path}: no evaluation-only true actions here (only `--domain human` datasets have them)")
    table = pq.read_table(path)
    appearance = json.loads((table.schema.metadata or {}).get(APPEARANCE_KEY, b"{}"))
    t = table.to_pydict()
    out: dict[int, dict] = {}
    for i, ep in enumerate(t["episode_index"]):
        d = out.setdefault(
            ep, {"action": [], "state": [], "seed": t["seed"][i], "task": t["task"][i], "appearance": appearance}
        )
        d["action"].append(t["action"][i])
        d["state"].append(t["state"][i])
    for d in out.values():
        d["action"] = np.asarray(d["action"], np.float32)
        d["state"] = np.asarray(d["state"], np.float32)
    return out
