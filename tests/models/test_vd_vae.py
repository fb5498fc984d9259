"""VD-VAE model: shapes, frozen Act-VAE, gradient flow, EMA teacher, env codebook, overfitting."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from clap_vla.errors import ConfigError
from clap_vla.models.act_vae import ACT_VAE_PRESETS, ActVAE
from clap_vla.models.vd_vae import VD_VAE_PRESETS, VDVAE, FactorizedBlock, normalize_features, token_keys
from clap_vla.train.optim import build_optimizer
from clap_vla.types import TransitionBatch

ACT = ACT_VAE_PRESETS["act_vae_tiny"]
P, C = 9, 12


def _model(seed=0, **kw) -> VDVAE:
    torch.manual_seed(seed)
    act = ActVAE(ACT)
    cfg = replace(
        VD_VAE_PRESETS["vd_vae_tiny"],
        feature_dim=C,
        num_patches=P,
        codes_per_arm=ACT.codes_per_arm,
        code_dim=ACT.code_dim,
        **kw,
    )
    return VDVAE(cfg, act)


def _batch(B=8, seed=0, robot_frac=0.5) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, 2, P, C, generator=g)
    n_robot = int(B * robot_frac)
    has = torch.arange(B) < n_robot
    arm = torch.ones(B, 2, dtype=torch.bool)
    arm[::2, 0] = False  # single-arm samples mixed with two-arm ones
    actions = torch.tanh(torch.randn(B, ACT.horizon, 2, 7, generator=g))
    actions = actions * (has[:, None, None, None] & arm[:, None, :, None])
    return TransitionBatch(
        features=f,
        features_aug=f + 0.1 * torch.randn(f.shape, generator=g),
        actions=actions,
        action_valid=torch.ones(B, ACT.horizon, dtype=torch.bool),
        arm_mask=arm,
        has_action=has,
        source=has.long(),
    )


def test_shapes_and_metrics():
    m = _model()
    b = _batch()
    loss, metrics = m.compute_loss(b)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"rec", "vq", "con", "reg", "token_acc", "logit_scale"} <= set(metrics)
    ids, dist, z = m.infer_codes(b.features, b.arm_mask)
    assert ids.shape == dist.shape == (8, 2, ACT.codes_per_arm)
    assert z.shape == (8, 2, ACT.codes_per_arm, ACT.code_dim)
    assert (ids[~b.arm_mask] == -1).all() and ((ids[b.arm_mask] >= 0) & (ids[b.arm_mask] < ACT.num_codes)).all()
    assert torch.isnan(dist[~b.arm_mask]).all() and (dist[b.arm_mask] >= 0).all()
    # The chosen id is the Act-VAE codebook's nearest code (float64 reference).
    cb = m.act_vae.quantizer.codebook.double()
    zz = z[b.arm_mask].double().reshape(-1, ACT.code_dim)
    ref = torch.cdist(zz, cb).argmin(-1)
    assert torch.equal(ids[b.arm_mask].reshape(-1), ref)


def test_codes_must_match_the_act_vae():
    act = ActVAE(ACT)
    with pytest.raises(ConfigError, match="codes_per_arm"):
        VDVAE(replace(VD_VAE_PRESETS["vd_vae_tiny"], codes_per_arm=ACT.codes_per_arm + 1, code_dim=ACT.code_dim), act)


def test_frozen_act_vae_and_teacher_get_no_gradient_and_stay_bit_identical():
    m = _model()
    m.train()
    assert not m.act_vae.training and not m.teacher.training
    act_before = {k: v.clone() for k, v in m.act_vae.state_dict().items()}
    opt = build_optimizer(m, 1e-2, 0.01, (("codebook", 0.5),))
    loss, _ = m.compute_loss(_batch())
    opt.zero_grad()
    loss.backward()
    for name, p in m.act_vae.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for p in m.teacher.parameters():
        assert not p.requires_grad and p.grad is None
    # Everything trainable receives gradient: encoder, decoder, env codebook, SigLIP scale/bias.
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    env_before = m.env_quantizer.codebook.detach().clone()
    opt.step()
    m.after_step(5)
    for k, v in m.act_vae.state_dict().items():
        assert torch.equal(v, act_before[k]), k  # bit-identical, buffers included
    assert not torch.equal(m.env_quantizer.codebook, env_before)  # the env codebook learns


def test_ema_teacher_update_math():
    m = _model(teacher_decay=0.9)
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(torch.randn_like(p))
    t0 = [p.detach().double().clone() for p in m.teacher.parameters()]
    s = [p.detach().double().clone() for p in m.encoder.parameters()]
    m.update_teacher()
    for a, b, t in zip(t0, s, m.teacher.parameters(), strict=True):
        torch.testing.assert_close(t.double(), 0.9 * a + 0.1 * b, rtol=1e-6, atol=1e-6)
    # Fresh model: the teacher starts as an exact copy of the student.
    m2 = _model()
    for a, b in zip(m2.teacher.parameters(), m2.encoder.parameters(), strict=True):
        assert torch.equal(a, b)


def test_video_positives_come_from_the_teacher_on_clean_features():
    m = _model()
    b = _batch(robot_frac=0.0)
    seen = {}
    orig = m.teacher.forward

    def spy(x):
        seen["x"] = x
        return orig(x)

    m.teacher.forward = spy
    m.compute_loss(b)
    from clap_vla.models.vd_vae import normalize_features

    torch.testing.assert_close(seen["x"], normalize_features(b.features))  # clean, not augmented


def test_temporal_attention_is_causal():
    torch.manual_seed(0)
    blk = FactorizedBlock(16, 2, 32).eval()
    x = torch.randn(2, 2, 5, 16)
    y = blk(x)
    x2 = x.clone()
    x2[:, 1] += torch.randn_like(x2[:, 1])  # change only the second frame
    y2 = blk(x2)
    torch.testing.assert_close(y[:, 0], y2[:, 0])  # the first frame cannot see the second
    assert not torch.allclose(y[:, 1], y2[:, 1])


@pytest.mark.parametrize("frames", [2, 3])
def test_frame_attention_matches_a_naive_float64_reference(frames):
    from clap_vla.models.vd_vae import causal_frame_attention
    from clap_vla.nn.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(16, 4).double()
    x = torch.randn(3, frames, 5, 16, dtype=torch.float64, requires_grad=True)
    y = causal_frame_attention(attn, x)
    # Naive: per (b, s, head, query frame), softmax over earlier-or-same frames, explicit loops.
    qkv = attn.qkv(x).view(3, frames, 5, 3, 4, 4)
    ref = torch.zeros(3, frames, 5, 4, 4, dtype=torch.float64)
    for b in range(3):
        for s in range(5):
            for n in range(4):
                for f in range(frames):
                    q = qkv[b, f, s, 0, n]
                    sc = torch.stack([q @ qkv[b, g, s, 1, n] / 2.0 for g in range(f + 1)])
                    w = torch.softmax(sc, 0)
                    ref[b, f, s, n] = sum(w[g] * qkv[b, g, s, 2, n] for g in range(f + 1))
    ref = attn.proj(ref.reshape(3, frames, 5, 16))
    torch.testing.assert_close(y, ref)
    g1 = torch.autograd.grad(y.square().sum(), x)[0]
    g2 = torch.autograd.grad(ref.square().sum(), x)[0]
    torch.testing.assert_close(g1, g2)


def test_token_keys_equal_for_equal_sequences():
    ids = torch.tensor([[1, 2, 3], [1, 2, 3], [3, 2, 1], [0, 0, 0]])
    k = token_keys(ids)
    assert k[0] == k[1] and len({int(v) for v in k[1:]}) == 3 and (k >= 0).all()


def test_overfits_one_batch():
    """A fixed batch of robot transitions: the student learns to retrieve each sample's Act-VAE codes
    and to reconstruct the next frame's features."""
    m = _model(seed=1)
    b = _batch(B=8, robot_frac=1.0, seed=3)
    b.features_aug = b.features
    opt = build_optimizer(m, 3e-3, 0.0, ())
    first = None
    m.train()
    for _ in range(150):
        loss, metrics = m.compute_loss(b)
        first = first if first is not None else {k: float(v) for k, v in metrics.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(1)
    last = {k: float(v) for k, v in metrics.items()}
    assert last["rec"] < 0.3 * first["rec"]
    assert last["con"] < 0.3 * first["con"]
    from clap_vla.eval.vd_vae import retrieval

    ids, _, z = m.infer_codes(b.features, b.arm_mask)
    true_ids, vec = m.act_vae.encode_vectors(b.actions, b.arm_mask)
    assert (ids == true_ids)[b.arm_mask].float().mean() > 0.9  # codes read off the features alone
    top1, _ = retrieval(z[b.arm_mask].flatten(1), vec[b.arm_mask].flatten(1), true_ids[b.arm_mask], 64)
    assert top1 == 1.0


def test_student_sees_augmented_frames_decoder_clean_f_t_target_clean_f_tH():
    from clap_vla import losses
    from clap_vla.models.vd_vae import normalize_features

    m = _model()
    b = _batch(robot_frac=0.5)
    seen = {}
    enc, dec = m.encoder.forward, m.decoder.forward

    def enc_spy(x):
        seen["student"] = x
        return enc(x)

    def dec_spy(f_t, qa, qe, arm):
        seen["f_t"] = f_t
        seen["pred"] = out = dec(f_t, qa, qe, arm)
        return out

    m.encoder.forward, m.decoder.forward = enc_spy, dec_spy
    _, metrics = m.compute_loss(b)
    torch.testing.assert_close(seen["student"], normalize_features(b.features_aug))
    torch.testing.assert_close(seen["f_t"], normalize_features(b.features)[:, 0])
    rec = losses.feature_mse(seen["pred"].float(), normalize_features(b.features)[:, 1])
    torch.testing.assert_close(metrics["rec"], rec.detach())


def _contrastive_positive(m, b) -> dict:
    """The positive (and its token keys) that `m.compute_loss(b)` hands to the SigLIP loss."""
    from clap_vla import losses

    captured = {}
    orig = losses.distributed_siglip_loss

    def spy(z, z_pos, *a, **kw):
        captured["pos"], captured["key"] = z_pos, kw.get("pos_key")
        return orig(z, z_pos, *a, **kw)

    losses.distributed_siglip_loss = spy
    try:
        m.compute_loss(b)
    finally:
        losses.distributed_siglip_loss = orig
    return captured


def test_robot_positives_are_the_act_vae_code_vectors_of_the_true_chunk():
    m = _model()
    b = _batch(robot_frac=1.0)
    captured = _contrastive_positive(m, b)
    ids, vec = m.act_vae.encode_vectors(b.actions, b.arm_mask)
    torch.testing.assert_close(captured["pos"], vec[b.arm_mask].flatten(1))
    torch.testing.assert_close(captured["key"], token_keys(ids[b.arm_mask]))
    assert not captured["pos"].requires_grad


def test_encoder_positive_is_the_act_vae_encoder_output_by_hand():
    """robot_positive="encoder" (vd_vae_paper): eq. 3's z_a+ = sg(E_act(a_gt)) for robot samples,
    the frozen Act-VAE encoder's output before quantisation, computed here one (sample, arm) chunk
    at a time in float64, in the order of the contrastive items (samples, then arms)."""
    import copy

    assert VD_VAE_PRESETS["vd_vae_paper"].robot_positive == "encoder"
    m = _model(robot_positive="encoder")
    b = _batch(robot_frac=1.0)
    captured = _contrastive_positive(m, b)
    act64 = copy.deepcopy(m.act_vae).double()
    with torch.no_grad():
        rows = [
            act64._encode_arms(b.actions[i, :, a][None].double()).reshape(-1)  # (Nq * Cd,)
            for i in range(b.actions.shape[0])
            for a in range(2)
            if b.arm_mask[i, a]
        ]
        quantised = m.act_vae.encode_vectors(b.actions, b.arm_mask)[1][b.arm_mask].flatten(1)
    torch.testing.assert_close(captured["pos"].double(), torch.stack(rows), atol=1e-5, rtol=1e-5)
    assert not captured["pos"].requires_grad
    assert not torch.allclose(captured["pos"], quantised)  # not the code vectors (robot_positive="quantized")


def test_feature_shape_mismatch_is_a_clear_error():
    m = _model()
    b = _batch()
    with pytest.raises(ValueError, match=r"9 patches, 12 channels"):
        m.infer_codes(torch.zeros(2, 2, 16, 12), b.arm_mask[:2])


def test_encoder_positive_option_uses_the_pre_quantisation_latents():
    m = _model(robot_positive="encoder")
    b = _batch(robot_frac=1.0)
    ids, z = m.act_vae.encode_vectors(b.actions, b.arm_mask, quantized=False)
    ids2, q = m.act_vae.encode_vectors(b.actions, b.arm_mask)
    assert torch.equal(ids, ids2) and not torch.allclose(z[b.arm_mask], q[b.arm_mask])
    # z_e's nearest code is the id (float64 reference)
    cb = m.act_vae.quantizer.codebook.double()
    ref = torch.cdist(z[b.arm_mask].double().reshape(-1, ACT.code_dim), cb).argmin(-1)
    assert torch.equal(ids[b.arm_mask].reshape(-1), ref)
    loss, _ = m.compute_loss(b)
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="robot_positive"):
        _model(robot_positive="raw")


def test_code_usage_term_reaches_the_student_only():
    b = _batch(B=8, robot_frac=0.5)
    off_loss, off = _model(w_usage=0.0).compute_loss(b)
    loss, metrics = _model(w_usage=1.0).compute_loss(b)
    assert off["usage"] == 0 and metrics["usage"] > 0
    torch.testing.assert_close(loss, off_loss + metrics["usage"])  # same seed: only the term differs
    # The term alone: the student encoder gets a gradient, the frozen Act-VAE none.
    m = _model(w_usage=1.0, w_rec=0.0, w_vq=0.0, w_con=0.0, w_reg=0.0)
    m.compute_loss(b)[0].backward()
    assert all(p.grad is None for p in m.act_vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    # Without action-free samples there is no video usage to match.
    assert _model(w_usage=1.0).compute_loss(_batch(B=8, robot_frac=1.0))[1]["usage"] == 0
    with pytest.raises(ConfigError, match="usage_tau"):
        _model(usage_tau=0.0)


def test_without_video_positives_action_free_samples_leave_the_contrastive_term():
    """Table VII's "w/o Pseudo Positive Label": the contrastive term sees the robot items only, the
    teacher is not run, and action-free samples still train the student through reconstruction."""
    from clap_vla import losses

    b = _batch(B=8, robot_frac=0.5)
    m = _model(video_positive="none")
    captured = {}

    def no_teacher(x):
        raise AssertionError("the teacher ran without video positives")

    m.teacher.forward = no_teacher
    orig = losses.distributed_siglip_loss

    def spy(z, z_pos, *a, **kw):
        captured["z"], captured["pos"] = z, z_pos
        return orig(z, z_pos, *a, **kw)

    losses.distributed_siglip_loss = spy
    try:
        loss, metrics = m.compute_loss(b)
    finally:
        losses.distributed_siglip_loss = orig
    robot_items = b.arm_mask & b.has_action[:, None]
    _, vec = m.act_vae.encode_vectors(b.actions, b.arm_mask)
    torch.testing.assert_close(captured["pos"], vec[robot_items].flatten(1))
    assert captured["z"].shape[0] == int(robot_items.sum())
    # The same robot items and the same seed: the term equals the default's over those items alone.
    ref = _model(video_positive="teacher")
    z_act, _ = ref.encoder(normalize_features(b.features_aug))
    keys = token_keys(m.act_vae.encode_vectors(b.actions, b.arm_mask)[0][robot_items])
    want = losses.siglip_loss(
        z_act[robot_items].flatten(1),
        vec[robot_items].flatten(1),
        ref.logit_scale,
        ref.logit_bias,
        pos_mask=torch.eye(len(keys), dtype=torch.bool) | losses.same_key_mask(keys, keys),
    )
    torch.testing.assert_close(metrics["con"], want.detach())

    # All action-free: no contrastive items, the term is 0 and the loss still trains the student.
    v = _batch(B=8, robot_frac=0.0)
    m = _model(video_positive="none")
    loss, metrics = m.compute_loss(v)
    assert metrics["con"] == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    assert m.logit_scale.grad is not None and m.logit_scale.grad == 0
    with pytest.raises(ConfigError, match="video_positive"):
        _model(video_positive="student")
