"""The warmup-constant-cosine learning-rate schedule (optim.lr_factor, TrainConfig.decay_start,
TrainConfig.min_lr_ratio, TrainConfig.epochs): against a naive float64 reference of the paper's
schedule (§IV-C1 / Table IX), against the schedule as it was before decay_start existed (the
default must not change), and across a resume."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from clap_vla.data.chunks import ChunkSource, ChunkTensors
from clap_vla.errors import ConfigError
from clap_vla.models.act_vae import ACT_VAE_PRESETS, ActVAE
from clap_vla.train.loop import TrainConfig, fit, resolve_epochs
from clap_vla.train.optim import lr_factor


def reference_lr(step: int, peak: float, warmup: int, decay_start: int, total: int, floor: float) -> float:
    """The schedule of §IV-C1 written out in float64, one phase at a time (0-based step): linear
    warmup to the peak over `warmup` steps, the peak until `decay_start`, half a cosine from the
    peak to `floor` between `decay_start` and `total`, the floor after."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_start:
        return peak
    t = min(1.0, (step - decay_start) / (total - decay_start))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def legacy_lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """optim.lr_factor as it was before decay_start (commit fe5e596): warmup, then cosine right
    away. The default schedule must reproduce it exactly."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# Table IX, CLAP-NTP: 150,000 steps, peak 5e-5, min 5e-6, warmup 1,000, cosine decay after 100k.
PEAK, FLOOR, WARMUP, DECAY, TOTAL = 5e-5, 5e-6, 1000, 100_000, 150_000
BOUNDARY_STEPS = [0, 1, 2, 499, 998, 999, 1000, 1001, 1002, 50_000, 99_998, 99_999, 100_000, 100_001, 100_002,
                  112_500, 125_000, 137_500, 149_998, 149_999, 150_000, 150_001, 200_000]  # fmt: skip


@pytest.mark.parametrize("step", BOUNDARY_STEPS + list(range(0, TOTAL, 997)))
def test_warmup_constant_cosine_matches_a_float64_reference(step: int):
    got = PEAK * lr_factor(step, WARMUP, TOTAL, FLOOR / PEAK, decay_start=DECAY)
    assert got == pytest.approx(reference_lr(step, PEAK, WARMUP, DECAY, TOTAL, FLOOR), rel=1e-12, abs=0)


def test_phases_and_boundaries():
    f = lambda s: lr_factor(s, WARMUP, TOTAL, 0.1, decay_start=DECAY)  # noqa: E731
    assert f(0) == 1 / WARMUP and f(WARMUP - 1) == 1.0  # the last warmup step reaches the peak
    assert all(f(s) == 1.0 for s in range(WARMUP, DECAY + 1, 1111))  # constant, decay_start included
    assert f(DECAY) == 1.0 and f(DECAY + 1) < 1.0  # the decay starts at decay_start: cos(0) = 1
    assert f((DECAY + TOTAL) // 2) == pytest.approx(0.55, rel=1e-12)  # half way: (1 + 0.1) / 2
    assert f(TOTAL) == pytest.approx(0.1, rel=1e-12) and f(TOTAL + 10) == pytest.approx(0.1, rel=1e-12)
    decay = [f(s) for s in range(DECAY, TOTAL + 1, 250)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


@pytest.mark.parametrize(
    ("warmup", "total", "min_ratio"), [(10, 110, 0.1), (0, 50, 0.0), (200, 4000, 0.1), (5, 5, 0.1), (7, 3, 0.5)]
)
def test_the_default_reproduces_the_schedule_before_decay_start_exactly(warmup, total, min_ratio):
    for step in range(total + 3):
        assert lr_factor(step, warmup, total, min_ratio) == legacy_lr_factor(step, warmup, total, min_ratio)
        # decay_start equal to the warmup is the same schedule (the decay starts where warmup ends)
        assert lr_factor(step, warmup, total, min_ratio, decay_start=warmup) == legacy_lr_factor(
            step, warmup, total, min_ratio
        )
    # and the TrainConfig default is decay_start 0
    assert TrainConfig().decay_start == 0 and TrainConfig().epochs == 0


def test_min_ratio_one_is_no_decay():
    """Table IX, post-training stage 1: 1,000-step warmup, no decay."""
    f = [lr_factor(s, 1000, 30_000, 1.0) for s in range(0, 30_001, 50)]
    assert f[0] == 1 / 1000 and all(x == 1.0 for x in f[20:])


def test_train_config_checks_decay_start_and_epochs():
    TrainConfig(steps=150_000, warmup_steps=1000, decay_start=100_000)
    TrainConfig(steps=100, warmup_steps=10, decay_start=100)  # at the end: no decay
    with pytest.raises(ConfigError, match=r"decay_start .* \[1000, 500\], got 100000"):
        TrainConfig(steps=500, warmup_steps=1000, decay_start=100_000)
    with pytest.raises(ConfigError, match="decay_start"):
        TrainConfig(steps=500, warmup_steps=100, decay_start=50)  # inside the warmup
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=-1)


def test_epochs_resolve_to_steps():
    cfg = TrainConfig(epochs=3, batch_size=128, warmup_steps=10)
    assert resolve_epochs(cfg, 1000).steps == math.ceil(3 * 1000 / 128) == 24
    assert resolve_epochs(TrainConfig(epochs=0.5, batch_size=64, warmup_steps=0), 10).steps == 1
    assert resolve_epochs(TrainConfig(steps=7, warmup_steps=0), 10**6).steps == 7  # epochs 0: steps as given
    with pytest.raises(ConfigError, match="no samples"):
        resolve_epochs(cfg, 0)


def _chunks(n=32) -> ChunkTensors:
    cfg = ACT_VAE_PRESETS["act_vae_tiny"]
    g = torch.Generator().manual_seed(0)
    a = torch.tanh(torch.randn(n, cfg.horizon, 2, 7, generator=g))
    return ChunkTensors(
        a,
        torch.ones(n, cfg.horizon, dtype=torch.bool),
        torch.ones(n, 2, dtype=torch.bool),
        torch.zeros(n, dtype=torch.long),
    )


def _lrs(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if r["split"] == "train"}


def test_a_stopped_and_resumed_run_follows_the_same_schedule(tmp_path: Path):
    """The schedule is a pure function of the step: the lr a run logs at every step is the same
    whether it ran straight or stopped inside the constant phase and resumed."""
    kw = dict(steps=8, batch_size=8, lr=1e-3, warmup_steps=2, decay_start=5, min_lr_ratio=0.2, log_every=1,
              eval_every=100, checkpoint_every=100, progress=False, device="cpu", threads=1)  # fmt: skip
    src = ChunkSource(_chunks(), batch_size=8, seed=1)
    torch.manual_seed(0)
    fit(ActVAE(ACT_VAE_PRESETS["act_vae_tiny"]), src, TrainConfig(**kw), tmp_path / "a")
    torch.manual_seed(0)
    fit(ActVAE(ACT_VAE_PRESETS["act_vae_tiny"]), src, TrainConfig(**kw, stop_at=3), tmp_path / "b")
    fit(ActVAE(ACT_VAE_PRESETS["act_vae_tiny"]), src, TrainConfig(**kw), tmp_path / "b", resume=True)
    straight, resumed = _lrs(tmp_path / "a"), _lrs(tmp_path / "b")
    assert sorted(resumed) == list(range(1, 9))
    expected = {s + 1: 1e-3 * reference_lr(s, 1.0, 2, 5, 8, 0.2) for s in range(8)}  # logged after step s
    for done, lr in expected.items():
        assert straight[done] == pytest.approx(lr, rel=1e-12) and resumed[done] == straight[done], done
