"""CLAP-RF: the NTP policy's VLM with a rectified-flow head, trained with Knowledge Matching
(paper §III-E, eq. 7, Algorithm 4 stage 2).

    loss = L_flow(head(x_t, t | VLM prefix), eps - a)                          (models/rf_head.py)
         + alpha * mean_target_positions KL(p_policy || p_ref)                 (KM, eq. 7; alpha 0.005)

The policy branch is the (stage-1 adapted) NTP model and trains; the reference is a frozen copy of
it. KM reads both models' next-token distributions at the target positions of the ground-truth
sequence, subtask text and action tokens (teacher forcing; `km_tokens="action"` keeps the action
tokens only, as the release does), so the policy keeps speaking its subtasks and action tokens
while its layers learn to serve the flow head. Ablations (Table VI): `km_weight=0` is plain fine-tuning;
`ki=True` is knowledge insulation: the head reads a detached context, and the VLM learns only from
the token loss on the ground-truth action tokens.

The head reads the prefix only (images + prompt): at inference there is one prefix forward with
the KV cache, then N Euler steps of the head alone.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from clap_vla.artifacts import TOKENIZER_DIR
from clap_vla.errors import ConfigError
from clap_vla.losses import KL_DIRECTIONS, flow_matching_loss, knowledge_matching_kl
from clap_vla.models.ntp_policy import IGNORE, NTPModel, NTPPolicy, prefix_lengths
from clap_vla.models.rf_head import (
    RFHead,
    RFHeadConfig,
    euler_sample,
    sample_time,
    seeded_noise_and_time,
    select_layers,
)
from clap_vla.train.distributed import global_count
from clap_vla.types import ARM_DIM, NUM_ARMS, NTPBatch

REFERENCE = "reference"
KM_TOKENS = ("target", "action")


@dataclass(frozen=True)
class ClapConfig:
    rf: RFHeadConfig = field(default_factory=RFHeadConfig)
    km_weight: float = 0.005
    """alpha of Knowledge Matching (release: 0.005); 0 = off (plain fine-tuning)."""
    kl_direction: str = "policy_ref"
    """policy_ref = KL(p_policy || p_ref), the paper's eq. 7; ref_policy = the reverse (the release's
    default: the reference is the target of its kl_div)."""
    km_tokens: str = "target"
    """Where Knowledge Matching reads the KL: "target" = every target token of the NTP output, subtask
    text and action tokens (eq. 7's l = 1..L_y, Fig. 3's blue blocks); "action" = the action tokens
    only (the release, whose post-training batches carry no subtask text). Either way the KL is
    averaged over the positions pooled across the batch, as the release does and as its alpha = 0.005
    was set for: eq. 7's sum over l equals L_y times this mean, so alpha_sum = alpha / L_y."""
    ki: bool = False
    """Knowledge insulation: the head's context is detached; the VLM trains on the action-token CE."""
    token_weight: float = 1.0
    """Weight of the action-token CE when ki is on. 0 with ki freezes the VLM: no loss reaches it,
    so it runs without autograd and stays out of the optimizer (the head learns on fixed features)."""

    def __post_init__(self) -> None:
        if self.km_weight < 0 or self.token_weight < 0:
            raise ConfigError(f"km_weight and token_weight must be >= 0, got {self.km_weight}, {self.token_weight}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ConfigError(f"kl_direction must be one of {KL_DIRECTIONS}, got {self.kl_direction!r}")
        if self.km_tokens not in KM_TOKENS:
            raise ConfigError(f"km_tokens must be one of {KM_TOKENS}, got {self.km_tokens!r}")
        if self.ki and self.km_weight > 0:
            raise ConfigError("ki and km are alternatives (Table VI): set km_weight 0 with ki")

    @property
    def vlm_frozen(self) -> bool:
        """Knowledge insulation without the token loss: nothing trains the VLM."""
        return self.ki and self.token_weight == 0


def vlm_dims(vlm) -> dict:
    """What a cross-attention block needs to know about the VLM (width, heads, KV heads, head size)."""
    conf = vlm.lm.config if hasattr(vlm, "lm") else vlm.model.config.text_config
    heads = conf.num_attention_heads
    return {
        "vlm_width": conf.hidden_size,
        "vlm_heads": heads,
        "vlm_kv_heads": getattr(conf, "num_key_value_heads", heads) or heads,
        "vlm_head_dim": getattr(conf, "head_dim", None) or conf.hidden_size // heads,
    }


class ClapModel(nn.Module):
    """Policy VLM + RF head (trainable) + frozen reference VLM (not saved: it is the parent artifact)."""

    def __init__(self, cfg: ClapConfig, policy: NTPModel, horizon: int, reference: NTPModel | None = None):
        super().__init__()
        self.cfg, self.policy, self.horizon = cfg, policy, horizon
        self.layers = select_layers(cfg.rf, policy.vlm.num_layers)
        self.head = RFHead(cfg.rf, horizon, NUM_ARMS * ARM_DIM, self.layers, vlm_dims(policy.vlm))
        if cfg.vlm_frozen:  # no backward pass through the VLM, no weight decay on it
            for p in policy.parameters():
                p.requires_grad_(False)
        if reference is not None:
            self.reference = reference.eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        else:
            self.reference = None
        self.last_timing: dict[str, float] = {}  # seconds of the last sample_actions(): prefix, denoise

    def transformer_blocks(self) -> list[nn.Module]:
        """FSDP / activation-checkpointing units: the policy's and the frozen reference's VLM layers
        (the reference is sharded too: at 4B parameters a replica per rank is what FSDP avoids) and
        the head's DiT blocks."""
        ref = self.reference.transformer_blocks() if self.reference is not None else []
        return [*self.policy.transformer_blocks(), *ref, *self.head.blocks]

    # The frozen reference is the parent artifact: keep it out of checkpoints and artifacts.
    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        for k in [k for k in sd if k.startswith(REFERENCE + ".")]:
            del sd[k]
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        res = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in res.missing_keys if not k.startswith(REFERENCE + ".")]
        if strict and (missing or res.unexpected_keys):
            raise RuntimeError(f"missing {missing[:5]}, unexpected {res.unexpected_keys[:5]}")
        return type(res)(missing, res.unexpected_keys)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: no dropout, ever
        return self

    def contexts(self, out, detach: bool) -> list:
        """One context per head block from a VLM forward: cached (keys, values) of its layer (`kv`) or
        the hidden states entering it (`hidden`)."""
        if self.cfg.rf.context == "kv":
            ctx = [(out.cache.layers[i].keys, out.cache.layers[i].values) for i in self.layers]
            return [(k.detach(), v.detach()) for k, v in ctx] if detach else ctx
        if out.hidden_states is None:
            raise ValueError("hidden context needs the VLM's hidden states (output_hidden_states=True)")
        ctx = [out.hidden_states[i] for i in self.layers]
        return [c.detach() for c in ctx] if detach else ctx

    def compute_loss(self, batch: NTPBatch):
        if batch.actions is None:
            raise ValueError("CLAP-RF trains on robot samples with continuous actions (batch.actions is None)")
        pol = self.policy
        full = pol.full_mask(batch)  # (B, T_all)
        prompt = prefix_lengths(batch.labels)  # (B,)
        with torch.no_grad() if self.cfg.vlm_frozen else contextlib.nullcontext():
            out = pol.vlm(
                batch.visual,
                batch.input_ids,
                full,
                output_hidden_states=self.cfg.rf.context == "hidden",
                prefix_len=prompt,
            )
        B, T_all = full.shape
        prefix = out.text_start + prompt  # (B,)
        ctx_mask = full.bool() & (torch.arange(T_all, device=full.device)[None] < prefix[:, None])
        a = batch.actions  # (B, H, A, D)
        H = a.shape[1]
        if batch.sample_seed is not None:
            noise, t = seeded_noise_and_time(batch.sample_seed, tuple(a.shape[1:]), self.cfg.rf)
            noise, t = noise.to(a), t.to(a.device)
        else:
            noise, t = torch.randn_like(a), sample_time(B, self.cfg.rf, a.device)
        x_t = t[:, None, None, None] * noise + (1 - t[:, None, None, None]) * a
        v = self.head(x_t.reshape(B, H, -1), t, self.contexts(out, detach=self.cfg.ki), ctx_mask,
                      _state(batch, self.cfg.rf))  # fmt: skip
        mask = batch.action_valid[:, :, None] & batch.arm_mask[:, None, :]  # (B, H, A)
        flow = flow_matching_loss(v.reshape(a.shape), noise, a, mask)
        loss = flow
        # Next-token distributions at the ground-truth target positions (teacher forcing): subtask
        # text and action tokens, in row-major order (the reference's target_logits uses the same).
        labels = batch.labels[:, 1:]
        target = labels != IGNORE
        tgt_labels = labels[target]  # (M,)
        pol_logits = pol.vlm.logits(out.hidden[:, out.text_start :][:, :-1][target])  # (M, V)
        is_act = tgt_labels >= pol.act_offset
        metrics = {"flow": flow.detach()}
        with torch.no_grad():
            metrics["action_acc"] = (pol_logits[is_act].argmax(-1) == tgt_labels[is_act]).float().mean()
        if self.cfg.km_weight > 0:
            if self.reference is None:
                raise ValueError("Knowledge Matching needs the frozen reference model")
            with torch.no_grad():
                ref_logits, ref_labels, _ = self.reference.target_logits(batch)
            if not torch.equal(ref_labels, tgt_labels):
                raise ValueError("Knowledge Matching: the reference's target positions differ from the policy's")
            keep = is_act if self.cfg.km_tokens == "action" else torch.ones_like(is_act)
            # Mean over the positions of the whole global batch: under DDP the ranks hold different
            # numbers of target tokens (subtask texts differ in length), so each divides its sum by
            # the pooled count rather than taking its own mean.
            kl_sum = knowledge_matching_kl(pol_logits[keep], ref_logits[keep], self.cfg.kl_direction, "sum")
            kl = kl_sum / global_count(keep.sum()).clamp(min=1.0)
            loss = loss + self.cfg.km_weight * kl
            metrics["kl"] = kl.detach()
        if self.cfg.ki and not self.cfg.vlm_frozen:
            ce = nn.functional.cross_entropy(pol_logits[is_act], tgt_labels[is_act])
            loss = loss + self.cfg.token_weight * ce
            metrics["ce_action"] = ce.detach()
        return loss, metrics

    # -- inference -----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_actions(self, visual: torch.Tensor, prompts: list[list[int]], arm_mask: torch.Tensor,
                       steps: int | None = None, state: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        """One prefix forward (images + prompt) with the KV cache, then `steps` Euler steps of the
        head -> normalised chunks (B, H, A, D), zeros for absent arms."""
        pol = self.policy
        B, device = len(prompts), visual.device
        L = max(len(p) for p in prompts)
        ids = torch.zeros(B, L, dtype=torch.long, device=device)
        mask = torch.zeros(B, L, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):  # left padding, as NTPModel.generate
            ids[i, L - len(p) :] = torch.tensor(p, device=device)
            mask[i, L - len(p) :] = 1
        mask = torch.cat([torch.ones(B, pol.vlm.visual_tokens(visual), dtype=torch.long, device=device), mask], 1)
        t0 = time.perf_counter()
        out = pol.vlm(visual, ids, mask, output_hidden_states=self.cfg.rf.context == "hidden")
        ctx = self.contexts(out, detach=True)
        ctx_mask = mask.bool()
        t1 = time.perf_counter()
        x1 = torch.randn(B, self.horizon, NUM_ARMS * ARM_DIM, generator=generator).to(device)
        x0 = euler_sample(lambda x, t: self.head(x, t, ctx, ctx_mask, state), x1, steps or self.cfg.rf.euler_steps)
        x0 = x0.reshape(B, self.horizon, NUM_ARMS, ARM_DIM)
        self.last_timing = {"prefix_s": t1 - t0, "denoise_s": time.perf_counter() - t1}
        return x0 * arm_mask[:, None, :, None].to(x0.dtype)


def _state(batch: NTPBatch, rf: RFHeadConfig) -> torch.Tensor | None:
    if not rf.state_token:
        return None
    if batch.state is None:
        raise ValueError("state_token is on but the batch has no state (the dataset has no observation.state)")
    return batch.state.reshape(len(batch), -1)


def reference_copy(policy: NTPModel) -> NTPModel:
    """A frozen deep copy of the policy (the KM reference)."""
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def load_clap(artifact, device: str | torch.device = "cpu") -> tuple[ClapModel, dict]:
    """A post-training artifact (`clap train post`) -> (ClapModel without its reference, in eval
    mode; its config.json + meta.json)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from clap_vla.errors import ClapError
    from clap_vla.models.ntp_policy import NTPConfig
    from clap_vla.nn.vlm import vlm_config_from_saved
    from clap_vla.train import checkpoint as ck

    artifact = Path(artifact)
    config = ck.read_json(artifact / ck.CONFIG)
    if "clap" not in config or "ntp_model" not in config:
        raise ClapError(f"{artifact / ck.CONFIG}: not a CLAP-RF artifact (no 'clap' / 'ntp_model' section)")
    m = dict(config["ntp_model"])
    ntp_cfg = NTPConfig(**{**m, "vlm": vlm_config_from_saved(m["vlm"])})
    policy = NTPModel(
        ntp_cfg, hf_config=config["hf_config"], tokenizer=AutoTokenizer.from_pretrained(artifact / TOKENIZER_DIR)
    )
    c = dict(config["clap"])
    rf = dict(c.pop("rf"))
    rf["layers"] = tuple(rf["layers"])
    model = ClapModel(ClapConfig(rf=RFHeadConfig(**rf), **c), policy, int(config["horizon"]))
    try:
        model.load_state_dict(ck.load_weights(artifact / ck.MODEL))
    except RuntimeError as e:
        raise ClapError(f"{artifact / ck.MODEL}: weights do not fit the config ({e})") from e
    meta = ck.read_json(artifact / ck.META) if (artifact / ck.META).exists() else {}
    return model.to(device).eval(), {**meta, "config": config}


class ClapPolicy(NTPPolicy):
    """CLAP-RF as a policy: one prefix forward, N Euler steps of the head, un-normalise. `mode="ntp"`
    decodes action tokens with the same (post-trained) VLM instead: the latency comparison at equal
    backbone, and a check that Knowledge Matching kept the policy speaking tokens."""

    def __init__(self, artifact, device: str = "cpu", dataset: str | None = None, steps: int | None = None,
                 mode: str = "rf", seed: int = 0, precision: str = "auto"):  # fmt: skip
        if mode not in ("rf", "ntp"):
            raise ConfigError(f"mode must be rf or ntp, got {mode!r}")
        self.mode, self.steps = mode, steps
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(artifact, device, dataset, precision=precision)

    def _load(self, artifact, device) -> dict:
        self.clap, meta = load_clap(artifact, device)
        self.model = self.clap.policy
        return meta

    def _chunk(self, visual: torch.Tensor, prompt: list[int], mask: np.ndarray) -> np.ndarray:
        if self.mode == "ntp":
            return super()._chunk(visual, prompt, mask)
        arm = torch.from_numpy(np.asarray(mask))[None].to(self.device)
        with self._autocast():
            x = self.clap.sample_actions(visual, [prompt], arm, self.steps, generator=self.generator)
        self.last_timing.update(self.clap.last_timing)
        return x[0].float().cpu().numpy()


def cached_policy(artifact) -> ClapPolicy:
    """One loaded CLAP-RF policy per artifact per process (rollout workers call this per episode)."""
    from clap_vla.models.ntp_policy import cached_policy as cached

    return cached(artifact, ClapPolicy)


__all__ = [
    "ClapConfig",
    "ClapModel",
    "ClapPolicy",
    "cached_policy",
    "load_clap",
    "prefix_lengths",
    "reference_copy",
    "vlm_dims",
]
