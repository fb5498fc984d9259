from __future__ import annotations

import faulthandler
import os
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


# A hung test (a deadlocked worker, a server that never answers) must fail the run within minutes
# with every thread's stack, not stall CI until its 90-minute limit. The slowest test takes ~2 min.
TEST_WATCHDOG_S = float(os.environ.get("CLAP_TEST_WATCHDOG_S", 900))
_REAL_STDERR = None  # the terminal's stderr: pytest redirects fd 2 into its capture file


def pytest_configure(config):
    global _REAL_STDERR
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        _REAL_STDERR = os.fdopen(os.dup(2), "w")
        return
    with capman.global_and_fixture_disabled():
        _REAL_STDERR = os.fdopen(os.dup(2), "w")


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(TEST_WATCHDOG_S, exit=True, file=_REAL_STDERR)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> tuple[Path, list[ToyEpisode]]:
    root = tmp_path_factory.mktemp("toy") / "ds"
    return root, write_toy(root)


def torchrun(args: list[str], cache: Path, nproc: int = 2):
    """`torchrun --standalone --nproc-per-node N -m clap_vla <args>` on gloo, one thread per rank."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLAP_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
           "clap_vla", *args]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def assert_same_weights(a_dir: Path, b_dir: Path, atol: float = 1e-5) -> None:
    """Two artifacts' weights agree: attention key biases within 3e-5 (their gradient is rounding
    noise that Adam scales up), the rest within `atol`; per-rank codebook usage counts skipped.
    `atol` 1e-5: a rank's half batch sums in another order than the whole batch, and Adam divides
    by the gradient's own scale, so fp32 rounding reaches ~1e-6 on CPUs with AVX-512 kernels
    (1.16e-6 on one of 2048 weights of a v_proj, measured); a real DDP error (a gradient averaged
    over the wrong count, a rank's samples dropped) moves weights by about the learning rate (>= 1e-3
    in the tiny presets) after the first step."""

    from clap_vla.train import checkpoint as ck

    a, b = ck.load_weights(a_dir / ck.MODEL), ck.load_weights(b_dir / ck.MODEL)
    assert a.keys() == b.keys()
    for k in a:
        if "usage_counts" not in k:
            tol = max(3e-5, atol) if k.endswith("qkv.bias") else atol
            diff = (b[k].float() - a[k].float()).abs()
            bad = diff > tol
            assert not bad.any(), (
                f"{k}: {int(bad.sum())} of {diff.numel()} elements differ by more than {tol:g} "
                f"(max {float(diff.max()):.3g}; largest magnitude there {float(a[k].float().abs()[bad].max()):.3g})"
            )


def train_losses(run: Path) -> list[float]:
    import json

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def assert_torchrun_matches_one_process(args, cache: Path, tmp_path: Path, torchrun_extra=()) -> None:
    """Train `clap <args(out)>` in this process and under `torchrun --nproc-per-node 2` (DDP on
    gloo, or what `torchrun_extra` selects, same global batch); the artifacts' weights and the
    logged losses must agree (`assert_same_weights`)."""
    from clap_vla.cli import main

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(args(single)) == 0
    torchrun([*args(ddp), *torchrun_extra], cache)
    assert_same_weights(single, ddp)
    assert train_losses(ddp) == pytest.approx(train_losses(single), rel=1e-5)


class Killed(Exception):
    """Raised by `run_killed_after_checkpoint`: the process 'dies' right after a checkpoint."""


def run_killed_after_checkpoint(monkeypatch, argv: list[str]) -> None:
    """Run `clap argv` so that it dies right after writing its first checkpoint (the resume tests)."""
    from clap_vla.cli import main
    from clap_vla.train import loop

    save = loop.ck.save_checkpoint

    def save_then_die(run_dir, model, optimizer, step, ema):
        save(run_dir, model, optimizer, step, ema)
        raise Killed

    monkeypatch.setattr(loop.ck, "save_checkpoint", save_then_die)
    try:
        with pytest.raises(Killed):
            main(argv)
    finally:
        monkeypatch.setattr(loop.ck, "save_checkpoint", save)
