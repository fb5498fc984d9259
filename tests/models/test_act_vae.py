"""Act-VAE: shapes, gradient flow, arm masking, bad input, overfitting, token round trip, rate/PSNR."""

from __future__ import annotations

import math

import pytest
import torch

from clap_vla.models.act_vae import ACT_VAE_PRESETS, ActVAE, ActVAEConfig, psnr, rate
from clap_vla.types import ChunkBatch

CFG = ACT_VAE_PRESETS["act_vae_tiny"]  # H 8, Nq 4, K 64


def _batch(B=6, seed=0, single_arm_rows=(0, 1)) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, CFG.horizon)[None, :, None, None]
    a = torch.tanh(torch.randn(B, 1, 2, 7, generator=g) * t * 2 + 0.1 * torch.randn(B, 1, 2, 7, generator=g))
    mask = torch.ones(B, 2, dtype=torch.bool)
    for r in single_arm_rows:
        mask[r, 0] = False  # single-arm robots fill the right slot
    a = a * mask[:, None, :, None]
    valid = torch.ones(B, CFG.horizon, dtype=torch.bool)
    valid[-1, -3:] = False
    return ChunkBatch(actions=a.float(), action_valid=valid, arm_mask=mask)


def test_encode_decode_shapes_and_absent_arms():
    torch.manual_seed(0)
    m = ActVAE(CFG).eval()
    b = _batch()
    codes = m.encode(b.actions, b.arm_mask)
    assert codes.shape == (6, 2, CFG.codes_per_arm) and codes.dtype == torch.long
    assert (codes[0, 0] == -1).all() and (codes[2:] >= 0).all() and (codes < CFG.num_codes).all()
    out = m.decode(codes)
    assert out.shape == b.actions.shape
    assert (out[0, :, 0] == 0).all()  # an absent arm decodes to zeros
    with pytest.raises(ValueError, match="mix -1"):
        bad = codes.clone()
        bad[3, 1, 0] = -1
        m.decode(bad)


def test_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = ActVAE(CFG)
    loss, metrics = m.compute_loss(_batch())
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert {"recon_mse", "psnr", "codebook_loss", "commitment_loss", "perplexity", "usage"} <= set(metrics)


def test_straight_through_gradient_reaches_the_encoder_through_the_reconstruction():
    torch.manual_seed(0)
    m = ActVAE(CFG)
    b = _batch()
    recon, _, target = m(b.actions, b.arm_mask)
    ((recon - target) ** 2).mean().backward()  # reconstruction only, no VQ terms
    assert m.step_in.weight.grad.abs().sum() > 0 and m.register_tokens.grad.abs().sum() > 0
    assert m.quantizer.codebook.grad is None or m.quantizer.codebook.grad.abs().sum() == 0


def test_absent_arms_do_not_count():
    torch.manual_seed(0)
    m = ActVAE(CFG)
    b = _batch()
    loss1, _ = m.compute_loss(b)
    changed = b.actions.clone()
    changed[0, :, 0] = 5.0  # an absent arm's values are never read
    loss2, _ = m.compute_loss(ChunkBatch(changed, b.action_valid, b.arm_mask))
    assert torch.allclose(loss1, loss2)


def test_bad_input_raises_clear_errors():
    m = ActVAE(CFG)
    b = _batch()
    with pytest.raises(ValueError, match=r"shape \(B, 8, 2, 7\)"):
        m.encode(b.actions[:, :, :, :6], b.arm_mask)
    nan = b.actions.clone()
    nan[3, 2, 1, 4] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        m.compute_loss(ChunkBatch(nan, b.action_valid, b.arm_mask))
    with pytest.raises(ValueError, match="arm_mask"):
        m.encode(b.actions, b.arm_mask.float())
    with pytest.raises(Exception, match="heads"):
        ActVAEConfig(width=30, heads=4)


def _overfit(steps=1000, seed=0):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on 2 cores: one thread is faster
    torch.manual_seed(seed)
    cfg = ActVAEConfig(**{**CFG.__dict__, "restart_every": 25})
    m = ActVAE(cfg)
    b = _batch(B=8, single_arm_rows=(0,))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(steps):
        loss, metrics = m.compute_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(step)
    torch.set_num_threads(threads)
    return m.eval(), b, metrics


@pytest.fixture(scope="module")
def overfit():
    return _overfit()


def test_overfits_one_batch_above_40_db(overfit):
    m, b, _ = overfit
    with torch.no_grad():
        recon = m.decode(m.encode(b.actions, b.arm_mask))
    valid = b.action_valid[:, :, None] & b.arm_mask[:, None, :]
    mse = ((recon - b.actions) ** 2)[valid].mean()
    assert psnr(mse) > 40, f"PSNR {float(psnr(mse)):.1f} dB"


def test_encode_decode_encode_is_stable_on_a_trained_model(overfit):
    m, b, _ = overfit
    full = b.action_valid.all(1)  # padded steps are never trained to reconstruct
    codes = m.encode(b.actions, b.arm_mask)[full]
    mask = b.arm_mask[full]
    recon = m.decode(codes)
    again = m.encode(recon, mask)
    present = mask[:, :, None].expand_as(codes)
    assert (again == codes)[present].float().mean() >= 0.75
    # Restarted codes can sit next to each other, so an id may flip to a near-twin; what must hold
    # is that decode(encode(.)) is (nearly) idempotent on the decoder's outputs.
    err = ((m.decode(again) - recon) ** 2).permute(0, 2, 1, 3)[mask].mean()
    assert psnr(err) > 35


def test_psnr_and_rate_match_the_papers_table_v():
    # Table V, Nq = 16, K = 256: MSE 0.0004 -> PSNR 40.0 dB, r = 0.086 (eq. 8 with Na = 32, Da = 7).
    assert float(psnr(0.0004)) == pytest.approx(20 * math.log10(2 / math.sqrt(0.0004)))
    assert float(psnr(0.0004)) == pytest.approx(40.0, abs=0.01)
    assert rate(16, 256, 32, 7, 0.0004) == pytest.approx(0.086, abs=5e-4)
    assert rate(8, 256, 32, 7, 0.0041) == pytest.approx(0.058, abs=5e-4)
