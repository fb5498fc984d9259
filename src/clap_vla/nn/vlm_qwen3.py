"""Qwen3-VL as a CLAP-NTP backbone (the paper's VLM, §III-D), behind the protocol of ``vlm.py``.

The backbone takes raw uint8 camera images and text ids, and lays the sequence out as
``[<|vision_start|> <|image_pad|>*n <|vision_end|>] x N cameras, [text]``. Images are preprocessed
here in torch (resize, normalise, patchify to Qwen's ``pixel_values`` layout) because the
transformers fast image processor needs torchvision, which we do not ship; the result matches
transformers' PIL ``Qwen2VLImageProcessor`` (tests/nn/test_vlm_qwen3.py).

Positions are Qwen's 3-D multimodal RoPE (M-RoPE). We compute them ourselves with the model's own
``get_rope_index`` and pass them explicitly on every call, instead of letting ``Qwen3VLModel`` infer
them from its ``rope_deltas`` attribute: that attribute is state shared by every sequence the module
ever saw, so a second prefill between two decoding steps of the first would silently shift the
first's positions. The per-sample offset M-RoPE needs for text after the images (``rope_deltas``)
travels with the KV cache instead (attribute ``ROPE_DELTAS_ATTR`` on the ``DynamicCache``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clap_vla.errors import ConfigError
from clap_vla.nn.vlm_base import ACTION_TOKEN, VLMConfig, VLMOutput, add_action_tokens, init_new_rows

VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
# Qwen3-VL's preprocessor_config.json values, used when a model directory has none.
QWEN_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN_IMAGE_STD = (0.5, 0.5, 0.5)
QWEN_MIN_PIXELS = 256 * 256
QWEN_MAX_PIXELS = 4096 * 4096
PREPROCESS_KEY = "clap_image_preprocess"  # extra key in hf_config(): the preprocessing an artifact must repeat
ROPE_DELTAS_ATTR = "clap_rope_deltas"


# -- image preprocessing ------------------------------------------------------------------------------


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's target size: both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect
    ratio kept as well as rounding allows (same arithmetic as transformers' `smart_resize`)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio must be below 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(images: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> torch.Tensor:
    """(M, C, H, W) -> (M * H/p * W/p, C * t * p * p). Patches are ordered so that each merge_size x
    merge_size block is contiguous (the merger concatenates consecutive rows), and a still image is
    repeated `temporal_patch_size` times along time, as the Conv3d patch embedding expects."""
    M, C, H, W = images.shape
    gh, gw, m, p = H // patch_size, W // patch_size, merge_size, patch_size
    x = images.reshape(M, C, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (M, gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal_patch_size, -1, -1)
    return x.reshape(M * gh * gw, C * temporal_patch_size * p * p)


def resize_like_pil(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of 0..255 float images (M, C, h, w) as PIL does it on uint8 images: width first,
    then height, each pass rounded and clipped to uint8 levels. torch's antialiased bicubic uses PIL's
    kernel (a = -0.5, widened when shrinking); the rounding between passes matters where the kernel
    overshoots (a single float pass differs from PIL by up to 16 levels on noisy upscales, this by 1).
    Float in, float out, so it runs wherever the images already are."""
    h, w = x.shape[-2:]
    if width != w:
        x = F.interpolate(x, size=(h, width), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    if height != h:
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    return x


@dataclass(frozen=True)
class ImagePreprocess:
    """Qwen2-VL/Qwen3-VL image preprocessing in torch. patch/merge/temporal sizes come from the vision
    config (they are properties of the weights); mean/std/pixel bounds from preprocessor_config.json."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    image_mean: tuple[float, ...] = QWEN_IMAGE_MEAN
    image_std: tuple[float, ...] = QWEN_IMAGE_STD
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.patch_size * self.merge_size
        return smart_resize(height, width, f, self.min_pixels, self.max_pixels)

    def tokens_per_image(self, height: int, width: int) -> int:
        """LM positions one image's features occupy (after the 2x2 merge), without the markers."""
        H, W = self.target_size(height, width)
        return (H // self.patch_size) * (W // self.patch_size) // self.merge_size**2

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (M, 3, h, w) -> (pixel_values (M * gh * gw, 3 * t * p * p) float32, image_grid_thw (M, 3))."""
        if images.dtype != torch.uint8:
            raise ValueError(f"Qwen3-VL expects uint8 images (0..255), got {images.dtype}")
        M, C, h, w = images.shape
        H, W = self.target_size(h, w)
        x = resize_like_pil(images.float(), H, W)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, C, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, C, 1, 1)
        x = (x / 255.0 - mean) / std
        pv = patchify(x, self.patch_size, self.merge_size, self.temporal_patch_size)
        grid = torch.tensor([[1, H // self.patch_size, W // self.patch_size]], device=x.device).expand(M, 3)
        return pv, grid.contiguous()

    def settings(self) -> dict:
        """The fields an artifact must carry (the rest follows from the vision config)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def preprocess_from(vision_config, settings: dict | None, where: str) -> ImagePreprocess:
    """ImagePreprocess for a vision config and preprocessor settings (preprocessor_config.json or an
    artifact's saved copy). Settings that contradict the weights' patch geometry are refused: resizing
    to the wrong grid would feed the patch embedding garbage without any error."""
    s = settings or {}
    geometry = {
        "patch_size": int(vision_config.patch_size),
        "merge_size": int(vision_config.spatial_merge_size),
        "temporal_patch_size": int(vision_config.temporal_patch_size),
    }
    for k, v in geometry.items():
        if k in s and s[k] is not None and int(s[k]) != v:
            raise ConfigError(f"{where}: image preprocessing has {k}={s[k]} but the vision tower was built with {v}")
    size = s.get("size") or {}
    min_pixels = s.get("min_pixels") or size.get("shortest_edge") or QWEN_MIN_PIXELS
    max_pixels = s.get("max_pixels") or size.get("longest_edge") or QWEN_MAX_PIXELS
    mean = tuple(float(v) for v in (s.get("image_mean") or QWEN_IMAGE_MEAN))
    std = tuple(float(v) for v in (s.get("image_std") or QWEN_IMAGE_STD))
    return ImagePreprocess(**geometry, image_mean=mean, image_std=std, min_pixels=int(min_pixels),
                           max_pixels=int(max_pixels))  # fmt: skip


def _read_preprocessor_config(path: str) -> dict | None:
    """preprocessor_config.json of a local model directory or a cached hub snapshot, None if absent."""
    local = Path(path)
    if local.is_dir():
        f = local / "preprocessor_config.json"
        return json.loads(f.read_text()) if f.exists() else None
    from transformers.utils import cached_file

    try:
        f = cached_file(path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    return json.loads(Path(f).read_text()) if f else None


# -- the backbone -------------------------------------------------------------------------------------


class Qwen3VLBackbone(nn.Module):
    """Qwen3VLForConditionalGeneration (vision tower + DeepStack + M-RoPE LM) behind the VLM protocol."""

    uses_pixels = True

    def __init__(self, model: nn.Module, tokenizer, act_offset: int, preprocess: ImagePreprocess):
        super().__init__()
        self.model = model  # Qwen3VLForConditionalGeneration
        self.tokenizer = tokenizer
        self.act_offset = act_offset
        self.preprocess = preprocess
        c = model.config
        self.image_token_id = int(c.image_token_id)
        self.vision_start_id = int(c.vision_start_token_id)
        self.vision_end_id = int(c.vision_end_token_id)

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.model.config.text_config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[0]

    def hf_config(self) -> dict:
        d = self.model.config.to_dict()
        d[PREPROCESS_KEY] = self.preprocess.settings()
        return d

    def visual_tokens(self, visual: torch.Tensor) -> int:
        _, N, _, h, w = visual.shape
        return N * (self.preprocess.tokens_per_image(h, w) + 2)

    def _vision_ids(self, n_cams: int, per_image: int, device: torch.device) -> torch.Tensor:
        block = [self.vision_start_id] + [self.image_token_id] * per_image + [self.vision_end_id]
        return torch.tensor(block * n_cams, dtype=torch.long, device=device)

    def forward(
        self,
        visual: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        output_hidden_states: bool = False,
        prefix_len: torch.Tensor | None = None,
    ) -> VLMOutput:
        """visual: uint8 images (B, N, 3, h, w) for a prefill, None when continuing from `cache`;
        input_ids (B, T) text only; attention_mask (B, T_total) over everything the cache holds plus
        this call (1 = real, 0 = padding). `hidden_states` are transformers' per-layer records: at
        image positions, those of the first len(deepstack_visual_indexes) layers are taken before
        DeepStack adds its vision features (text positions are unaffected). Attention is causal
        throughout (Qwen3-VL's own): `prefix_len` is accepted for the Llama builds' signature."""
        from transformers import DynamicCache

        B, T = input_ids.shape
        if (input_ids == self.image_token_id).any():
            # Qwen scatters image features onto every <|image_pad|> id; one in the text would misalign them.
            raise ValueError(f"input_ids contain the image placeholder id {self.image_token_id}; pass text only")
        inner = self.model.model  # Qwen3VLModel
        kw: dict[str, Any] = {}
        if visual is not None:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("a prefill (visual given) cannot continue a non-empty cache")
            if visual.ndim != 5:
                raise ValueError(f"visual must be uint8 (B, N, 3, h, w), got shape {tuple(visual.shape)}")
            Bv, N, C, h, w = visual.shape
            if Bv != B:
                raise ValueError(f"visual has batch {Bv}, input_ids {B}")
            pixel_values, grid = self.preprocess(visual.reshape(Bv * N, C, h, w))
            per_image = int(grid[0, 1] * grid[0, 2]) // self.preprocess.merge_size**2
            vis = self._vision_ids(N, per_image, input_ids.device)
            ids = torch.cat([vis.expand(B, -1), input_ids], 1)
            text_start = vis.numel()
            if attention_mask.shape[1] != ids.shape[1]:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} positions; a prefill feeds "
                    f"{text_start} visual + {T} text = {ids.shape[1]}"
                )
            # Only <|image_pad|> counts as image (1); the start/end markers are text, as in Qwen's processor.
            mm_types = torch.zeros_like(ids, dtype=torch.int32)
            mm_types[:, :text_start] = (vis == self.image_token_id).int()
            position_ids, deltas = inner.get_rope_index(
                ids, mm_token_type_ids=mm_types, image_grid_thw=grid, attention_mask=attention_mask
            )
            cache = DynamicCache(config=self.model.config.text_config) if cache is None else cache
            setattr(cache, ROPE_DELTAS_ATTR, deltas)
            kw = {"pixel_values": pixel_values, "image_grid_thw": grid}
        else:
            deltas = getattr(cache, ROPE_DELTAS_ATTR, None) if cache is not None else None
            if deltas is None:
                raise ValueError("an incremental call (visual=None) needs the cache returned by a prefill")
            past = cache.get_seq_length()
            if attention_mask.shape[1] != past + T:
                raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions; cache {past} + new {T}")
            ids, text_start = input_ids, 0
            # Text positions after the images advance by one per real token on all three M-RoPE axes,
            # offset by the prefill's delta (max position + 1 - number of real tokens).
            pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)[:, -T:] + deltas.to(input_ids.device)
            position_ids = pos.unsqueeze(0).expand(3, -1, -1)
        out = inner(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=output_hidden_states,
            **kw,
        )
        hs = out.hidden_states if output_hidden_states else None
        return VLMOutput(out.last_hidden_state, text_start, cache, hs)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., V) in fp32 (reference logits for KL and argmax stay full precision)."""
        return self.model.lm_head(hidden).float()


# -- builders -----------------------------------------------------------------------------------------


def _as_tokenizer(processor):
    """A Qwen processor carries its tokenizer; a plain tokenizer is used as is."""
    return getattr(processor, "tokenizer", None) or processor


def _existing_offset(tok, num_codes: int, where: str) -> int | None:
    """Id of <ACT_0> if the tokenizer already has the action vocabulary (a saved one), else None."""
    first = tok.convert_tokens_to_ids(ACTION_TOKEN.format(0))
    if first is None or first == tok.unk_token_id:
        return None
    last = tok.convert_tokens_to_ids(ACTION_TOKEN.format(num_codes - 1))
    if last != first + num_codes - 1:
        raise ConfigError(f"{where}: the tokenizer's action tokens are not {num_codes} contiguous ids from {first}")
    return first


def _check_vision_tokens(tok, conf, where: str) -> None:
    want = {
        VISION_START: conf.vision_start_token_id,
        IMAGE_PAD: conf.image_token_id,
        VISION_END: conf.vision_end_token_id,
    }
    got = {name: tok.convert_tokens_to_ids(name) for name in want}
    bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    if bad:
        detail = ", ".join(f"{k} is {g} in the tokenizer but {v} in the config" for k, (g, v) in bad.items())
        raise ConfigError(f"{where}: tokenizer and model disagree on the vision tokens: {detail}")


def _truncate_config(conf, layers: int, where: str) -> None:
    """Keep the first `layers` decoder layers. DeepStack injects vision level i into decoder layer i,
    so levels at or past `layers` would never be read: drop them (and their mergers, by building with
    the shorter list) rather than keep parameters no gradient reaches (DDP refuses those)."""
    n = conf.text_config.num_hidden_layers
    if layers > n:
        raise ConfigError(f"layers={layers}: {where} has {n} decoder layers")
    conf.text_config.num_hidden_layers = layers
    ds = list(conf.vision_config.deepstack_visual_indexes)
    conf.vision_config.deepstack_visual_indexes = ds[:layers]


def _load_pretrained(path: str, layers: int | None):
    from transformers import AutoConfig, AutoTokenizer, Qwen3VLForConditionalGeneration

    where = f"qwen3-vl:{path}"
    local = Path(path)
    if local.exists():
        if not local.is_dir():
            raise ConfigError(f"{where}: expected a model directory, found a file")
        if not (local / "config.json").exists():
            raise ConfigError(f"{where}: no config.json in the directory")
        if not any(local.glob("*.safetensors")) and not any(local.glob("pytorch_model*.bin")):
            raise ConfigError(f"{where}: no model weights (*.safetensors or pytorch_model*.bin) in the directory")
        if not any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            raise ConfigError(f"{where}: no tokenizer (tokenizer.json / tokenizer_config.json) in the directory")
    try:
        conf = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: not a local model directory and not in the Hugging Face cache ({e})") from e
    if conf.model_type != "qwen3_vl":
        raise ConfigError(f"{where}: config.json has model_type {conf.model_type!r}, expected 'qwen3_vl'")
    if layers is not None:
        # Truncating the config before loading reads only the kept layers (a 4B model in fp32 is 16 GB).
        _truncate_config(conf, layers, where)
    try:
        model, info = Qwen3VLForConditionalGeneration.from_pretrained(
            path, config=conf, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: could not load the weights ({e})") from e
    if info.get("missing_keys"):
        # from_pretrained initialises missing tensors randomly and only logs it: refuse instead.
        missing = sorted(info["missing_keys"])
        raise ConfigError(f"{where}: the checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: could not load the tokenizer ({e})") from e
    return model, tok


def build_qwen3_vl(cfg: VLMConfig, hf_config: dict | None = None, processor=None, seed: int = 0) -> Qwen3VLBackbone:
    """Qwen3-VL with the action vocabulary. `cfg.name` is ``qwen3-vl:<local dir or hub id>``. With
    `hf_config` (from `Qwen3VLBackbone.hf_config()`) and `processor` (the saved tokenizer) the exact
    architecture is rebuilt without reading pretrained weights; the caller loads the trained ones."""
    try:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    except ImportError as e:
        raise ConfigError(
            f"backbone {cfg.name!r} needs transformers with Qwen3-VL (pip install 'clap-vla[backbones]'): {e}"
        ) from e
    path = cfg.name.removeprefix("qwen3-vl:")
    where = f"qwen3-vl:{path}"
    g = torch.Generator().manual_seed(seed)
    if hf_config is not None:
        if processor is None:
            raise ConfigError(f"{where}: rebuilding from hf_config needs the saved tokenizer (processor=)")
        d = dict(hf_config)
        settings = d.pop(PREPROCESS_KEY, None)
        conf = Qwen3VLConfig.from_dict(d)
        if cfg.layers is not None and cfg.layers != conf.text_config.num_hidden_layers:
            raise ConfigError(
                f"{where}: layers={cfg.layers} but the saved config has {conf.text_config.num_hidden_layers}"
            )
        tok = _as_tokenizer(processor)
        offset = _existing_offset(tok, cfg.num_action_tokens, where)
        if offset is None:
            raise ConfigError(f"{where}: the saved tokenizer has no {ACTION_TOKEN.format(0)} token")
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(conf)
    else:
        model, tok = _load_pretrained(path, cfg.layers)
        if processor is not None:
            tok = _as_tokenizer(processor)
        conf = model.config
        settings = _read_preprocessor_config(path)
        offset = _existing_offset(tok, cfg.num_action_tokens, where)
        if offset is None:
            offset = add_action_tokens(tok, cfg.num_action_tokens)
        # Qwen's table is padded past the tokenizer (151936 rows for 151669 tokens), so the action ids
        # land on untrained padding rows or past the end: resize to the tokenizer (shrinking or growing),
        # then (re)initialise every row from the first action id on, not from the old table size.
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        init_new_rows(model.get_input_embeddings().weight, offset, g)
        if not conf.tie_word_embeddings:
            init_new_rows(model.get_output_embeddings().weight, offset, g)
    _check_vision_tokens(tok, conf, where)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if conf.tie_word_embeddings and emb.data_ptr() != head.data_ptr():
        raise ConfigError(f"{where}: config ties the word embeddings but the LM head is a separate tensor")
    if emb.shape[0] < offset + cfg.num_action_tokens:
        raise ConfigError(
            f"{where}: the embedding table has {emb.shape[0]} rows, fewer than the "
            f"{offset + cfg.num_action_tokens} the action vocabulary needs"
        )
    preprocess = preprocess_from(conf.vision_config, settings, where)
    return Qwen3VLBackbone(model, tok, offset, preprocess)


__all__ = [
    "ImagePreprocess",
    "Qwen3VLBackbone",
    "build_qwen3_vl",
    "patchify",
    "preprocess_from",
    "resize_like_pil",
    "smart_resize",
]
