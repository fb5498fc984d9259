"""`auto` precision picks bf16 only where the device multiplies bf16 natively; an explicit bf16 on
a device that emulates it is kept, with a warning; the training loop autocasts accordingly."""

from __future__ import annotations

import warnings

import pytest
import torch

from clap_vla.errors import ConfigError
from clap_vla.nn import precision


@pytest.fixture
def cpu_bf16(monkeypatch):
    def set_native(value: bool):
        monkeypatch.setattr(precision, "native_bf16", lambda kind: value)

    return set_native


def test_auto_follows_the_hardware(cpu_bf16):
    cpu_bf16(True)
    assert precision.resolve("auto", "cpu") == "bf16"
    cpu_bf16(False)
    assert precision.resolve("auto", "cpu") == "fp32"
    assert precision.resolve("fp32", "cpu") == "fp32"


def test_explicit_bf16_is_kept_but_warns_where_emulated(cpu_bf16):
    cpu_bf16(False)
    with pytest.warns(UserWarning, match="emulates"):
        assert precision.resolve("bf16", "cpu") == "bf16"
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve("bf16", "cpu") == "bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="fp16"):
        precision.resolve("fp16", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_the_loop_autocasts_only_when_auto_resolves_to_bf16(native, cpu_bf16, tmp_path):
    from clap_vla.train.loop import TrainConfig, fit

    cpu_bf16(native)
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 4)

        def compute_loss(self, batch):
            y = self.w(batch)
            seen.append(y.dtype)
            return y.float().pow(2).mean(), {}

    class Data:
        def batch(self, step, rank, world_size):
            return torch.ones(2, 4)

    cfg = TrainConfig(steps=1, batch_size=2, warmup_steps=0, precision="auto", progress=False, device="cpu")
    fit(Probe(), Data(), cfg, tmp_path / "run")
    assert seen == [torch.bfloat16 if native else torch.float32]
