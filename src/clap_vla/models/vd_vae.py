"""VD-VAE: video transitions -> the Act-VAE's action tokens (paper §III-C2, Algorithm 2, eq. 3-4).

    frame features f_t, f_t+H (frozen backbone, (B, F=2, P, C))
      -> layer-normed, Linear -> width, + patch and frame embeddings
      -> [L latent tokens ; P patches] per frame, L = 2 environment + A * Nq action tokens
      -> inverse encoder: blocks of [spatial attention within a frame -> causal temporal attention
         across the two frames -> MLP] (reference facts: the release's factorised blocks)
      -> the latents of the SECOND frame: action latents z_v,a (A, Nq, Cd), environment z_v,i (E, Ce)
    z_v,a -> the FROZEN Act-VAE codebook (straight-through); z_v,i -> a learnable env codebook
    forward decoder (spatial attention only): [quantised latents ; f_t patches] -> f_t+H patches

Loss (eq. 4, weights from Table IX): feature MSE + lambda_vq (VQ + commitment of both codebooks)
+ lambda_con SigLIP(z_v,a, z_a+) + lambda_reg |z_v,i|_1. The contrastive positive z_a+ is the
frozen Act-VAE's quantised code vectors of the true chunk for robot samples, and an EMA teacher of
the inverse encoder run on the clean transition for action-free samples (the student sees the
augmented one; `video_positive="none"` leaves action-free samples out of this term, Table VII's
"w/o Pseudo Positive Label"). Contrastive items are (sample, present arm) pairs: per arm the Nq x Cd latents are
flattened and L2-normalised (reference facts). Robot items whose true token sequences are equal
count as positives of each other rather than as negatives.

Features are layer-normalised per patch (no affine) on the way in and as the reconstruction target,
so loss scales do not depend on which frame encoder made them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clap_vla.errors import ConfigError
from clap_vla.models.act_vae import ActVAE
from clap_vla.nn.quantizer import VectorQuantizer
from clap_vla.nn.transformer import Attention, SkipTransformer
from clap_vla.types import NUM_ARMS, TransitionBatch


@dataclass(frozen=True)
class VDVAEConfig:
    feature_dim: int = 112
    """C: channels of the frame encoder's patch features (the stage sets it from the encoder)."""
    num_patches: int = 64
    """P: patches per frame (the stage sets it from the encoder and image size)."""
    codes_per_arm: int = 16
    """Nq: must equal the Act-VAE's (the stage takes it from the Act-VAE artifact)."""
    code_dim: int = 64
    """Cd: the Act-VAE's code dimension (taken from the artifact)."""
    env_tokens: int = 2
    """Environment (action-irrelevant) latent tokens (Table IX: 2 task-irrelevant codes)."""
    env_codes: int = 512
    """Size of the learnable environment codebook (reference facts: 512 x 128)."""
    env_code_dim: int = 64
    width: int = 256
    heads: int = 4
    ffn: int = 512
    enc_layers: int = 4
    dec_layers: int = 4
    beta: float = 1.0
    """Commitment weight (Table IX)."""
    w_rec: float = 1.0
    w_vq: float = 1.0
    w_con: float = 0.1
    """lambda_con (Table IX: 0.1); 0 is the no-contrastive ablation."""
    w_reg: float = 0.5
    """lambda_reg (Table IX: 0.5)."""
    teacher_decay: float = 0.999
    """EMA rate mu of the teacher encoder (Algorithm 2 line 29). Its time constant, 1 / (1 - mu)
    steps (1000 at 0.999), should be short next to the schedule: over a schedule not much longer
    than it the teacher stays close to the randomly initialised encoder."""
    video_positive: str = "teacher"
    """Action-free samples' contrastive positive: the EMA teacher on the clean transition ("teacher",
    the paper) or none ("none": they take no part in the contrastive term and train through
    reconstruction, VQ and L1 only; Table VII's "w/o Pseudo Positive Label" ablation)."""
    w_usage: float = 0.0
    """Not in the paper (0 = off): weight of losses.code_usage_kl, which pulls the action-free
    samples' soft code usage toward the robot samples' true-code histogram in each batch (the global
    batch under DDP/FSDP), against their latents collapsing onto a few codes (docs/results.md,
    "Reading the hand")."""
    usage_tau: float = 0.1
    """Temperature of code_usage_kl's soft assignment, relative to the batch's mean squared distance."""
    robot_positive: str = "quantized"
    """Robot samples' contrastive target: the Act-VAE's quantised code vectors ("quantized", the
    release; the VD-VAE is scored on reproducing exactly those codes) or its encoder outputs before
    quantisation ("encoder", the paper's sg(E_act(a_gt)) read literally)."""
    env_restart_every: int = 500
    """Dead-code restart period of the environment codebook (0 = off)."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("feature_dim", "num_patches", "codes_per_arm", "code_dim", "env_tokens", "env_codes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"VDVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(f"VDVAEConfig.width {self.width} is not divisible by heads {self.heads}")
        if self.enc_layers < 1 or self.dec_layers < 1:
            raise ConfigError(f"need >= 1 encoder and decoder layers, got {self.enc_layers}, {self.dec_layers}")
        for name in ("w_rec", "w_vq", "w_con", "w_reg", "w_usage", "beta"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"VDVAEConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.robot_positive not in ("quantized", "encoder"):
            raise ConfigError(f"VDVAEConfig.robot_positive must be quantized or encoder, got {self.robot_positive!r}")
        if self.video_positive not in ("teacher", "none"):
            raise ConfigError(f"VDVAEConfig.video_positive must be teacher or none, got {self.video_positive!r}")
        if not self.usage_tau > 0:
            raise ConfigError(f"VDVAEConfig.usage_tau must be > 0, got {self.usage_tau}")
        if not 0 <= self.teacher_decay < 1:
            raise ConfigError(f"VDVAEConfig.teacher_decay must be in [0, 1), got {self.teacher_decay}")

    @property
    def num_latents(self) -> int:
        return self.env_tokens + NUM_ARMS * self.codes_per_arm


VD_VAE_PRESETS = {
    # Table IX / reference facts: 12 + 12 layers, env codebook 512 x 128, ~200 M parameters with a
    # ViT-B backbone's 768-channel features. The robot positive is the paper's sg(E_act(a_gt))
    # (§III-C2, Algorithm 2 line 19), the Act-VAE encoder's output before quantisation.
    "vd_vae_paper": VDVAEConfig(
        feature_dim=768,
        num_patches=300,
        codes_per_arm=8,
        code_dim=128,
        env_code_dim=128,
        width=768,
        heads=12,
        ffn=3072,
        enc_layers=12,
        dec_layers=12,
        robot_positive="encoder",
    ),
    "vd_vae_small": VDVAEConfig(width=128, heads=4, ffn=256, enc_layers=4, dec_layers=3, env_codes=64, env_code_dim=32),
    "vd_vae_tiny": VDVAEConfig(
        width=32, heads=2, ffn=64, enc_layers=1, dec_layers=1, env_codes=16, env_code_dim=8, env_restart_every=0
    ),
}


def normalize_features(f: torch.Tensor) -> torch.Tensor:
    """Per-patch layer norm without affine, in fp32: (..., C) -> (..., C)."""
    return F.layer_norm(f.float(), (f.shape[-1],))


class FactorizedBlock(nn.Module):
    """Spatial attention within each frame, then causal temporal attention across frames (each
    token position attends to itself in earlier frames), then an MLP; pre-norm residuals."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.norm_s, self.attn_s = nn.LayerNorm(width), Attention(width, heads)
        self.norm_t, self.attn_t = nn.LayerNorm(width), Attention(width, heads)
        self.norm_m = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, Fr, S, W = x.shape
        h = x.reshape(B * Fr, S, W)
        h = h + self.drop(self.attn_s(self.norm_s(h)))  # (B*F, S, W)
        h = h.reshape(B, Fr, S, W)
        h = h + self.drop(causal_frame_attention(self.attn_t, self.norm_t(h)))
        return h + self.drop(self.mlp(self.norm_m(h)))


def causal_frame_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Causal attention across frames at each token position: (B, F, S, W) -> (B, F, S, W).

    For the VD-VAE's two frames this is written out: frame 0 can only attend to itself (its output
    is its own value), frame 1 takes a 2-way softmax over (frame 0, frame 1). SDPA over B*S
    sequences of length 2 spends most of its time on launch overhead and layout copies (about 20%
    of a training step on CPU, and its bf16 backward is slower still). Other frame counts use SDPA
    with a causal mask, which is also the reference the parity test compares against."""
    B, Fr, S, W = x.shape
    nh = attn.heads
    hs = W // nh
    q, k, v = attn.qkv(x).view(B, Fr, S, 3, nh, hs).unbind(3)  # each (B, F, S, nh, hs)
    if Fr == 2:
        scores = torch.einsum("bsnd,bfsnd->bsnf", q[:, 1], k) * hs**-0.5  # (B, S, nh, 2)
        w = scores.softmax(-1)
        y1 = torch.einsum("bsnf,bfsnd->bsnd", w, v)  # (B, S, nh, hs)
        y = torch.stack([v[:, 0], y1], dim=1)  # (B, F, S, nh, hs)
    else:
        q, k, v = (t.permute(0, 2, 3, 1, 4).reshape(B * S, nh, Fr, hs) for t in (q, k, v))  # (B*S, nh, F, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.reshape(B, S, nh, Fr, hs).permute(0, 3, 1, 2, 4)  # (B, F, S, nh, hs)
    return attn.proj(y.reshape(B, Fr, S, W))


class InverseEncoder(nn.Module):
    """(B, 2, P, C) normalised features -> (action latents (B, A, Nq, Cd), env latents (B, E, Ce))."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.feat_in = nn.Linear(cfg.feature_dim, W)
        self.patch_pos_emb = nn.Parameter(torch.randn(cfg.num_patches, W) * 0.02)
        self.frame_emb = nn.Parameter(torch.randn(2, W) * 0.02)
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, W) * 0.02)
        self.blocks = nn.ModuleList(FactorizedBlock(W, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(W)
        self.to_action = nn.Sequential(nn.Linear(W, W), nn.GELU(), nn.Linear(W, cfg.code_dim))
        self.to_env = nn.Sequential(nn.Linear(W, W), nn.GELU(), nn.Linear(W, cfg.env_code_dim))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, E = feats.shape[0], self.cfg.num_latents, self.cfg.env_tokens
        x = self.feat_in(feats) + self.patch_pos_emb  # (B, 2, P, W)
        lat = self.latents.expand(B, 2, -1, -1)  # (B, 2, L, W)
        x = torch.cat([lat, x], dim=2) + self.frame_emb[None, :, None]  # (B, 2, L + P, W)
        for block in self.blocks:
            x = block(x)
        z = self.norm(x[:, 1, :L])  # (B, L, W): latents read at the second frame
        z_env = self.to_env(z[:, :E])  # (B, E, Ce)
        z_act = self.to_action(z[:, E:]).reshape(B, NUM_ARMS, self.cfg.codes_per_arm, self.cfg.code_dim)
        return z_act, z_env


class ForwardDecoder(nn.Module):
    """f_t patches + quantised latents -> predicted f_t+H patches (spatial attention only)."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.act_in = nn.Linear(cfg.code_dim, W)
        self.env_in = nn.Linear(cfg.env_code_dim, W)
        self.slot_emb = nn.Parameter(torch.randn(cfg.num_latents, W) * 0.02)
        self.absent = nn.Parameter(torch.zeros(W))  # stands in for an absent arm's codes
        self.feat_in = nn.Linear(cfg.feature_dim, W)
        self.patch_pos_emb = nn.Parameter(torch.randn(cfg.num_patches, W) * 0.02)
        self.blocks = SkipTransformer(W, cfg.dec_layers, cfg.heads, cfg.ffn, skips=False, dropout=cfg.dropout)
        self.out = nn.Linear(W, cfg.feature_dim)

    def forward(
        self, f_t: torch.Tensor, q_act: torch.Tensor, q_env: torch.Tensor, arm_mask: torch.Tensor
    ) -> torch.Tensor:
        a = self.act_in(q_act)  # (B, A, Nq, W)
        a = torch.where(arm_mask[:, :, None, None], a, self.absent.to(a.dtype))
        lat = torch.cat([self.env_in(q_env), a.flatten(1, 2)], dim=1) + self.slot_emb  # (B, L, W)
        x = torch.cat([lat, self.feat_in(f_t) + self.patch_pos_emb], dim=1)  # (B, L + P, W)
        return self.out(self.blocks(x)[:, self.cfg.num_latents :])  # (B, P, C)


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def token_keys(ids: torch.Tensor) -> torch.Tensor:
    """(N, Nq) token ids -> (N,) int64 keys, equal for equal sequences (a fixed random
    multiply-add hash in wrapping int64 arithmetic; collisions are ~2^-62 per pair)."""
    g = torch.Generator().manual_seed(0x5EED)
    mult = torch.randint(1, 2**62, (ids.shape[-1],), generator=g).to(ids.device) | 1
    return (ids.long() * mult).sum(-1) & (2**62 - 1)


class VDVAE(nn.Module):
    def __init__(self, cfg: VDVAEConfig, act_vae: ActVAE):
        super().__init__()
        a = act_vae.cfg
        if (a.codes_per_arm, a.code_dim) != (cfg.codes_per_arm, cfg.code_dim):
            raise ConfigError(
                f"VD-VAE codes_per_arm/code_dim ({cfg.codes_per_arm}, {cfg.code_dim}) must equal the "
                f"Act-VAE's ({a.codes_per_arm}, {a.code_dim})"
            )
        self.cfg = cfg
        self.act_vae = act_vae.requires_grad_(False).eval()
        self.encoder = InverseEncoder(cfg)
        self.teacher = copy.deepcopy(self.encoder).requires_grad_(False).eval()
        self.env_quantizer = VectorQuantizer(
            cfg.env_codes, cfg.env_code_dim, beta=cfg.beta, restart_every=cfg.env_restart_every
        )
        self.decoder = ForwardDecoder(cfg)
        # SigLIP's learnable log-temperature and bias, owned by the model (init log 10 and -10).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self._recent_env: torch.Tensor | None = None

    def train(self, mode: bool = True) -> VDVAE:
        super().train(mode)
        self.act_vae.eval()  # frozen: its quantiser must not count usage either
        self.teacher.eval()
        return self

    # -- training ------------------------------------------------------------------------------
    def compute_loss(self, batch: TransitionBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from clap_vla import losses

        cfg, Nq = self.cfg, self.cfg.codes_per_arm
        self._check_features(batch.features, "features")
        self._check_features(batch.features_aug, "features_aug")
        clean = normalize_features(batch.features)  # (B, 2, P, C)
        student_in = normalize_features(batch.features_aug)
        arm = batch.arm_mask  # (B, A)
        z_act, z_env = self.encoder(student_in)  # (B, A, Nq, Cd), (B, E, Ce)
        code_mask = arm[:, :, None].expand(-1, -1, Nq)  # (B, A, Nq)
        qa = self.act_vae.quantizer(z_act, mask=code_mask)  # frozen codebook: only the commitment trains
        qe = self.env_quantizer(z_env)
        if self.training:
            self._recent_env = z_env.detach().float().reshape(-1, cfg.env_code_dim)
        pred = self.decoder(clean[:, 0], qa.quantized, qe.quantized, arm)  # (B, P, C)
        rec = losses.feature_mse(pred.float(), clean[:, 1])
        # VQ(z_v,a; C_act) with this config's beta (the frozen codebook's own term has no gradient).
        commit_act = cfg.beta * losses.feature_mse(z_act.float(), qa.quantized.detach().float(), code_mask)
        vq = commit_act + qe.loss
        reg = losses.l1_mean(z_env.float())

        # Positives z_a+ (Algorithm 2 lines 18-23), all stop-gradient, in fp32 whatever the autocast
        # (bf16 would flip some of the Act-VAE's token ids against the fp32 ones labelling uses).
        robot = batch.has_action
        pos = torch.zeros(z_act.shape, device=z_act.device)  # (B, A, Nq, Cd) fp32
        true_ids = torch.full(z_act.shape[:3], -1, dtype=torch.long, device=z_act.device)
        with torch.no_grad(), torch.autocast(z_act.device.type, enabled=False):
            if robot.any():
                ids, vec = self.act_vae.encode_vectors(
                    batch.actions[robot].float(), arm[robot], quantized=cfg.robot_positive == "quantized"
                )
                pos[robot], true_ids[robot] = vec, ids
            if (~robot).any() and cfg.video_positive == "teacher":
                pos[~robot] = self.teacher(clean[~robot])[0].float()
        # (B, A): contrastive items are present arms (of robot samples only without video positives)
        items = arm if cfg.video_positive == "teacher" else arm & robot[:, None]
        z_items = z_act[items].flatten(1)  # (N, Nq * Cd)
        p_items = pos[items].flatten(1)
        item_robot = robot[:, None].expand_as(arm)[items]  # (N,)
        keys = torch.where(item_robot, token_keys(true_ids[items]), torch.full_like(item_robot, -1, dtype=torch.long))
        if z_items.shape[0] or _distributed():  # a rank without items still joins the collective
            con = losses.distributed_siglip_loss(z_items, p_items, self.logit_scale, self.logit_bias, pos_key=keys)
        else:  # single process, no items (all action-free with video_positive none): 0, still in the graph
            con = 0.0 * (z_act.sum() + self.logit_scale + self.logit_bias)
        loss = cfg.w_rec * rec + cfg.w_vq * vq + cfg.w_con * con + cfg.w_reg * reg
        usage = torch.zeros((), device=loss.device)
        video_items, robot_items = arm & ~robot[:, None], arm & robot[:, None]
        if cfg.w_usage > 0:
            # Called on every rank, even one without video or robot items: under DDP it is a collective
            # over the global batch (0 when no rank has video items or none has robot items).
            counts = torch.bincount(true_ids[robot_items].reshape(-1), minlength=self.act_vae.quantizer.num_codes)
            codebook = self.act_vae.quantizer.codebook
            usage = losses.distributed_code_usage_kl(
                z_act[video_items].reshape(-1, codebook.shape[1]), codebook, counts, cfg.usage_tau
            )
            loss = loss + cfg.w_usage * usage

        with torch.no_grad():
            hit = (qa.indices == true_ids)[robot_items]  # (M, Nq) robot arms only
            metrics = {
                "rec": rec.detach(),
                "vq": vq.detach(),
                "con": con.detach(),
                "reg": reg.detach(),
                "usage": usage.detach(),
                "token_acc": hit.float().mean() if hit.numel() else torch.tensor(float("nan")),
                "act_usage": qa.usage,
                "env_perplexity": qe.perplexity,
                "logit_scale": self.logit_scale.detach().exp(),
                "robot_frac": robot.float().mean(),
            }
        return loss, metrics

    def _check_features(self, f: torch.Tensor, name: str) -> None:
        want = (2, self.cfg.num_patches, self.cfg.feature_dim)
        if f.ndim != 4 or tuple(f.shape[1:]) != want:
            raise ValueError(
                f"VD-VAE {name}: expected (B, 2 frames, {want[1]} patches, {want[2]} channels) as in training "
                f"(same frame encoder and image size), got {tuple(f.shape)}"
            )

    @torch.no_grad()
    def update_teacher(self) -> None:
        """teacher <- mu * teacher + (1 - mu) * student (Algorithm 2 line 29)."""
        for t, s in zip(self.teacher.parameters(), self.encoder.parameters(), strict=True):
            t.lerp_(s.detach(), 1.0 - self.cfg.teacher_decay)

    def after_step(self, step: int, info=None) -> dict[str, float]:
        self.update_teacher()
        if self._recent_env is None or not self.cfg.env_restart_every:
            return {}
        gen = torch.Generator(device="cpu").manual_seed(1_000_003 * (step + 1))
        if step == 0:  # data-dependent init of the env codebook, as for the Act-VAE's
            n = self.env_quantizer.restart_dead_codes(self._recent_env, generator=gen)
        else:
            n = self.env_quantizer.maybe_restart(self._recent_env, step + 1, gen)
        return {"restarted_env_codes": float(n)} if n else {}

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def infer_codes(
        self, features: torch.Tensor, arm_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 2, P, C) clean features of (o_t, o_t+H) -> (token ids (B, A, Nq), squared distance of
        each latent to its chosen code (B, A, Nq), the latents (B, A, Nq, Cd)); absent arms: id -1,
        distance NaN."""
        self._check_features(features, "features")
        z_act, _ = self.encoder(normalize_features(features))
        q = self.act_vae.quantizer(z_act.float())
        dist = ((z_act.float() - q.quantized.float()) ** 2).sum(-1)  # (B, A, Nq)
        absent = ~arm_mask[:, :, None].expand_as(q.indices)
        return q.indices.masked_fill(absent, -1), dist.masked_fill(absent, float("nan")), z_act.float()


def load_vd_vae(artifact: str | Path, device: str | torch.device = "cpu") -> tuple[VDVAE, dict]:
    """A VD-VAE artifact -> (model in eval mode, its config.json merged into meta.json as "config")."""
    from clap_vla.errors import ClapError
    from clap_vla.models.act_vae import ActVAEConfig
    from clap_vla.train import checkpoint as ck

    artifact = Path(artifact)
    config = ck.read_json(artifact / ck.CONFIG)
    if "model" not in config or "act_vae_model" not in config:
        raise ClapError(f"{artifact / ck.CONFIG}: no 'model'/'act_vae_model' sections; is this a VD-VAE artifact?")
    try:
        model = VDVAE(VDVAEConfig(**config["model"]), ActVAE(ActVAEConfig(**config["act_vae_model"])))
    except TypeError as e:
        raise ClapError(f"{artifact / ck.CONFIG}: model sections do not fit the configs ({e})") from e
    missing, unexpected = model.load_state_dict(ck.load_weights(artifact / ck.MODEL), strict=False)
    if missing or unexpected:
        raise ClapError(
            f"{artifact / ck.MODEL}: weights do not fit the config (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    meta = ck.read_json(artifact / ck.META) if (artifact / ck.META).exists() else {}
    return model.to(device).eval(), {**meta, "config": config}
