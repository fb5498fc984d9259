from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clap_vla.data.lerobot_writer import LeRobotWriter
from clap_vla.data.synthetic import ToyEpisode, make_toy_episode


def write_toy(
    root: Path,
    n: int = 3,
    length: int = 20,
    size: int = 64,
    arms=("right",),
    seed: int = 0,
    codec: str = "av1",
    **writer_kw,
) -> list[ToyEpisode]:
    """Write `n` toy episodes (varying lengths) and return them as generated (the ground truth)."""
    from clap_vla.data.video import VideoEncoding

    rng = np.random.default_rng(seed)
    eps = [make_toy_episode(rng, length=length + 3 * i, arms=arms, size=size) for i in range(n)]
    with LeRobotWriter(root, fps=10, robot_type="toy", encoding=VideoEncoding(codec=codec), **writer_kw) as w:
        for e in eps:
            w.add_episode(task=e.task, images={"main": e.frames}, action=e.action, state=e.state, subtasks=e.subtasks)
    return eps


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> tuple[Path, list[ToyEpisode]]:
    root = tmp_path_factory.mktemp("toy") / "ds"
    return root, write_toy(root)
