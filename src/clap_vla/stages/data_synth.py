from __future__ import annotations

from pathlib import Path

from clap_vla.configs.data import SynthConfig


def write_toy_dataset(cfg: SynthConfig, progress: bool = True) -> Path:
    import numpy as np
    from tqdm import tqdm

    from clap_vla.data.lerobot_writer import LeRobotWriter
    from clap_vla.data.synthetic import make_toy_episode
    from clap_vla.data.video import VideoEncoding
    from clap_vla.types import ACTION_DIM_NAMES

    rng = np.random.default_rng(cfg.seed)
    names = [f"{arm}_{d}" for arm in cfg.arms for d in ACTION_DIM_NAMES]
    feature_names = {} if cfg.action_free else {"action": names, "observation.state": names}
    with LeRobotWriter(
        cfg.out,
        fps=cfg.fps,
        robot_type="human" if cfg.action_free else "toy_" + "_".join(cfg.arms),
        encoding=VideoEncoding(codec=cfg.codec),
        overwrite=cfg.overwrite,
        feature_names=feature_names,
    ) as w:
        for _ in tqdm(range(cfg.episodes), desc=f"writing {cfg.out}", unit="ep", disable=not progress):
            e = make_toy_episode(rng, length=cfg.length, arms=cfg.arms, size=cfg.size)
            if cfg.action_free:
                w.add_episode(task=e.task, images={"main": e.frames})
            else:
                w.add_episode(
                    task=e.task,
                    images={"main": e.frames},
                    action=e.action,
                    state=e.state,
                    subtasks=e.subtasks,
                )
    return Path(cfg.out)


def run(cfg: SynthConfig) -> int:
    print(f"wrote {write_toy_dataset(cfg)}")
    return 0
