"""CLAP-NTP: a vision-language model that writes the subtask, then the action tokens (paper §III-D,
Algorithm 3).

Sequence (the text format is data/ntp_text.py's; reference facts, CLAP-NTP):

    [visual tokens] "Robot category: {robot}. Control the robot to do the task: {instruction}.
    Output the subtask and the action tokens." | "Subtask: {subtask}\\nAction:" <ACT_..> x Nq per arm

The loss is next-token cross-entropy on the target (after "|") only. Action tokens come in arm
order left then right (`types.ARM_NAMES`), Nq per arm the robot has; code k of the Act-VAE's
codebook is token id `act_offset + k`.

Decoding is greedy with the KV cache. The text part is free; once the text ends with "Action:"
(or the model emits an action token itself, or `max_subtask_tokens` is spent) the logits are
restricted to the action vocabulary until exactly Nq tokens per present arm are out, so the result
always decodes through the Act-VAE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from clap_vla.artifacts import ACT_VAE_DIR, TOKENIZER_DIR

# The text format is data's (data/ntp_text.py); re-exported here, where scripts and tests look for it.
from clap_vla.data.ntp_text import (
    ACTION_MARK,
    IGNORE,
    PROMPT,
    TARGET,
    codes_to_ids,
    ids_to_codes,
    prompt_text,
    target_text,
)
from clap_vla.errors import ConfigError
from clap_vla.nn.vlm import VLMConfig, build_vlm
from clap_vla.train.distributed import global_count
from clap_vla.types import NTPBatch


@dataclass(frozen=True)
class NTPConfig:
    vlm: VLMConfig = field(default_factory=VLMConfig)
    codes_per_arm: int = 8
    """Nq: set from the Act-VAE."""
    num_codes: int = 256
    """K: set from the Act-VAE (the action vocabulary size)."""
    max_subtask_tokens: int = 24
    """Decoding budget for the subtask text before "Action:" is forced."""
    subtask_weight: float = 1.0
    """Weight of the text-target tokens in the loss (action tokens weigh 1)."""

    def __post_init__(self) -> None:
        if self.vlm.num_action_tokens != self.num_codes:
            raise ConfigError(
                f"vlm.num_action_tokens ({self.vlm.num_action_tokens}) must equal num_codes ({self.num_codes})"
            )
        if self.codes_per_arm < 1 or self.max_subtask_tokens < 1 or self.subtask_weight < 0:
            raise ConfigError(
                f"need codes_per_arm >= 1, max_subtask_tokens >= 1, subtask_weight >= 0; got {self.codes_per_arm}, "
                f"{self.max_subtask_tokens}, {self.subtask_weight}"
            )


def prefix_lengths(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (B,) number of leading prompt tokens (labels IGNORE before the target)."""
    return (labels == IGNORE).long().cumprod(1).sum(1)


class NTPModel(nn.Module):
    """A VLM backbone that speaks action tokens. Verbs: `compute_loss(batch)`, `generate(...)`."""

    def __init__(self, cfg: NTPConfig, hf_config: dict | None = None, tokenizer=None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.vlm = build_vlm(cfg.vlm, hf_config=hf_config, tokenizer=tokenizer, seed=seed)
        self.tokenizer = self.vlm.tokenizer
        self.act_offset = self.vlm.act_offset
        self.eos_id = self.tokenizer.eos_token_id
        self.last_timing: dict[str, float] = {}  # seconds of the last generate(): prefix, decode

    def full_mask(self, batch: NTPBatch) -> torch.Tensor:
        """(B, N_vis + T): the visual positions are always attended."""
        n_vis = self.vlm.visual_tokens(batch.visual)
        ones = torch.ones(len(batch), n_vis, dtype=batch.attention_mask.dtype, device=batch.attention_mask.device)
        return torch.cat([ones, batch.attention_mask], 1)

    def transformer_blocks(self) -> list[nn.Module]:
        """The backbone's decoder layers (and vision blocks): FSDP and activation-checkpointing units."""
        from clap_vla.train.fsdp import hf_blocks

        return hf_blocks(self.vlm)

    # -- training -----------------------------------------------------------------------------------

    def target_logits(self, batch: NTPBatch, output_hidden_states: bool = False):
        """Teacher-forced logits at the target positions: (logits (M, V) fp32, labels (M,), out)."""
        out = self.vlm(
            batch.visual,
            batch.input_ids,
            self.full_mask(batch),
            output_hidden_states=output_hidden_states,
            prefix_len=prefix_lengths(batch.labels),
        )
        h = out.hidden[:, out.text_start :][:, :-1]  # (B, T-1, E): position j predicts token j+1
        labels = batch.labels[:, 1:]  # (B, T-1)
        sel = labels != IGNORE
        return self.vlm.logits(h[sel]), labels[sel], out  # logits only where the loss reads them

    def compute_loss(self, batch: NTPBatch):
        logits, labels, _ = self.target_logits(batch)
        ce = nn.functional.cross_entropy(logits, labels, reduction="none")  # (M,)
        is_act = labels >= self.act_offset
        w = torch.where(is_act, 1.0, self.cfg.subtask_weight)
        loss = (ce * w).sum() / global_count(w.sum()).clamp(min=1e-6)  # over every rank's tokens under DDP
        with torch.no_grad():
            hit = logits.argmax(-1) == labels
            nan = torch.tensor(float("nan"), device=logits.device)
            metrics = {
                "ce_action": ce[is_act].mean() if is_act.any() else nan,
                "ce_text": ce[~is_act].mean() if (~is_act).any() else nan,
                "action_acc": hit[is_act].float().mean() if is_act.any() else nan,
                "text_acc": hit[~is_act].float().mean() if (~is_act).any() else nan,
            }
        return loss, metrics

    # -- decoding -----------------------------------------------------------------------------------

    def _ends_with_mark(self, ids: list[int]) -> bool:
        return self.tokenizer.decode(ids[-4:], skip_special_tokens=False).rstrip().endswith(ACTION_MARK)

    @torch.no_grad()
    def generate(
        self,
        visual: torch.Tensor,
        prompts: list[list[int]],
        num_action_tokens: list[int],
        use_cache: bool = True,
    ) -> tuple[list[list[int]], list[list[int]], torch.Tensor]:
        """Greedy decoding of a batch: visual (B, ...), prompt token ids per sample (left-padded here),
        how many action tokens each sample needs (Nq x arms). -> (text ids per sample, action ids per
        sample, logits of the last step (B, V)). `use_cache=False` re-runs the whole sequence every
        step (the reference the cached path must match)."""
        B = len(prompts)
        device = visual.device
        L = max(len(p) for p in prompts)
        ids = torch.full((B, L), self.eos_id if self.eos_id is not None else 0, dtype=torch.long, device=device)
        mask = torch.zeros(B, L, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            ids[i, L - len(p) :] = torch.tensor(p, device=device)
            mask[i, L - len(p) :] = 1
        n_vis = self.vlm.visual_tokens(visual)
        mask = torch.cat([torch.ones(B, n_vis, dtype=torch.long, device=device), mask], 1)
        act_lo, act_hi = self.act_offset, self.act_offset + self.cfg.num_codes
        in_act = torch.zeros(B, dtype=torch.bool)
        done = torch.tensor([n <= 0 for n in num_action_tokens], dtype=torch.bool)
        text: list[list[int]] = [[] for _ in range(B)]
        acts: list[list[int]] = [[] for _ in range(B)]
        t0 = time.perf_counter()
        out = self.vlm(visual, ids, mask)
        cache, seq = out.cache, ids
        logits = self.vlm.logits(out.hidden[:, -1])  # (B, V)
        t1 = time.perf_counter()
        while not done.all():
            nxt = torch.empty(B, dtype=torch.long)
            for i in range(B):
                row = logits[i]
                if done[i]:
                    nxt[i] = self.eos_id or 0
                    continue
                if not in_act[i]:
                    free = int(row.argmax())
                    if act_lo <= free < act_hi or free == self.eos_id or len(text[i]) >= self.cfg.max_subtask_tokens:
                        in_act[i] = True  # the model chose to act, stopped, or ran out of text budget
                    else:
                        text[i].append(free)
                        nxt[i] = free
                        if self._ends_with_mark(text[i]):
                            in_act[i] = True
                        continue
                tok = act_lo + int(row[act_lo:act_hi].argmax())  # constrained to the action vocabulary
                acts[i].append(tok)
                nxt[i] = tok
                done[i] = len(acts[i]) >= num_action_tokens[i]
            if done.all():
                break
            step_ids = nxt.to(device)[:, None]  # (B, 1)
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=device)], 1)
            if use_cache:
                out = self.vlm(None, step_ids, mask, cache=cache)
                cache = out.cache
            else:
                seq = torch.cat([seq, step_ids], 1)
                out = self.vlm(visual, seq, mask, prefix_len=torch.full((B,), L, device=device))
            logits = self.vlm.logits(out.hidden[:, -1])
        self.last_timing = {"prefix_s": t1 - t0, "decode_s": time.perf_counter() - t1}
        return text, acts, logits


# -- artifacts and the closed-loop policy --------------------------------------------------------------


def load_ntp(artifact, device: str | torch.device = "cpu") -> tuple[NTPModel, dict]:
    """A CLAP-NTP artifact directory -> (model in eval mode, its config.json + meta.json)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from clap_vla.errors import ClapError
    from clap_vla.nn.vlm import vlm_config_from_saved
    from clap_vla.train import checkpoint as ck

    artifact = Path(artifact)
    config = ck.read_json(artifact / ck.CONFIG)
    if "hf_config" not in config or "model" not in config:
        raise ClapError(f"{artifact / ck.CONFIG}: not a CLAP-NTP artifact (no 'model' / 'hf_config' section)")
    m = dict(config["model"])
    cfg = NTPConfig(**{**m, "vlm": vlm_config_from_saved(m["vlm"])})
    tok_dir = artifact / TOKENIZER_DIR
    if not tok_dir.exists():
        raise ClapError(f"{tok_dir}: missing; the artifact is incomplete (was its training killed before step 0?)")
    model = NTPModel(cfg, hf_config=config["hf_config"], tokenizer=AutoTokenizer.from_pretrained(tok_dir))
    missing, unexpected = model.load_state_dict(ck.load_weights(artifact / ck.MODEL), strict=False)
    if missing or unexpected:
        raise ClapError(f"{artifact / ck.MODEL}: weights do not fit the config (missing {missing[:4]}, "
                        f"unexpected {unexpected[:4]})")  # fmt: skip
    meta = ck.read_json(artifact / ck.META) if (artifact / ck.META).exists() else {}
    return model.to(device).eval(), {**meta, "config": config}


class NTPPolicy:
    """`infer(observation) -> (H, n*7)` absolute action chunk: image + instruction -> greedy tokens
    -> Act-VAE decoder -> un-normalise with the robot's stats (relative to the current state).

    `dataset` picks the norm stats by dataset name when the artifact trained on several robots;
    by default the stats of the first dataset whose robot_type matches the observation's.
    `precision`: the VLM (and the RF head) run under bf16 autocast where the device multiplies bf16
    natively (`auto`, as in training), else in fp32; the Act-VAE decoder always runs in fp32."""

    def __init__(
        self,
        artifact,
        device: str = "cpu",
        dataset: str | None = None,
        use_cache: bool = True,
        precision: str = "auto",
    ):
        from pathlib import Path

        from clap_vla.data.normalize import ActionNormalizer, NormStats
        from clap_vla.data.ntp import TextTokens
        from clap_vla.models.act_vae import load_act_vae
        from clap_vla.nn.frame_encoders import build_frame_encoder
        from clap_vla.nn.precision import resolve

        self.artifact = Path(artifact)
        self.device, self.use_cache = torch.device(device), use_cache
        self.precision = resolve(precision, self.device)
        meta = self._load(self.artifact, device)  # sets self.model (the NTP model that owns the tokenizer)
        config = meta["config"]
        self.act_vae, _ = load_act_vae(self.artifact / ACT_VAE_DIR, device)
        feats = config["features"]
        self.pixels = bool(getattr(self.model.vlm, "uses_pixels", False))
        self.encoder = (
            None if self.pixels else build_frame_encoder(feats["frame_encoder"], feats["precision"]).to(device)
        )
        self.camera = config.get("camera")
        entries = meta.get("norm_stats") or []
        if not entries:
            raise ConfigError(f"{self.artifact}/meta.json: no norm stats; cannot turn tokens into actions")
        self._stats = [(e, ActionNormalizer(NormStats.load(self.artifact / e["norm_stats"]))) for e in entries]
        self.dataset = dataset
        self.last_subtask = ""
        self.last_timing: dict[str, float] = {}
        self.text = TextTokens(self.model.tokenizer, self.model.act_offset)

    def _load(self, artifact, device) -> dict:
        self.model, meta = load_ntp(artifact, device)
        return meta

    def _autocast(self):
        """bf16 autocast around the VLM's (and the head's) forwards when `precision` is bf16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _normalizer(self, robot: str):
        from pathlib import Path

        if self.dataset is not None:
            for e, n in self._stats:
                if Path(e["dataset"]).name == self.dataset:
                    return n
            names = [Path(e["dataset"]).name for e, _ in self._stats]
            raise ConfigError(f"dataset {self.dataset!r} is not one the policy trained on: {names}")
        for e, n in self._stats:
            if e.get("robot_type") == robot:
                return n
        return self._stats[0][1]

    def _visual(self, observation) -> torch.Tensor:
        from clap_vla.types import IMAGES

        images = observation[IMAGES]
        if not images:
            raise ConfigError("the observation has no images")
        cam = self.camera if self.camera in images else next(iter(images))
        if self.camera and self.camera not in images:
            raise ConfigError(f"the policy reads camera {self.camera!r}; the observation has {list(images)}")
        img = torch.from_numpy(np.ascontiguousarray(np.asarray(images[cam], np.uint8).transpose(2, 0, 1)))[None]
        if self.pixels:
            return img[:, None].to(self.device)  # (1, 1, 3, h, w)
        return self.encoder.encode(img)[:, None]  # (1, 1, P, C)

    def _chunk(self, visual: torch.Tensor, prompt: list[int], mask: np.ndarray) -> np.ndarray:
        """Greedy tokens -> Act-VAE decoder -> normalised chunk (H, A, D)."""
        nq = self.model.cfg.codes_per_arm
        with self._autocast():
            text, acts, _ = self.model.generate(visual, [prompt], [int(mask.sum()) * nq], use_cache=self.use_cache)
        self.last_timing.update(self.model.last_timing)
        t0 = time.perf_counter()
        self.last_subtask = self.model.tokenizer.decode(text[0])
        codes = ids_to_codes(acts[0], mask, nq, self.model.act_offset)
        chunk = self.act_vae.decode(torch.from_numpy(codes)[None].to(self.device))[0].cpu().numpy()
        self.last_timing["post_s"] = time.perf_counter() - t0
        return chunk

    @torch.no_grad()
    def infer(self, observation) -> np.ndarray:
        """Observation -> absolute chunk (H, n*7); `last_timing` holds the seconds spent in encode,
        prefix, decode (or denoise) and post (tokens/velocities -> absolute actions)."""
        from clap_vla.data.action_space import ArmLayout
        from clap_vla.types import INSTRUCTION, ROBOT_TYPE, STATE

        t0 = time.perf_counter()
        robot = str(observation.get(ROBOT_TYPE) or "robot")
        norm = self._normalizer(robot)
        layout = ArmLayout(tuple(norm.stats.arms))
        state = layout.to_unified(np.asarray(observation[STATE], np.float64))  # (A, D)
        prompt = self.text.prompt(robot, str(observation.get(INSTRUCTION, "")))
        visual = self._visual(observation)
        self.last_timing = {"encode_s": time.perf_counter() - t0}
        chunk = self._chunk(visual, prompt, layout.arm_mask)  # (H, A, D) normalised
        t1 = time.perf_counter()
        out = layout.from_unified(norm.unnormalize(chunk, state)).astype(np.float32)  # (H, n*7)
        self.last_timing["post_s"] = self.last_timing.get("post_s", 0.0) + time.perf_counter() - t1
        return out


_POLICIES: dict[tuple[str, str], NTPPolicy] = {}


def cached_policy(artifact, cls: type[NTPPolicy] = NTPPolicy) -> NTPPolicy:
    """One loaded policy per (artifact, policy class) per process (rollout workers call this per
    episode)."""
    from pathlib import Path

    key = (str(Path(artifact).resolve()), cls.__qualname__)
    if key not in _POLICIES:
        _POLICIES[key] = cls(artifact)
    return _POLICIES[key]


__all__ = [
    "ACTION_MARK",
    "IGNORE",
    "PROMPT",
    "TARGET",
    "NTPConfig",
    "NTPModel",
    "NTPPolicy",
    "cached_policy",
    "codes_to_ids",
    "ids_to_codes",
    "load_ntp",
    "prefix_lengths",
    "prompt_text",
    "target_text",
]
