"""Qwen3-VL backbone on a tiny random Qwen3VLForConditionalGeneration saved to disk with a tokenizer
(SmolLM2's plus Qwen's vision tokens): image preprocessing against transformers' PIL processor,
training step, action-row init, KV-cache decoding against a full forward, left padding, the
hf_config round trip, layer truncation and loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clap_vla.errors import ConfigError
from clap_vla.nn.vlm import NEW_ROW_NOISE, VLMConfig, build_vlm
from clap_vla.nn.vlm_qwen3 import ImagePreprocess, Qwen3VLBackbone, patchify, smart_resize

pytest.importorskip("transformers")

K = 16  # action tokens
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)  # deliberately not Qwen's defaults: proves they are read
MIN_PIXELS, MAX_PIXELS = 16 * 16, 32 * 32
IMG_H, IMG_W = 24, 20  # -> 24 x 16 after smart_resize (factor 8): 6 x 4 patches, 6 merged tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3vl") / "tiny")


def write_tiny_qwen3_vl(d: Path) -> Path:
    """A tiny random Qwen3VLForConditionalGeneration + tokenizer + preprocessor config saved to `d`."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from clap_vla.nn.vlm import base_tokenizer

    tok = base_tokenizer()
    names = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
    tok.add_tokens(names, special_tokens=True)
    vs, ve, pad = tok.convert_tokens_to_ids(names)
    conf = Qwen3VLConfig(
        text_config={
            # 8 spare rows past the tokenizer, like Qwen's padded table: the first action ids land on them
            "vocab_size": len(tok) + 8,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                "mrope_interleaved": True},
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 4,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
            "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
        },
        image_token_id=pad,
        vision_start_token_id=vs,
        vision_end_token_id=ve,
        tie_word_embeddings=True,  # as Qwen3-VL-4B
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(conf).save_pretrained(d)
    tok.save_pretrained(d)
    pre = {"image_mean": list(MEAN), "image_std": list(STD), "patch_size": 4, "merge_size": 2,
           "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}}  # fmt: skip
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    return d


def build(model_dir: Path, **kw) -> Qwen3VLBackbone:
    vlm = build_vlm(VLMConfig(name=f"qwen3-vl:{model_dir}", num_action_tokens=K, **kw))
    assert isinstance(vlm, Qwen3VLBackbone)
    return vlm


def images(B: int, N: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, N, 3, IMG_H, IMG_W), generator=g, dtype=torch.uint8)


def left_pad(prompts: list[list[int]], n_vis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask over visual + text) the way NTPModel.generate builds them."""
    L = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), L, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p)
        mask[i, L - len(p) :] = 1
    return ids, torch.cat([torch.ones(len(prompts), n_vis, dtype=torch.long), mask], 1)


# -- preprocessing ------------------------------------------------------------------------------------


def test_patchify_matches_a_loop():
    pre = ImagePreprocess(4, 2, 2, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    x = torch.randn(2, 3, 16, 24)
    out = patchify(x, 4, 2, 2)
    gh, gw = 4, 6
    rows = []
    for m in range(2):
        for bh in range(gh // 2):
            for bw in range(gw // 2):
                for mh in range(2):
                    for mw in range(2):
                        h, w = (bh * 2 + mh) * 4, (bw * 2 + mw) * 4
                        p = x[m, :, h : h + 4, w : w + 4]  # (C, p, p)
                        rows.append(torch.stack([p, p], 1).reshape(-1))  # (C, t, p, p): a still frame twice
    assert torch.equal(out, torch.stack(rows))
    assert pre.tokens_per_image(16, 24) == gh * gw // 4


def test_preprocessing_matches_transformers_pil_processor():
    pil_mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    hf = pil_mod.Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, image_mean=list(MEAN), image_std=list(STD),
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )  # fmt: skip
    ours = ImagePreprocess(4, 2, 2, MEAN, STD, MIN_PIXELS, MAX_PIXELS)
    for hw in [(24, 32), (24, 20), (10, 12), (64, 48), (100, 30), (7, 300)]:
        assert smart_resize(*hw, 8, MIN_PIXELS, MAX_PIXELS) == pil_mod.smart_resize(*hw, 8, MIN_PIXELS, MAX_PIXELS)
    one_level = 1 / 255 / min(STD)  # one uint8 step after normalisation
    photo = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    g = torch.Generator().manual_seed(0)
    cases = [
        torch.randint(0, 256, (2, 3, 24, 32), generator=g, dtype=torch.uint8),  # no resize: must be exact
        torch.from_numpy(np.array(Image.fromarray(photo).resize((20, 24)))).permute(2, 0, 1)[None],  # shrink w
        torch.from_numpy(np.array(Image.fromarray(photo).resize((12, 10)))).permute(2, 0, 1)[None],  # upscale
        torch.from_numpy(photo.copy()).permute(2, 0, 1)[None],  # 600x512 -> large downscale
    ]
    for i, imgs in enumerate(cases):
        pv, grid = ours(imgs)
        ref = hf(images=[im.numpy() for im in imgs], return_tensors="pt")
        assert torch.equal(grid, ref["image_grid_thw"])
        diff = (pv - ref["pixel_values"]).abs()
        if i == 0:
            assert diff.max() < 1e-6
        else:  # resampling: PIL's fixed-point arithmetic vs torch's float kernel, within a level or so
            assert diff.max() <= 2 * one_level + 1e-5, (i, diff.max() / one_level)
            assert diff.mean() < 0.1 * one_level, (i, diff.mean() / one_level)


# -- backbone -----------------------------------------------------------------------------------------


def test_train_step_reaches_vision_lm_and_action_rows(model_dir):
    vlm = build(model_dir)
    assert vlm.uses_pixels and vlm.num_layers == 2 and vlm.hidden_size == 64
    assert vlm.preprocess.image_mean == MEAN and vlm.preprocess.image_std == STD  # from preprocessor_config.json
    vis = images(2)
    n_vis = vlm.visual_tokens(vis)
    assert n_vis == 2 * (6 + 2)
    acts = torch.arange(K) + vlm.act_offset
    ids = torch.cat([torch.randint(10, 1000, (2, 5)), acts[:8].expand(2, 8)], 1)  # prompt, then actions
    mask = torch.ones(2, n_vis + ids.shape[1], dtype=torch.long)
    out = vlm(vis, ids, mask, output_hidden_states=True)
    assert out.text_start == n_vis and out.hidden.shape == (2, n_vis + ids.shape[1], 64)
    assert len(out.hidden_states) == vlm.num_layers + 1
    h = out.hidden[:, out.text_start :][:, :-1]
    logits = vlm.logits(h)
    assert logits.dtype == torch.float32 and logits.shape[-1] == vlm.vocab_size == len(vlm.tokenizer)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert torch.isfinite(loss)
    loss.backward()
    m = vlm.model.model
    for name, p in [
        ("patch embedding", m.visual.patch_embed.proj.weight),
        ("deepstack merger", m.visual.deepstack_merger_list[0].linear_fc2.weight),
        ("LM attention", m.language_model.layers[0].self_attn.q_proj.weight),
        ("LM last layer", m.language_model.layers[-1].mlp.down_proj.weight),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    emb_grad = m.language_model.embed_tokens.weight.grad
    assert (emb_grad[vlm.act_offset : vlm.act_offset + K].abs().sum(1) > 0).all()


def test_prefill_matches_the_hf_model_fed_as_qwens_processor_would(model_dir):
    """Our layout, M-RoPE positions and DeepStack wiring against Qwen3VLForConditionalGeneration given
    placeholder ids + mm_token_type_ids + pixel_values and left to compute positions itself."""
    vlm = build(model_dir).eval()
    vis = images(1, N=2, seed=6)
    text = torch.tensor([[7, 8, 9, vlm.act_offset]])
    n_vis = vlm.visual_tokens(vis)
    pixel_values, grid = vlm.preprocess(vis[0])
    c = vlm.model.config
    per_image = n_vis // 2 - 2
    block = [c.vision_start_token_id] + [c.image_token_id] * per_image + [c.vision_end_token_id]
    ids = torch.cat([torch.tensor([block * 2]), text], 1)
    with torch.no_grad():
        vlm.model.model.rope_deltas = None  # HF caches these between calls; start clean
        ref = vlm.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values, image_grid_thw=grid,
            mm_token_type_ids=(ids == c.image_token_id).int(),
        ).logits  # fmt: skip
        ours = vlm.logits(vlm(vis, text, torch.ones_like(ids)).hidden)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_action_rows_initialised_from_the_old_rows(model_dir):
    vlm = build(model_dir)
    w = vlm.model.get_input_embeddings().weight.detach()
    assert vlm.model.lm_head.weight.data_ptr() == w.data_ptr()  # the tie survived the resize
    old, new = w[: vlm.act_offset], w[vlm.act_offset : vlm.act_offset + K]
    assert w.shape[0] == len(vlm.tokenizer) == vlm.act_offset + K
    mean, std = old.mean(0), old.std(0)
    z = (new - mean) / (NEW_ROW_NOISE * std)  # N(0, 1) if initialised as stated
    assert z.mean().abs() < 0.15 and (z.std() - 1).abs() < 0.15
    # The rows the table had past the tokenizer (random padding, z ~ 50 here) were re-drawn too, not kept.
    assert z.abs().max() < 6


def test_untied_head_gets_its_own_action_rows(model_dir, tmp_path):
    """Larger Qwen3-VL models (8B) keep a separate LM head: its new rows need the same init."""
    import shutil

    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    conf = Qwen3VLConfig.from_pretrained(model_dir)
    conf.tie_word_embeddings = False
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(conf).save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(model_dir / f, tmp_path / f)
    vlm = build(tmp_path)
    head, emb = vlm.model.lm_head.weight.detach(), vlm.model.get_input_embeddings().weight.detach()
    assert head.data_ptr() != emb.data_ptr() and head.shape[0] == len(vlm.tokenizer)
    old, new = head[: vlm.act_offset], head[vlm.act_offset :]
    z = (new - old.mean(0)) / (NEW_ROW_NOISE * old.std(0))
    assert (z.std() - 1).abs() < 0.15 and not torch.equal(new, emb[vlm.act_offset :])


def test_incremental_decoding_matches_full_forward(model_dir):
    vlm = build(model_dir).eval()
    vis = images(2, seed=1)
    n_vis = vlm.visual_tokens(vis)
    prompts = [[11, 12, 13, 14, 15, 16], [21, 22, 23]]  # different lengths: left padding in the middle
    ids, mask = left_pad(prompts, n_vis)
    steps = torch.tensor([[vlm.act_offset + 1, 7], [40, vlm.act_offset + 3], [5, 6]])  # (3, B)
    with torch.no_grad():
        out = vlm(vis, ids, mask)
        cache, got = out.cache, [vlm.logits(out.hidden[:, -1])]
        for s in steps:
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            out = vlm(None, s[:, None], mask, cache=cache)
            assert out.text_start == 0 and out.hidden.shape[1] == 1
            cache = out.cache
            got.append(vlm.logits(out.hidden[:, -1]))
        # A prefill of another batch in between must not disturb the first cache's positions.
        vlm(images(1, seed=5), torch.tensor([[3, 4]]), torch.ones(1, n_vis + 2, dtype=torch.long))
        full = vlm(vis, torch.cat([ids, steps.T], 1), mask)
        want = vlm.logits(full.hidden[:, -4:])  # positions of the prompt's last token and the 3 steps
    for j, g in enumerate(got):
        torch.testing.assert_close(g, want[:, j], atol=1e-4, rtol=0)


def test_left_padded_batch_equals_each_prompt_alone(model_dir):
    vlm = build(model_dir).eval()
    vis = images(2, seed=2)
    n_vis = vlm.visual_tokens(vis)
    prompts = [[31, 32, 33, 34, 35, 36, 37], [41, 42]]
    with torch.no_grad():
        ids, mask = left_pad(prompts, n_vis)
        batch = vlm.logits(vlm(vis, ids, mask).hidden[:, -1])
        for i, p in enumerate(prompts):
            ids1, mask1 = left_pad([p], n_vis)
            alone = vlm.logits(vlm(vis[i : i + 1], ids1, mask1).hidden[:, -1])
            torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-4, rtol=0)


def test_hf_config_round_trip(model_dir, tmp_path):
    from transformers import AutoTokenizer

    vlm = build(model_dir).eval()
    hf = json.loads(json.dumps(vlm.hf_config()))  # as an artifact stores it
    vlm.tokenizer.save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    # A path that no longer exists: the rebuild must not read the pretrained directory.
    cfg = VLMConfig(name=f"qwen3-vl:{tmp_path / 'gone'}", num_action_tokens=K)
    again = build_vlm(cfg, hf_config=hf, tokenizer=tok, seed=3).eval()
    assert again.act_offset == vlm.act_offset and again.preprocess == vlm.preprocess
    again.load_state_dict(vlm.state_dict())
    vis = images(1, seed=4)
    ids = torch.tensor([[5, 6, 7, vlm.act_offset + 2]])
    mask = torch.ones(1, vlm.visual_tokens(vis) + 4, dtype=torch.long)
    with torch.no_grad():
        a, b = vlm(vis, ids, mask), again(vis, ids, mask)
    assert torch.equal(vlm.logits(a.hidden), again.logits(b.hidden))


def test_layer_truncation(model_dir):
    full = build(model_dir)
    one = build(model_dir, layers=1)
    assert one.num_layers == 1 and len(one.model.model.language_model.layers) == 1
    assert one.model.config.vision_config.deepstack_visual_indexes == [0]
    p = "model.language_model.layers.0.mlp.down_proj.weight"
    assert torch.equal(one.model.state_dict()[p], full.model.state_dict()[p])
    vis = images(1)
    out = one(vis, torch.tensor([[5, 6]]), torch.ones(1, one.visual_tokens(vis) + 2, dtype=torch.long), None, True)
    assert len(out.hidden_states) == 2 and torch.isfinite(out.hidden).all()
    with pytest.raises(ConfigError, match="3: .* has 2 decoder layers"):
        build(model_dir, layers=3)


def test_truncation_drops_deepstack_levels_past_the_kept_layers():
    from transformers import Qwen3VLConfig

    from clap_vla.nn.vlm_qwen3 import _truncate_config

    conf = Qwen3VLConfig(text_config={"num_hidden_layers": 4}, vision_config={"deepstack_visual_indexes": [5, 11, 17]})
    _truncate_config(conf, 2, "x")
    assert conf.text_config.num_hidden_layers == 2
    assert list(conf.vision_config.deepstack_visual_indexes) == [5, 11]


def test_loading_errors_name_the_path_and_what_is_missing(model_dir, tmp_path):
    gone = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"qwen3-vl:{gone}"):
        build(gone)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"qwen3-vl:{empty}: no config.json"):
        build(empty)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=f"qwen3-vl:{no_weights}: no model weights"):
        build(no_weights)
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (partial / f).write_bytes((model_dir / f).read_bytes())
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.language_model.norm.weight"]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    # transformers would initialise the missing tensor randomly and only log it
    with pytest.raises(ConfigError, match=f"qwen3-vl:{partial}: the checkpoint lacks 1 tensors.*norm"):
        build(partial)
    with pytest.raises(ConfigError, match="needs the saved tokenizer"):
        build_vlm(VLMConfig(name=f"qwen3-vl:{model_dir}", num_action_tokens=K), hf_config={})


def test_scale_out_units_are_the_text_layers_and_vision_blocks(model_dir):
    """FSDP / activation-checkpointing units of Qwen3-VL (`hf_blocks`): its text decoder layers and
    vision blocks; checkpointing them recomputes activations without changing loss or gradients."""
    import copy

    from clap_vla.train.fsdp import apply_activation_checkpointing, hf_blocks

    vlm = build(model_dir)
    blocks = hf_blocks(vlm)
    names = sorted(type(b).__name__ for b in blocks)
    assert names == ["Qwen3VLTextDecoderLayer"] * 2 + ["Qwen3VLVisionBlock"] * 2
    ckpt = copy.deepcopy(vlm)
    apply_activation_checkpointing(hf_blocks(ckpt))
    vis = images(2)
    ids = torch.randint(10, 1000, (2, 7))
    mask = torch.ones(2, vlm.visual_tokens(vis) + 7, dtype=torch.long)
    losses = []
    for m in (vlm, ckpt):
        out = m(vis, ids, mask)
        loss = m.logits(out.hidden[:, out.text_start :]).logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    grads = dict(ckpt.named_parameters())
    for name, p in vlm.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
