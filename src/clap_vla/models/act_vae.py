"""Act-VAE: robot action chunks <-> discrete action tokens (paper §III-C1, Algorithm 1).

Each arm's chunk (H, D=7) is encoded on its own with shared weights (reference facts: the release
encodes arms separately; a bimanual chunk is 2 x Nq tokens):

    steps (H, 7) -> Linear -> + pos        Nq learned register tokens prepended
    [registers; steps] -> transformer (U-Net skips) -> register outputs -> Linear + MLP -> z_e (Nq, Cd)
    z_e -> nearest codebook vector (K x Cd, fp32, straight-through) -> z_q
    z_q -> MLP -> width; [z_q; H learned queries] -> transformer -> query outputs -> Linear -> (H, 7)

Loss (reference facts: MSE reconstruction + codebook + beta * commitment, beta = 1, no KL term):
MSE over the valid steps of the present arms, plus the quantiser's codebook and commitment terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clap_vla.errors import ConfigError
from clap_vla.nn.quantizer import VectorQuantizer
from clap_vla.nn.transformer import SkipTransformer
from clap_vla.train.distributed import global_count
from clap_vla.types import ARM_DIM, NUM_ARMS, ChunkBatch

PSNR_RANGE = 2.0  # R in eq. 8: the dynamic range of the normalised data ([-1, 1])


@dataclass(frozen=True)
class ActVAEConfig:
    horizon: int = 32
    """H: steps per chunk (paper Table IX)."""
    action_dim: int = ARM_DIM
    """D: per-arm action dimension."""
    codes_per_arm: int = 8
    """Nq per arm (paper Table IX: 8 codes per arm)."""
    num_codes: int = 256
    """K: codebook size (paper Table V operating point; the release uses 512)."""
    code_dim: int = 128
    """Cd: code vector dimension."""
    width: int = 512
    heads: int = 4
    ffn: int = 1024
    enc_layers: int = 15
    dec_layers: int = 15
    skips: bool = True
    """U-Net-style long skips in both transformer stacks."""
    beta: float = 1.0
    """Commitment weight."""
    restart_every: int = 2000
    """Dead-code restart period in steps (0 = off)."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("horizon", "action_dim", "codes_per_arm", "num_codes", "code_dim", "width", "heads", "ffn"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ActVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(f"ActVAEConfig.width {self.width} is not divisible by heads {self.heads}")
        if self.enc_layers < 1 or self.dec_layers < 1:
            raise ConfigError(f"need >= 1 encoder and decoder layers, got {self.enc_layers}, {self.dec_layers}")

    @property
    def bits_per_arm(self) -> float:
        return self.codes_per_arm * math.log2(self.num_codes)


ACT_VAE_PRESETS = {
    # The release's size (reference facts): width 512, 4 heads, FFN 1024, 15 layers with skips.
    "act_vae_paper": ActVAEConfig(),
    "act_vae_small": ActVAEConfig(width=128, heads=4, ffn=256, enc_layers=4, dec_layers=4, code_dim=64),
    "act_vae_tiny": ActVAEConfig(
        horizon=8, width=32, heads=2, ffn=64, enc_layers=2, dec_layers=2, code_dim=16, num_codes=64, codes_per_arm=4
    ),
}


class ActVAE(nn.Module):
    def __init__(self, cfg: ActVAEConfig):
        super().__init__()
        self.cfg = cfg
        W, H, Nq = cfg.width, cfg.horizon, cfg.codes_per_arm
        self.step_in = nn.Linear(cfg.action_dim, W)
        self.enc_pos_emb = nn.Parameter(torch.randn(H, W) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(Nq, W) * 0.02)
        self.encoder = SkipTransformer(W, cfg.enc_layers, cfg.heads, cfg.ffn, cfg.skips, cfg.dropout)
        self.to_code = nn.Sequential(nn.Linear(W, W), nn.GELU(), nn.Linear(W, cfg.code_dim))
        self.quantizer = VectorQuantizer(cfg.num_codes, cfg.code_dim, beta=cfg.beta, restart_every=cfg.restart_every)
        self.from_code = nn.Sequential(nn.Linear(cfg.code_dim, W), nn.GELU(), nn.Linear(W, W))
        self.dec_pos_emb = nn.Parameter(torch.randn(Nq + H, W) * 0.02)
        self.query_tokens = nn.Parameter(torch.randn(H, W) * 0.02)
        self.decoder = SkipTransformer(W, cfg.dec_layers, cfg.heads, cfg.ffn, cfg.skips, cfg.dropout)
        self.step_out = nn.Linear(W, cfg.action_dim)
        self._recent_z: torch.Tensor | None = None  # last training batch's encoder outputs (restarts)

    # -- checks ---------------------------------------------------------------------------------
    def _check(self, actions: torch.Tensor, arm_mask: torch.Tensor) -> None:
        H, D = self.cfg.horizon, self.cfg.action_dim
        if actions.ndim != 4 or actions.shape[1:] != (H, NUM_ARMS, D):
            raise ValueError(
                f"Act-VAE expects action chunks of shape (B, {H}, {NUM_ARMS}, {D}), got {tuple(actions.shape)}"
            )
        if arm_mask.shape != (actions.shape[0], NUM_ARMS) or arm_mask.dtype != torch.bool:
            raise ValueError(f"arm_mask must be bool (B, {NUM_ARMS}), got {arm_mask.dtype} {tuple(arm_mask.shape)}")
        bad = ~torch.isfinite(actions.permute(0, 2, 1, 3)[arm_mask])  # (N, H, D) present arms
        if bad.any():
            raise ValueError(f"action chunks hold {int(bad.sum())} non-finite values (NaN/inf) in present arms")

    # -- encode / decode ------------------------------------------------------------------------
    def _encode_arms(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, D) per-arm chunks -> (N, Nq, Cd) pre-quantisation latents."""
        N = x.shape[0]
        h = self.step_in(x) + self.enc_pos_emb  # (N, H, W)
        h = torch.cat([self.register_tokens.expand(N, -1, -1), h], dim=1)  # (N, Nq + H, W)
        h = self.encoder(h)[:, : self.cfg.codes_per_arm]  # (N, Nq, W)
        return self.to_code(h)  # (N, Nq, Cd)

    def _decode_arms(self, zq: torch.Tensor) -> torch.Tensor:
        """(N, Nq, Cd) quantised latents -> (N, H, D) chunks."""
        N = zq.shape[0]
        h = torch.cat([self.from_code(zq), self.query_tokens.expand(N, -1, -1)], dim=1) + self.dec_pos_emb
        h = self.decoder(h)[:, self.cfg.codes_per_arm :]  # (N, H, W)
        return self.step_out(h)  # (N, H, D)

    @torch.no_grad()
    def encode(self, actions: torch.Tensor, arm_mask: torch.Tensor) -> torch.Tensor:
        """(B, H, A, D) normalised chunks -> token ids (B, A, Nq); -1 marks an absent arm."""
        return self.encode_vectors(actions, arm_mask)[0]

    @torch.no_grad()
    def encode_vectors(
        self, actions: torch.Tensor, arm_mask: torch.Tensor, quantized: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, A, D) chunks -> (token ids (B, A, Nq), vectors (B, A, Nq, Cd) fp32): the code
        vectors of the ids, or with `quantized=False` the encoder outputs z_e before quantisation.
        Absent arms get id -1 and zero vectors. The VD-VAE's contrastive target for robot samples
        (paper §III-C2: z_a+ = sg(E_act(a_gt)); the release uses the quantised vectors)."""
        self._check(actions, arm_mask)
        z = self._encode_arms(actions.permute(0, 2, 1, 3)[arm_mask]).float()  # (N, Nq, Cd)
        ids = self.quantizer(z).indices  # (N, Nq)
        codes = torch.full((*arm_mask.shape, self.cfg.codes_per_arm), -1, dtype=torch.long, device=z.device)
        codes[arm_mask] = ids
        vectors = torch.zeros(*codes.shape, self.cfg.code_dim, device=z.device)
        vectors[arm_mask] = self.quantizer.lookup(ids).float() if quantized else z
        return codes, vectors

    @torch.no_grad()
    def encode_with_distance(self, actions: torch.Tensor, arm_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids (B, A, Nq), squared distance of each latent to its code (B, A, Nq), NaN for an
        absent arm): the ids with a confidence, for token shards."""
        self._check(actions, arm_mask)
        z = self._encode_arms(actions.permute(0, 2, 1, 3)[arm_mask])  # (N, Nq, Cd)
        q = self.quantizer(z)
        B, Nq = actions.shape[0], self.cfg.codes_per_arm
        dist = torch.full((B, NUM_ARMS, Nq), float("nan"), device=z.device)
        dist[arm_mask] = ((z.float() - q.quantized.float()) ** 2).sum(-1)
        ids = torch.full((B, NUM_ARMS, Nq), -1, dtype=torch.long, device=z.device)
        ids[arm_mask] = q.indices
        return ids, dist

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids (B, A, Nq), -1 for absent arms -> normalised chunks (B, H, A, D), zeros there."""
        B, A, Nq = codes.shape
        if A != NUM_ARMS or Nq != self.cfg.codes_per_arm:
            raise ValueError(f"codes must be (B, {NUM_ARMS}, {self.cfg.codes_per_arm}), got {tuple(codes.shape)}")
        present = (codes >= 0).all(-1)  # (B, A)
        if ((codes >= 0).any(-1) & ~present).any():
            raise ValueError("an arm's codes mix -1 (absent) with real ids")
        out = torch.zeros(B, NUM_ARMS, self.cfg.horizon, self.cfg.action_dim, device=codes.device)
        if present.any():
            out[present] = self._decode_arms(self.quantizer.lookup(codes[present])).float()
        return out.permute(0, 2, 1, 3)  # (B, H, A, D)

    def forward(self, actions: torch.Tensor, arm_mask: torch.Tensor):
        """Reconstruction with straight-through gradients: (recon (N, H, D), quantiser output, mask)."""
        self._check(actions, arm_mask)
        x = actions.permute(0, 2, 1, 3)[arm_mask]  # (N, H, D)
        z = self._encode_arms(x)  # (N, Nq, Cd)
        q = self.quantizer(z)
        if self.training:
            self._recent_z = z.detach().reshape(-1, z.shape[-1])
        return self._decode_arms(q.quantized), q, x

    def compute_loss(self, batch: ChunkBatch):
        recon, q, target = self(batch.actions, batch.arm_mask)
        valid = batch.action_valid[:, None, :].expand(-1, NUM_ARMS, -1)[batch.arm_mask]  # (N, H)
        err = ((recon.float() - target.float()) ** 2).mean(-1)  # (N, H)
        mse = (err * valid).sum() / global_count(valid.sum()).clamp(min=1e-6)  # over every rank under DDP
        loss = mse + q.codebook_loss + q.commitment_loss
        metrics = {
            "recon_mse": mse.detach(),
            "psnr": psnr(mse.detach()),
            "codebook_loss": q.codebook_loss.detach(),
            "commitment_loss": q.commitment_loss.detach(),
            "perplexity": q.perplexity.detach(),
            "usage": q.usage.detach(),
        }
        return loss, metrics

    def after_step(self, step: int, info=None) -> dict[str, float]:
        """Dead-code restart. After the first step every code the first batch did not pick is moved
        onto an encoder output (a data-dependent codebook init: the U(-1/K, 1/K) start would leave
        most codes unreachable), then every `restart_every` steps."""
        if self._recent_z is None or not self.cfg.restart_every:
            return {}
        gen = torch.Generator(device="cpu").manual_seed(1_000_003 * (step + 1))
        if step == 0:
            n = self.quantizer.restart_dead_codes(self._recent_z, generator=gen)
        else:
            n = self.quantizer.maybe_restart(self._recent_z, step + 1, gen)  # counts steps done
        return {"restarted_codes": float(n)} if n else {}


def psnr(mse: torch.Tensor | float, data_range: float = PSNR_RANGE) -> torch.Tensor:
    """PSNR = 20 log10(R / sqrt(MSE)) (paper eq. 8's distortion term)."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 20 * torch.log10(data_range / mse.clamp(min=1e-20).sqrt())


def rate(
    codes_per_arm: int, num_codes: int, horizon: int, action_dim: int, mse: float, data_range: float = 2.0
) -> float:
    """Paper eq. 8: r = Nq log2 K / (Na Da log2(R / sqrt(MSE))), per arm (Na = H steps, Da = D dims)."""
    return codes_per_arm * math.log2(num_codes) / (horizon * action_dim * math.log2(data_range / math.sqrt(mse)))


def load_act_vae(artifact: str | Path, device: str | torch.device = "cpu") -> tuple[ActVAE, dict]:
    """An Act-VAE artifact directory -> (model in eval mode, its meta.json). Weights must match
    the saved config exactly."""
    from clap_vla.errors import ClapError
    from clap_vla.train import checkpoint as ck

    artifact = Path(artifact)
    config = ck.read_json(artifact / ck.CONFIG)
    if "model" not in config:
        raise ClapError(f"{artifact / ck.CONFIG}: no 'model' section; is this an Act-VAE artifact?")
    try:
        model = ActVAE(ActVAEConfig(**config["model"]))
    except TypeError as e:
        raise ClapError(f"{artifact / ck.CONFIG}: model section does not fit ActVAEConfig ({e})") from e
    missing, unexpected = model.load_state_dict(ck.load_weights(artifact / ck.MODEL), strict=False)
    if missing or unexpected:
        raise ClapError(
            f"{artifact / ck.MODEL}: weights do not fit the config (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    meta = ck.read_json(artifact / ck.META) if (artifact / ck.META).exists() else {}
    return model.to(device).eval(), {**meta, "config": config}
