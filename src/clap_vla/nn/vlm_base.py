"""What every CLAP-NTP backbone shares (the protocol of vlm.py, paper §III-D): its config, its
output, the action vocabulary appended to its tokenizer and how the new embedding rows start.
Both builders read it: vlm.py (the Llama builds, and the dispatch) and vlm_qwen3.py (Qwen3-VL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from clap_vla.errors import ConfigError

ACTION_TOKEN = "<ACT_{}>"
NEW_ROW_NOISE = 0.02  # new embedding rows: mean of the existing rows + 2% of their std (reference facts)

VISUAL_POS = ("sincos2d", "sincos2d_add", "none")
PREFIX_ATTENTION = ("causal", "bidirectional")
POS_FREQS = 8  # sincos2d: frequencies per axis -> 4 * POS_FREQS features per visual token


def vlm_config_from_saved(d: dict) -> VLMConfig:
    """The VLMConfig an artifact's meta.json saved; fields added since default to the behaviour the
    artifact was trained with (no visual position features)."""
    return VLMConfig(**{"visual_pos": "none", **d})


# name -> Llama config fields (hidden, layers, heads, kv heads, ffn). smollm2-135m comes from the GGUF.
LLAMA_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 768},
}  # fmt: skip
BACKBONES = (*LLAMA_PRESETS, "smollm2-135m", "qwen3-vl:<path>")


@dataclass(frozen=True)
class VLMConfig:
    name: str = "small"
    """tiny | small | smollm2-135m | qwen3-vl:<local path or hub id>."""
    layers: int | None = None
    """Keep only the first N transformer layers (None = all)."""
    visual_dim: int = 112
    """C of the frozen frame features the projector reads (Llama builds; set from the data)."""
    num_action_tokens: int = 256
    """K: size of the action vocabulary appended to the tokenizer."""
    tokenizer: str = "smollm2"
    """smollm2 (SmolLM2's 49k vocabulary) or corpus (a small byte-level BPE fitted to the training
    text, see `corpus_tokenizer`; from-scratch builds only). Qwen3-VL always uses its own."""
    corpus_vocab: int = 1024
    """Vocabulary cap of the corpus tokenizer."""
    visual_pos: str = "sincos2d"
    """Where each visual token sits in the image, for the Llama builds: ``sincos2d`` appends fixed 2-D
    sine/cosine features of its (row, column) on the patch grid to its frame features before the
    projector; ``sincos2d_add`` maps the same grid features linearly to the LM width and adds them to
    the projector's output, so a token's position code does not depend on what it shows (as a ViT
    adds position embeddings to its patch embeddings); ``none`` feeds the features alone. The frozen
    CNN's features say little about absolute position and the LM's 1-D RoPE only orders tokens, so
    without them the LM has no direct way to tell where a red patch is (a ViT tower, SigLIP or
    Qwen3-VL's own, carries 2-D position; this stands in for it; docs/ntp.md). Artifacts saved
    before this option load as ``none``."""
    visual_merge: int = 1
    """r: each r x r block of neighbouring patches becomes one visual token whose features are the
    block's r*r feature vectors concatenated (pixel shuffle, as SmolVLM does before its projector).
    The LM reads r*r fewer visual tokens carrying the same numbers; the projector reads C*r*r
    channels. Llama builds; the patch grid must be square with a side divisible by r."""
    prefix_attention: str = "causal"
    """How the prefix (visual tokens, then the prompt) attends. ``causal``: left to right, as
    Qwen3-VL and every decoder LM do; the visual tokens, which come first, never see the instruction.
    ``bidirectional``: a prefix LM (PaliGemma, and pi0 on top of it): the visual tokens and the
    prompt attend to each other both ways, so each visual token can tell whether it shows the named
    object; the target (subtask text, action tokens) stays causal and reads the whole prefix either
    way. Llama builds; artifacts saved before this option load as ``causal``."""

    def __post_init__(self) -> None:
        if self.name not in LLAMA_PRESETS and self.name != "smollm2-135m" and not self.name.startswith("qwen3-vl:"):
            raise ConfigError(f"backbone {self.name!r}: expected one of {', '.join(BACKBONES)}")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"layers must be >= 1 (or None for all), got {self.layers}")
        if self.tokenizer not in ("smollm2", "corpus"):
            raise ConfigError(f"tokenizer must be smollm2 or corpus, got {self.tokenizer!r}")
        if self.tokenizer == "corpus" and self.name not in LLAMA_PRESETS:
            raise ConfigError(f"tokenizer=corpus is for the from-scratch builds {list(LLAMA_PRESETS)}, not {self.name}")
        if self.num_action_tokens < 2:
            raise ConfigError(f"num_action_tokens must be >= 2, got {self.num_action_tokens}")
        if self.visual_merge < 1:
            raise ConfigError(f"visual_merge must be >= 1, got {self.visual_merge}")
        if self.visual_pos not in VISUAL_POS:
            raise ConfigError(f"visual_pos must be one of {', '.join(VISUAL_POS)}, got {self.visual_pos!r}")
        if self.prefix_attention not in PREFIX_ATTENTION:
            raise ConfigError(
                f"prefix_attention must be one of {', '.join(PREFIX_ATTENTION)}, got {self.prefix_attention!r}"
            )
        if self.prefix_attention != "causal" and self.name.startswith("qwen3-vl:"):
            raise ConfigError(f"prefix_attention={self.prefix_attention} is for the Llama builds, not {self.name}")
        if self.visual_merge > 1 and self.name not in LLAMA_PRESETS and self.name != "smollm2-135m":
            raise ConfigError(
                f"visual_merge is for the Llama builds; {self.name} merges patches in its own vision tower"
            )


@dataclass
class VLMOutput:
    hidden: torch.Tensor  # (B, T, E): final-normed last-layer states of the positions fed in this call
    text_start: int  # index in `hidden` where the text tokens start (0 on incremental calls)
    cache: Any = None  # the backbone's KV cache, to pass back for the next positions
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (L+1) x (B, T, E), when asked for
    extras: dict[str, Any] = field(default_factory=dict)


def add_action_tokens(tok, num_codes: int) -> int:
    """Append <ACT_0>..<ACT_{K-1}> as special tokens (never split, never merged with text); return
    the id of <ACT_0>. Ids are contiguous, so code k <-> id offset + k."""
    names = [ACTION_TOKEN.format(i) for i in range(num_codes)]
    tok.add_tokens(names, special_tokens=True)
    ids = tok.convert_tokens_to_ids(names)
    if ids != list(range(ids[0], ids[0] + num_codes)):
        raise ConfigError("the tokenizer assigned non-contiguous ids to the action tokens (it already had some?)")
    return ids[0]


def init_new_rows(weight: torch.Tensor, start: int, generator: torch.Generator | None = None) -> None:
    """Rows [start:] = mean of rows [:start] + NEW_ROW_NOISE * their per-dimension std * N(0, 1)
    (reference facts, CLAP-NTP: new action-token embeddings)."""
    with torch.no_grad():
        old = weight[:start].float()
        mean, std = old.mean(0), old.std(0)
        noise = torch.randn(weight.shape[0] - start, weight.shape[1], generator=generator)
        weight[start:] = (mean + NEW_ROW_NOISE * std * noise).to(weight.dtype)
