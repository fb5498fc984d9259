"""CLAP-RF: flow loss and Euler sampler against exact answers, Knowledge Matching KL against a
float64 reference (direction, zero for identical policies, gradient only into the policy), both
context modes training the head, the frozen reference staying bit-identical, KI detaching the
context, and the prefix computed once per chunk at inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clap_vla.losses import flow_matching_loss, knowledge_matching_kl
from clap_vla.models.clap_policy import ClapConfig, ClapModel, prefix_lengths, reference_copy
from clap_vla.models.rf_head import RFHeadConfig, euler_sample, sample_time, select_layers
from clap_vla.train.optim import build_optimizer

pytest.importorskip("transformers")


def test_flow_loss_is_zero_for_the_exact_velocity_and_masks():
    g = torch.Generator().manual_seed(0)
    a, eps = torch.randn(3, 5, 2, 7, generator=g), torch.randn(3, 5, 2, 7, generator=g)
    assert flow_matching_loss(eps - a, eps, a).item() == 0.0
    v = eps - a + 1.0  # off by 1 everywhere -> loss 1
    assert abs(flow_matching_loss(v, eps, a).item() - 1.0) < 1e-6
    mask = torch.zeros(3, 5, 2, dtype=torch.bool)
    mask[0, :2, 1] = True
    v2 = (eps - a).clone()
    v2[~mask] += 100.0  # errors outside the mask are ignored
    assert flow_matching_loss(v2, eps, a, mask).item() == 0.0


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_euler_integrates_a_linear_flow_exactly(steps):
    g = torch.Generator().manual_seed(1)
    a, eps = torch.randn(4, 8, 14, generator=g), torch.randn(4, 8, 14, generator=g)
    out = euler_sample(lambda x, t: eps - a, eps, steps)  # x_t = t eps + (1 - t) a has velocity eps - a
    torch.testing.assert_close(out, a, atol=1e-5, rtol=0)
    # A time-dependent field v = x (x_t = x_1 e^{t-1}... integrated by Euler) differs from exact:
    approx = euler_sample(lambda x, t: x, torch.ones(1, 1), steps)
    assert abs(approx.item() - (1 - 1 / steps) ** steps) < 1e-6


def test_time_sampler_is_pi0s_beta():
    cfg = RFHeadConfig()
    t = sample_time(200_000, cfg, "cpu", torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1): mean 0.6, so 0.999 * 0.6 + 0.001
    assert abs(t.mean().item() - (0.999 * 0.6 + 0.001)) < 3e-3


def test_kl_matches_float64_reference_direction_and_zero():
    g = torch.Generator().manual_seed(2)
    p, q = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)
    lp, lq = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    ref_pq = (lp.exp() * (lp - lq)).sum(-1).mean()
    ref_qp = (lq.exp() * (lq - lp)).sum(-1).mean()
    assert abs(knowledge_matching_kl(p, q).item() - ref_pq.item()) < 1e-6
    assert abs(knowledge_matching_kl(p, q, "ref_policy").item() - ref_qp.item()) < 1e-6
    assert abs(knowledge_matching_kl(p, q, reduction="sum").item() - 6 * ref_pq.item()) < 1e-5  # eq. 7's sum
    assert abs(ref_pq.item() - ref_qp.item()) > 1e-3  # the two directions really differ
    assert knowledge_matching_kl(p, p).abs().item() < 1e-6
    assert knowledge_matching_kl(p, q).item() >= 0
    pg, qg = p.clone().requires_grad_(), q.clone().requires_grad_()
    knowledge_matching_kl(pg, qg).backward()
    assert pg.grad.abs().sum() > 0 and qg.grad is None  # only the policy branch gets gradient


def test_layer_selection_by_level():
    cfg = RFHeadConfig
    lm36 = select_layers(cfg(levels="low+mid"), 36)  # thirds: 0..23, thinned to 16 blocks
    assert len(lm36) == 16 and lm36[0] == 0 and lm36[-1] == 23
    assert select_layers(cfg(levels="low"), 6) == [0, 1]
    assert select_layers(cfg(levels="mid"), 6) == [2, 3]
    assert select_layers(cfg(levels="high"), 6) == [4, 5]
    assert select_layers(cfg(levels="low+mid"), 4) == [0, 1, 2]
    assert select_layers(cfg(layers=(3, 1)), 4) == [3, 1]
    full = select_layers(cfg(levels="all", max_depth=4), 36)
    assert len(full) == 4 and full[0] == 0 and full[-1] == 35


# -- the model ---------------------------------------------------------------------------------------


def models(context: str, prefix: str = "causal", **kw):
    from tests.models.test_ntp_policy import batch, tiny

    torch.manual_seed(0)
    pol = tiny(seed=0, prefix=prefix)
    b, s = batch(pol, B=4)
    H = 6
    g = torch.Generator().manual_seed(3)
    b.actions = torch.randn(4, H, 2, 7, generator=g).clamp(-1, 1)
    b.action_valid = torch.ones(4, H, dtype=torch.bool)
    b.action_valid[0, -2:] = False
    b.arm_mask = torch.tensor([[False, True]] * 4)
    cfg = ClapConfig(rf=RFHeadConfig(width=32, heads=2, context=context, levels="all"), **kw)
    return ClapModel(cfg, pol, H, reference=reference_copy(pol)), b, s


@pytest.mark.parametrize("prefix", ["causal", "bidirectional"])
@pytest.mark.parametrize("context", ["kv", "hidden"])
def test_both_context_modes_train_the_head_and_km_keeps_the_reference_frozen(context, prefix):
    m, b, _ = models(context, prefix)
    ref_before = {k: v.clone() for k, v in m.reference.state_dict().items()}
    assert all(not p.requires_grad for p in m.reference.parameters())
    assert not any(k.startswith("reference.") for k in m.state_dict())  # the parent artifact, not saved
    opt = build_optimizer(m, 1e-3, 0.01)
    loss, metrics = m.compute_loss(b)
    assert torch.isfinite(loss) and {"flow", "kl", "action_acc"} <= set(metrics)
    assert abs(metrics["kl"].item()) < 1e-5  # policy == reference before the first step
    for _ in range(2):  # AdaLN-Zero: the output layers start at zero, so step 0 only trains them
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss, metrics = m.compute_loss(b)
    opt.zero_grad()
    loss.backward()
    for blk in m.head.blocks:
        assert blk.cross.q.weight.grad.abs().sum() > 0 and blk.ada.weight.grad.abs().sum() > 0
    assert m.head.out.weight.grad.abs().sum() > 0
    # The flow loss reaches the VLM through the context (fine-tuning + KM, not insulated).
    assert m.policy.vlm.lm.model.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0
    for k, v in m.reference.state_dict().items():
        assert torch.equal(v, ref_before[k]), k
    assert metrics["kl"].item() > 0  # the policy moved away from the reference


def _km_loop(m, b, which: str, direction: str) -> tuple[float, int]:
    """Eq. 7 by hand in float64: per sample, per position j whose next token j+1 is a target token
    (every one, or the action tokens), KL over the vocabulary; mean over the pooled positions."""
    pol, ref = m.policy, m.reference
    with torch.no_grad():
        logits = []
        for model in (pol, ref):
            out = model.vlm(b.visual, b.input_ids, model.full_mask(b))
            logits.append(model.vlm.logits(out.hidden[:, out.text_start :]).double())  # (B, T, V)
    kls = []
    for i in range(b.input_ids.shape[0]):
        for j in range(b.input_ids.shape[1] - 1):
            y = int(b.labels[i, j + 1])
            if y == -100 or (which == "action" and y < pol.act_offset):
                continue
            lp, lq = torch.log_softmax(logits[0][i, j], -1), torch.log_softmax(logits[1][i, j], -1)
            if direction == "ref_policy":
                lp, lq = lq, lp
            kls.append(float((lp.exp() * (lp - lq)).sum()))
    return float(np.mean(kls)), len(kls)


@pytest.mark.parametrize("direction", ["policy_ref", "ref_policy"])
def test_km_reads_every_target_token_as_a_float64_loop_does(direction):
    m, b, _ = models("hidden", kl_direction=direction)
    with torch.no_grad():  # move the policy off the reference, everywhere
        g = torch.Generator().manual_seed(5)
        for p in m.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    kl = {}
    for which in ("target", "action"):
        m.cfg = type(m.cfg)(rf=m.cfg.rf, kl_direction=direction, km_tokens=which)
        _, metrics = m.compute_loss(b)
        want, n = _km_loop(m, b, which, direction)
        assert abs(metrics["kl"].item() - want) < 1e-5 * max(1.0, want), (which, metrics["kl"].item(), want)
        kl[which] = (metrics["kl"].item(), n)
    # Subtask text is part of the target (eq. 7's L_y), so the two modes read different positions.
    assert kl["target"][1] > kl["action"][1] and abs(kl["target"][0] - kl["action"][0]) > 1e-4
    # Prompt and padding positions contribute nothing: over every position the mean differs...
    with torch.no_grad():
        outs = [mm.vlm(b.visual, b.input_ids, mm.full_mask(b)) for mm in (m.policy, m.reference)]
        lp, lq = (torch.log_softmax(mm.vlm.logits(o.hidden[:, o.text_start :]).double(), -1)
                  for mm, o in zip((m.policy, m.reference), outs, strict=True))  # fmt: skip
        if direction == "ref_policy":
            lp, lq = lq, lp
        everywhere = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    assert abs(everywhere - kl["target"][0]) > 1e-4
    # ...and changing the padding's token ids leaves KM unchanged.
    pad = b.attention_mask == 0
    assert pad.any()
    b.input_ids[pad] = (b.input_ids[pad] + 3) % m.policy.act_offset
    _, metrics = m.compute_loss(b)
    assert abs(metrics["kl"].item() - kl["action"][0]) < 1e-6


def test_km_tokens_must_be_known():
    with pytest.raises(Exception, match="km_tokens"):
        ClapConfig(km_tokens="subtask")


def test_knowledge_insulation_detaches_the_context():
    m, b, _ = models("kv", km_weight=0.0, ki=True)
    opt = build_optimizer(m, 1e-3, 0.0)
    for _ in range(2):  # past the zero-initialised output layer and AdaLN gates
        m.zero_grad()
        loss, metrics = m.compute_loss(b)
        loss.backward()
        opt.step()
    assert "ce_action" in metrics and "kl" not in metrics
    m.zero_grad()
    m.cfg = type(m.cfg)(rf=m.cfg.rf, km_weight=0.0, ki=True, token_weight=0.0)  # flow loss alone
    loss, _ = m.compute_loss(b)
    loss.backward()
    assert m.head.blocks[0].cross.q.weight.grad.abs().sum() > 0
    k = m.policy.vlm.lm.model.layers[0].self_attn.k_proj.weight.grad
    assert k is None or k.abs().sum() == 0  # the VLM is insulated from the flow loss


def test_ki_without_token_loss_freezes_the_vlm():
    m, b, _ = models("kv", km_weight=0.0, ki=True, token_weight=0.0)
    before = {k: v.clone() for k, v in m.policy.state_dict().items()}
    assert all(not p.requires_grad for p in m.policy.parameters())
    opt = build_optimizer(m, 1e-2, 0.1)  # weight decay would move any parameter it holds
    for _ in range(3):
        opt.zero_grad()
        loss, metrics = m.compute_loss(b)
        loss.backward()
        opt.step()
    assert "ce_action" not in metrics and "action_acc" in metrics
    assert m.head.blocks[0].cross.q.weight.grad.abs().sum() > 0
    for k, v in m.policy.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in m.head.parameters())


def test_flow_loss_alone_without_km_fine_tunes_the_vlm():
    m, b, _ = models("hidden", km_weight=0.0)
    opt = build_optimizer(m, 1e-3, 0.0)
    for _ in range(3):  # the gradient reaches the context once the zero-initialised gates have moved
        m.zero_grad()
        loss, metrics = m.compute_loss(b)
        loss.backward()
        opt.step()
    assert "kl" not in metrics
    assert m.policy.vlm.projector[0].weight.grad.abs().sum() > 0


def test_prefix_is_computed_once_per_chunk_and_sampling_is_deterministic():
    from clap_vla.data.ntp import TextTokens

    m, b, s = models("kv")
    m.eval()
    calls = []
    fwd = m.policy.vlm.forward

    def counting(*a, **k):
        calls.append(1)
        return fwd(*a, **k)

    m.policy.vlm.forward = counting
    text = TextTokens(m.policy.tokenizer, m.policy.act_offset)
    prompts = [text.prompt("sawyer", s.instructions[0]), text.prompt("sawyer", s.instructions[1])]
    arm = torch.tensor([[False, True], [True, True]])
    out = m.sample_actions(b.visual[:2], prompts, arm, steps=10, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1 and out.shape == (2, 6, 2, 7)
    assert (out[0, :, 0] == 0).all() and out[1].abs().sum() > 0  # absent arm zeroed
    again = m.sample_actions(b.visual[:2], prompts, arm, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)


def test_bidirectional_prefix_gives_the_head_the_same_context_in_training_and_sampling():
    """Under prefix_attention=bidirectional the head's context at training (the prefix positions of
    the teacher-forced forward) is the context sampling builds from its prefill."""
    m, b, _ = models("hidden", "bidirectional")
    m.eval()
    vlm = m.policy.vlm
    p = int(prefix_lengths(b.labels[:1]))
    n = int(b.attention_mask[0].sum())
    with torch.no_grad():
        full = vlm(b.visual[:1], b.input_ids[:1, :n], torch.ones(1, vlm.visual_tokens(b.visual) + n).long(),
                   output_hidden_states=True, prefix_len=torch.tensor([p]))  # fmt: skip
        pre = vlm(b.visual[:1], b.input_ids[:1, :p], torch.ones(1, vlm.visual_tokens(b.visual) + p).long(),
                  output_hidden_states=True)  # fmt: skip
    end = full.text_start + p
    for a, c in zip(m.contexts(full, detach=True), m.contexts(pre, detach=True), strict=True):
        torch.testing.assert_close(a[:, :end], c, atol=1e-5, rtol=1e-5)


def test_prefix_lengths():
    lab = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 9]])
    assert prefix_lengths(lab).tolist() == [2, 1]
    assert np.all(prefix_lengths(torch.full((1, 3), -100)).numpy() == [3])


def test_overfit_one_batch_flow():
    m, b, _ = models("hidden", km_weight=0.0)
    opt = build_optimizer(m, 3e-3, 0.0)
    torch.manual_seed(0)
    first = None
    for _ in range(250):  # the flow loss draws t and noise afresh each step: 150 steps left it near 0.35x
        loss, metrics = m.compute_loss(b)
        first = first if first is not None else metrics["flow"].item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["flow"].item() < 0.25 * first
