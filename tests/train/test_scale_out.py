"""Issue 9, scale-out: FSDP2 (`--train.strategy fsdp`) on two gloo ranks trains the same weights as
one process; sharded (DCP) checkpoints resume on another number of ranks and continue the same
schedule, and so do DDP checkpoints; post-training runs under torchrun and equals one process
(each sample's flow noise is seeded by its slot in the global batch); activation checkpointing
changes no value or gradient; the small stages refuse FSDP with a clear message."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import assert_same_weights, assert_torchrun_matches_one_process, torchrun, train_losses

from clap_vla.cli import main
from clap_vla.train import checkpoint as ck

pytest.importorskip("transformers")

FSDP = ("--train.strategy", "fsdp")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.train.test_ntp_stage import setup as ntp_setup

    return ntp_setup.__wrapped__(tmp_path_factory)


def _ntp(root, out, steps=4, *extra):
    from tests.train.test_ntp_stage import _args

    return [*_args(root, out, steps), *extra]


def test_fsdp_two_ranks_equal_one_process(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    assert_torchrun_matches_one_process(lambda out: _ntp(setup, out, 3), setup / "cache", tmp_path, FSDP)
    # The DCP checkpoint holds both ranks' shards and RNG states; the artifact is whole.
    ckpt = tmp_path / "ddp" / ck.CHECKPOINT
    state = json.loads((ckpt / ck.STATE).read_text())
    assert state == {"step": 3, "format": "dcp", "world_size": 2}
    assert (ckpt / ".metadata").exists() and (ckpt / "rng_rank1.json").exists()
    assert not (ckpt / ck.MODEL).exists()


def test_fsdp_checkpoint_resumes_on_another_world_size(setup, tmp_path, monkeypatch):
    """Two ranks stop at step 2 (--train.stop-at); one process resumes to step 4 on the same schedule
    and ends where one process running 4 steps straight ends. Then the other way round: one process
    stops at 2, two ranks finish."""
    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    cache = setup / "cache"
    straight, two_one, one_two = tmp_path / "straight", tmp_path / "two_one", tmp_path / "one_two"
    assert main(_ntp(setup, straight, 4, "--train.log-every", "1")) == 0

    torchrun(_ntp(setup, two_one, 4, *FSDP, "--train.stop-at", "2"), cache)
    assert json.loads((two_one / ck.CHECKPOINT / ck.STATE).read_text())["step"] == 2
    assert json.loads((two_one / ck.META).read_text())["step"] == 2
    assert main([*_ntp(setup, two_one, 4, *FSDP), "--resume"]) == 0
    # Two ranks sum gradients in another order than one process: weights agree to rounding, which on
    # an Intel Xeon left one of 8192 entries 1.0002e-6 apart after 4 Adam steps (atol 1e-6 failed).
    assert_same_weights(straight, two_one, atol=3e-6)

    assert main(_ntp(setup, one_two, 4, *FSDP, "--train.stop-at", "2", "--train.log-every", "1")) == 0
    torchrun([*_ntp(setup, one_two, 4, *FSDP, "--train.log-every", "1"), "--resume"], cache)
    assert_same_weights(straight, one_two, atol=3e-6)
    # Per-step losses: steps 1-2 logged by the first process, 3-4 by the two ranks after resuming.
    assert len(train_losses(straight)) == 4
    assert train_losses(one_two) == pytest.approx(train_losses(straight), rel=1e-5)


def test_ddp_resumes_under_torchrun(setup, tmp_path, monkeypatch):
    """A DDP checkpoint (whole tensors) written by one process resumes under torchrun on two ranks
    and ends where one process running 4 steps straight ends."""
    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_ntp(setup, straight, 4, "--train.log-every", "1")) == 0
    assert main(_ntp(setup, resumed, 4, "--train.stop-at", "2", "--train.log-every", "1")) == 0
    assert json.loads((resumed / ck.CHECKPOINT / ck.STATE).read_text())["step"] == 2
    torchrun([*_ntp(setup, resumed, 4, "--train.log-every", "1"), "--resume"], setup / "cache")
    assert_same_weights(straight, resumed)
    assert train_losses(resumed) == pytest.approx(train_losses(straight), rel=1e-5)


def test_fsdp_refuses_a_ddp_checkpoint(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    run = tmp_path / "run"
    assert main(_ntp(setup, run, 4, "--train.stop-at", "2")) == 0
    before = (run / ck.CHECKPOINT / ck.MODEL).read_bytes()
    assert main([*_ntp(setup, run, 4, *FSDP), "--resume"]) != 0
    assert "train.strategy: 'ddp' -> 'fsdp'" in capsys.readouterr().err
    assert (run / ck.CHECKPOINT / ck.MODEL).read_bytes() == before  # nothing written over


def test_post_training_under_torchrun_equals_one_process(setup, tmp_path, monkeypatch):
    """DDP (and FSDP with activation checkpointing, the frozen reference sharded too) on two ranks:
    the same RF head and VLM as one process, because every sample's flow time and noise come from
    its global slot."""
    from tests.train.test_post_stage import _args as post_args

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    art = tmp_path / "ntp"
    assert main(_ntp(setup, art, 2)) == 0

    def args(out):
        return [*post_args(setup, art, out, "--no-adapt-stage"), "--train.steps", "3"]

    assert_torchrun_matches_one_process(args, setup / "cache", tmp_path / "ddp")
    # FSDP with activation checkpointing of every VLM layer and DiT block: still the same numbers.
    assert_torchrun_matches_one_process(args, setup / "cache", tmp_path / "fsdp",
                                        (*FSDP, "--train.activation-checkpointing"))  # fmt: skip


def test_seeded_noise_depends_on_the_seed_alone():
    from clap_vla.models.rf_head import RFHeadConfig, seeded_noise_and_time

    cfg = RFHeadConfig()
    n4, t4 = seeded_noise_and_time(torch.arange(4), (3, 2), cfg)
    n2, t2 = seeded_noise_and_time(torch.tensor([1, 3]), (3, 2), cfg)
    assert torch.equal(n4[[1, 3]], n2) and torch.equal(t4[[1, 3]], t2)
    assert not torch.equal(n4[0], n4[1]) and ((t4 > 0) & (t4 <= 1)).all()
    before = torch.get_rng_state()
    seeded_noise_and_time(torch.arange(2), (3,), cfg)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched


def test_activation_checkpointing_changes_no_value_or_gradient(setup, monkeypatch):
    import copy

    import numpy as np

    from clap_vla.data.ntp import TextTokens
    from clap_vla.models.ntp_policy import NTPConfig, NTPModel
    from clap_vla.nn.vlm import VLMConfig
    from clap_vla.train.fsdp import apply_activation_checkpointing
    from clap_vla.types import NTPBatch

    torch.manual_seed(0)
    model = NTPModel(NTPConfig(vlm=VLMConfig(name="tiny", visual_dim=12, num_action_tokens=16), num_codes=16))
    ckpt = copy.deepcopy(model)
    blocks = ckpt.transformer_blocks()
    assert len(blocks) == 2  # the tiny Llama's two decoder layers
    apply_activation_checkpointing(blocks)
    codes = np.array([[-1, -1, -1], [1, 2, 3]])  # right arm only
    ids, labels = TextTokens(model.tokenizer, model.act_offset).sample("toy", "pick the cube", "reach", codes)
    batch = NTPBatch(visual=torch.randn(1, 1, 4, 12), input_ids=torch.tensor([ids]),
                     attention_mask=torch.ones(1, len(ids), dtype=torch.long), labels=torch.tensor([labels]),
                     source=torch.zeros(1, dtype=torch.long))  # fmt: skip
    # A decoder layer's attention writes the KV cache, so its MLP is what gets recomputed.
    calls, attn = [], []
    mlp, layer = blocks[0].mlp, blocks[0].self_attn
    inner_mlp, inner_attn = mlp.forward, layer.forward
    mlp.forward = lambda *a, **k: calls.append(1) or inner_mlp(*a, **k)
    layer.forward = lambda *a, **k: attn.append(1) or inner_attn(*a, **k)
    la, _ = model.compute_loss(batch)
    lb, _ = ckpt.compute_loss(batch)
    assert len(calls) == 1
    la.backward()
    lb.backward()
    assert len(calls) == 2 and len(attn) == 1  # the MLP ran again in backward, the attention did not
    assert la.item() == lb.item()
    grads = dict(ckpt.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=0, atol=1e-7, msg=name)


def test_small_stages_refuse_fsdp_with_a_clear_message(tmp_path, capsys):
    from tests.conftest import write_toy

    write_toy(tmp_path / "robot", n=10, length=12, size=16)
    assert main(["train", "act-vae", "--config", "act_vae_tiny", "--data", str(tmp_path / "robot"),
                 "--out", str(tmp_path / "av"), "--train.steps", "2", "--train.no-progress", *FSDP]) != 0  # fmt: skip
    assert "Act-VAE and the VD-VAE are small enough" in capsys.readouterr().err
    assert not (tmp_path / "av" / "model.safetensors").exists()
