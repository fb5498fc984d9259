"""Vector quantizer of the Act-VAE (paper §III-C1, eq. 2; Algorithm 1 line 6) with dead-code restart.

Each encoder latent z_e is replaced by its nearest codebook entry (squared euclidean distance);
the straight-through estimator passes the decoder's gradient to the encoder unchanged, and eq. 2
adds two terms that only differ in where the stop-gradient sits:

    codebook loss    || sg(z_e) - z_q ||^2      trains the codebook only
    commitment loss  beta || z_e - sg(z_q) ||^2  trains the encoder only (beta = 1.0 in the release)

Both are means over the elements of the real (un-masked) vectors, i.e. eq. 2's squared norm divided
by the code dimension, so their scale does not depend on it (like the reconstruction MSE).

Codes that no vector picks stop learning (the codebook loss never reaches them). Every
`restart_every` steps, codes used fewer than `restart_threshold` times since the last restart are
moved onto randomly chosen recent encoder outputs (reference-facts: restart every 2000 steps, usage
synchronised across ranks). The release copies used codes instead; encoder outputs put the revived
code where the data is, so it is picked at once.

Distances, lookup and losses run in fp32 with autocast off, whatever the input dtype (house style 7):
under bf16 the nearest code would otherwise flip for near-ties and the token ids would depend on the
precision the model happened to run in.

Shape letters (beyond the glossary in clap_vla.types): N = vectors after flattening the leading
dims (e.g. B*A*Nq for the Act-VAE), E = code dimension, `...` = any leading dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from clap_vla.errors import ConfigError
from clap_vla.train.distributed import global_count

_RESTART_NOISE = 1e-3
"""Std of the noise added to a revived code, relative to the RMS of the pool it is drawn from:
enough to split two codes revived from the same vector, small enough to stay on the data."""


@dataclass
class QuantizerOutput:
    """What `VectorQuantizer.forward` returns; losses and statistics are fp32 scalars (0-dim)."""

    quantized: Tensor
    """(..., E) in the input's dtype: the nearest code in value, identity gradient to z (straight-through)."""
    indices: Tensor
    """(...,) int64 token ids in [0, K); masked rows also get their nearest code (ignore them)."""
    codebook_loss: Tensor
    """mean || sg(z) - q ||^2 over real vectors; gradient reaches the codebook only. Its value is
    also the value of the unweighted commitment term (same distance, other stop-gradient)."""
    commitment_loss: Tensor
    """beta * mean || z - sg(q) ||^2 over real vectors, already beta-weighted as in eq. 2; gradient
    reaches z only."""
    perplexity: Tensor
    """exp(entropy) of the code histogram of this batch's real vectors (K = every code equally used)."""
    usage: Tensor
    """Fraction of the K codes picked at least once by this batch's real vectors (this rank only)."""

    @property
    def loss(self) -> Tensor:
        """The VQ part of eq. 2: codebook + beta * commitment (the caller adds reconstruction)."""
        return self.codebook_loss + self.commitment_loss


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook of K codes of dimension E with straight-through gradients.

    Distributed use: call `maybe_restart` on every rank at the same step (it is collective), and
    wrap the model with `DistributedDataParallel(..., broadcast_buffers=False)` so that each rank
    keeps its own `usage_counts` (DDP would otherwise overwrite them with rank 0's every forward).
    """

    codebook: nn.Parameter  # (K, E)
    usage_counts: Tensor  # (K,) int64, real vectors per code since the last restart, this rank

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 1.0,
        restart_every: int = 2000,
        restart_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if num_codes < 1:
            raise ConfigError(f"num_codes (K) must be >= 1, got {num_codes}")
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        if not beta >= 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        if restart_every < 0:
            raise ConfigError(f"restart_every must be >= 0 (0 = off), got {restart_every}")
        if not restart_threshold >= 0:
            raise ConfigError(f"restart_threshold must be >= 0, got {restart_threshold}")
        self.num_codes = num_codes
        self.dim = dim
        self.beta = float(beta)
        self.restart_every = restart_every
        self.restart_threshold = float(restart_threshold)
        # The name "codebook" is what the optimiser builder matches for its own lr and no weight decay.
        self.codebook = nn.Parameter(torch.empty(num_codes, dim))
        # Persistent, so a resumed run continues the same restart window.
        self.register_buffer("usage_counts", torch.zeros(num_codes, dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # U(-1/K, 1/K), the usual VQ-VAE initialisation: every code starts near the origin, where a
        # freshly initialised encoder's outputs also are, so early batches spread over many codes;
        # codes that still lose out are moved onto the data by the dead-code restart.
        nn.init.uniform_(self.codebook, -1.0 / self.num_codes, 1.0 / self.num_codes)
        self.usage_counts.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, "
            f"restart_every={self.restart_every}, restart_threshold={self.restart_threshold}"
        )

    # ------------------------------------------------------------------ quantize

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize z (..., E); `mask` (...,) bool marks real vectors (False = padding, e.g. an absent
        arm), which are left out of the losses, the statistics and `usage_counts`."""
        self._check_vectors(z, "z")
        lead = z.shape[:-1]
        valid = self._check_mask(mask, lead, z.device)  # (...,) bool

        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()  # (N, E)
            m = valid.reshape(-1)  # (N,)
            indices = self._nearest(flat.detach())  # (N,)
            q = nn.functional.embedding(indices, self.codebook.float())  # (N, E), grad -> codebook

            n_valid = m.sum()
            # Elements of the real vectors (over every rank's batch under DDP: see global_count).
            denom = global_count(n_valid).clamp_min(1e-6) * self.dim
            w = m.float().unsqueeze(-1)  # (N, 1)
            codebook_loss = (((flat.detach() - q) ** 2) * w).sum() / denom
            commitment_loss = self.beta * ((((flat - q.detach()) ** 2) * w).sum() / denom)

            # Straight-through (van den Oord et al. 2017): the value is exactly q, the gradient is the
            # identity to z, and the decoder's loss never reaches the codebook.
            quantized = q.detach() + (flat - flat.detach())  # (N, E)

            with torch.no_grad():
                counts = torch.zeros(self.num_codes, dtype=torch.long, device=z.device)
                counts.scatter_add_(0, indices, m.long())  # (K,)
                if self.training:
                    self.usage_counts += counts
                probs = counts.float() / n_valid.clamp_min(1).float()  # (K,)
                entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
                perplexity = torch.where(n_valid > 0, entropy.exp(), torch.zeros_like(entropy))
                usage = (counts > 0).float().mean()

        return QuantizerOutput(
            quantized=quantized.reshape(z.shape).to(z.dtype),
            indices=indices.reshape(lead),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
            usage=usage,
        )

    def _nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of flat (N, E) fp32 -> (N,) int64."""
        c = self.codebook.detach().float()  # (K, E)
        # ||z||^2 - 2 z.c + ||c||^2; ||z||^2 is the same for every code of a row, so it is left out:
        # the argmin is unchanged and the comparison loses less precision to cancellation.
        dist_part = torch.addmm((c * c).sum(-1).unsqueeze(0), flat, c.t(), beta=1.0, alpha=-2.0)  # (N, K)
        return dist_part.argmin(dim=-1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for token ids (...,) -> (..., E), in the codebook's dtype (fp32), for decoding."""
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"lookup needs integer token ids, got dtype {indices.dtype}")
        bad = (indices < 0) | (indices >= self.num_codes)
        if bad.any():
            values = indices[bad].unique()
            shown = values[:8].tolist()
            more = f" (and {values.numel() - 8} more)" if values.numel() > 8 else ""
            first = [int(i) for i in bad.nonzero()[0].tolist()]
            raise ValueError(
                f"token ids outside [0, {self.num_codes}): {shown}{more}; "
                f"{int(bad.sum())} of {indices.numel()} ids, first at position {first}"
            )
        return nn.functional.embedding(indices.long(), self.codebook)

    # ------------------------------------------------------------------ dead-code restart

    def maybe_restart(
        self,
        z_recent: Tensor,
        step: int,
        generator: torch.Generator | None = None,
        mask: Tensor | None = None,
    ) -> int:
        """Call after every optimiser step with the number of steps done; at positive multiples of
        `restart_every` this runs `restart_dead_codes` and returns how many codes it revived, else 0.

        z_recent (..., E): recent pre-quantization encoder outputs (e.g. this batch's z_e); `mask`
        (...,) marks the real ones. Collective under torch.distributed: call it on every rank.
        """
        if self.restart_every == 0 or step <= 0 or step % self.restart_every != 0:
            return 0
        return self.restart_dead_codes(z_recent, generator=generator, mask=mask)

    @torch.no_grad()
    def restart_dead_codes(
        self,
        z_recent: Tensor,
        generator: torch.Generator | None = None,
        mask: Tensor | None = None,
    ) -> int:
        """Move every code used fewer than `restart_threshold` times since the last restart onto a
        random real row of z_recent (..., E) plus noise, reset `usage_counts`, return the number moved.

        Under torch.distributed the counts are summed over ranks first and rank 0 draws the new codes
        (from its own z_recent, with `generator`) and broadcasts them, so every rank ends with the same
        codebook. The generator's state is part of what a resumable run must checkpoint (rank 0's).
        If rank 0 has no real vector to draw from, nothing is restarted and the counts are kept.
        """
        if not self.codebook.requires_grad:
            raise RuntimeError("restart_dead_codes called on a frozen codebook (requires_grad=False)")
        self._check_vectors(z_recent, "z_recent")
        valid = self._check_mask(mask, z_recent.shape[:-1], z_recent.device)
        pool = z_recent.detach().reshape(-1, self.dim)[valid.reshape(-1)].float()  # (N_real, E)

        distributed = dist.is_available() and dist.is_initialized()
        counts = self.usage_counts.clone()  # (K,)
        if distributed:
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        dead = counts < self.restart_threshold  # (K,), identical on every rank
        n_dead = int(dead.sum())
        if n_dead == 0:
            self.usage_counts.zero_()
            return 0

        device = self.codebook.device
        is_source = not distributed or dist.get_rank() == 0
        ok = torch.tensor([int(pool.shape[0] > 0)], device=device)
        new = torch.empty(n_dead, self.dim, device=device)  # (n_dead, E) fp32
        if is_source and pool.shape[0] > 0:
            new.copy_(self._draw(pool, n_dead, generator))
        if distributed:
            dist.broadcast(ok, src=0)
        if not bool(ok):
            return 0
        if distributed:
            dist.broadcast(new, src=0)

        self.codebook[dead] = new.to(self.codebook.dtype)
        self.usage_counts.zero_()
        return n_dead

    def _draw(self, pool: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
        """n rows of pool (N_real, E), distinct when the pool is large enough, plus relative noise."""
        rng_device = generator.device if generator is not None else torch.device("cpu")
        n_pool = pool.shape[0]
        if n_pool >= n:
            pick = torch.randperm(n_pool, generator=generator, device=rng_device)[:n]
        else:
            pick = torch.randint(n_pool, (n,), generator=generator, device=rng_device)
        noise = torch.randn(n, self.dim, generator=generator, device=rng_device)  # (n, E)
        scale = _RESTART_NOISE * pool.pow(2).mean().sqrt().clamp_min(1e-6)
        return pool[pick.to(pool.device)] + scale * noise.to(pool.device)

    # ------------------------------------------------------------------ input checks

    def _check_vectors(self, z: Tensor, name: str) -> None:
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"{name} must end in the code dimension {self.dim}, got shape {tuple(z.shape)}")
        if not z.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor, got dtype {z.dtype}")
        finite = torch.isfinite(z)
        if not finite.all():
            n_bad = int((~finite).sum())
            n_nan = int(torch.isnan(z).sum())
            raise ValueError(
                f"{name} has {n_bad} non-finite values of {z.numel()} ({n_nan} NaN, {n_bad - n_nan} inf), "
                f"shape {tuple(z.shape)}"
            )

    @staticmethod
    def _check_mask(mask: Tensor | None, lead: torch.Size, device: torch.device) -> Tensor:
        if mask is None:
            return torch.ones(lead, dtype=torch.bool, device=device)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool, got dtype {mask.dtype}")
        if mask.shape != lead:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal the vectors' leading shape {tuple(lead)}")
        return mask.to(device)
