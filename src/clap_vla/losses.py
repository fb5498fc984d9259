"""Pure loss terms. Each returns one scalar tensor; the caller weights and sums them (house style 4).

Contrastive alignment of the VD-VAE (paper §III-C2, eq. 3; Algorithm 2): SigLIP (Zhai et al. 2023,
arXiv 2303.15343), a binary classification of every (row, column) pair:

    logits[i, j] = exp(t) * cos(z_i, z+_j) + b        t = log temperature (init log 10), b (init -10)
    labels[i, j] = +1 if (i, j) is a positive pair, -1 otherwise
    loss         = -sum_ij log sigmoid(labels[i, j] * logits[i, j]) / N        (N = number of rows)

Eq. 3 is the same thing written per row, -log σ((s_p - b)/τ) - Σ_j log(1 - σ((s_n,j - b)/τ)), with
1/τ = exp(t) and the bias folded in; the sum over pairs divided by the number of rows is the SigLIP
paper's normalisation (reference-facts: "summed / local batch"). The model owns t and b as
parameters and passes them in; nothing learnable lives here.

The reference latents z+ are stop-gradient targets (eq. 3: sg(E_act(a_gt)) for robot samples, the
EMA teacher for video), so the distributed version gathers them without gradient.

Shape letters (beyond the glossary in clap_vla.types): N rows (student latents), M columns
(reference latents), E latent dimension (per arm, the flattened Nq x code_dim codes).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from clap_vla.train.distributed import global_count

__all__ = [
    "KL_DIRECTIONS",
    "code_usage_kl",
    "distributed_code_usage_kl",
    "distributed_siglip_loss",
    "feature_mse",
    "flow_matching_loss",
    "knowledge_matching_kl",
    "l1_mean",
    "same_key_mask",
    "siglip_loss",
]


def _compute_dtype(*xs: Tensor) -> torch.dtype:
    """At least fp32 (house style 7); float64 inputs stay float64 (used by the parity tests)."""
    dtype = torch.float32
    for x in xs:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def _check_pairs(z: Tensor, z_pos: Tensor, logit_scale: Tensor, logit_bias: Tensor) -> None:
    if z.ndim != 2 or z_pos.ndim != 2 or z.shape[1] != z_pos.shape[1]:
        raise ValueError(f"siglip: z must be (N, E) and z_pos (M, E), got {tuple(z.shape)} and {tuple(z_pos.shape)}")
    if logit_scale.numel() != 1 or logit_bias.numel() != 1:
        raise ValueError(
            f"siglip: logit_scale and logit_bias must be scalars, got shapes "
            f"{tuple(logit_scale.shape)} and {tuple(logit_bias.shape)}"
        )


def _pair_loss_sum(
    zn: Tensor, cols: Tensor, logit_scale: Tensor, logit_bias: Tensor, pos_mask: Tensor, dtype: torch.dtype
) -> Tensor:
    """-sum_ij log σ(labels_ij * logits_ij) for normalised rows (N, E) and columns (M, E)."""
    logits = logit_scale.to(dtype).exp() * (zn @ cols.T) + logit_bias.to(dtype)  # (N, M)
    labels = pos_mask.to(dtype) * 2 - 1  # (N, M): +1 positive, -1 negative
    return -F.logsigmoid(labels * logits).sum()


def same_key_mask(key_rows: Tensor, key_cols: Tensor) -> Tensor:
    """(N, M) bool: True where key_rows[i] == key_cols[j] >= 0 (a negative key, e.g. -1, matches nothing).

    Use it to stop two samples with identical reference codes (e.g. the same hash of Act-VAE token
    ids) from being each other's negatives. It says nothing about the diagonal: for `siglip_loss`
    pass `torch.eye(N, dtype=torch.bool) | same_key_mask(key, key)` so rows with key -1 keep their
    own positive.
    """
    if key_rows.ndim != 1 or key_cols.ndim != 1:
        raise ValueError(f"same_key_mask: keys must be 1-D, got {tuple(key_rows.shape)} and {tuple(key_cols.shape)}")
    return (key_rows[:, None] == key_cols[None, :]) & (key_rows[:, None] >= 0)  # (N, M)


def siglip_loss(
    z: Tensor, z_pos: Tensor, logit_scale: Tensor, logit_bias: Tensor, *, pos_mask: Tensor | None = None
) -> Tensor:
    """SigLIP loss of student latents z (N, E) against reference latents z_pos (M, E) (paper eq. 3).

    Both inputs are L2-normalised here, in fp32 (float64 stays float64) with autocast off, whatever
    their dtype, so the logits and the result are fp32 even for bf16 inputs. `logit_scale` is the
    log temperature t (logits use exp(t)), `logit_bias` the bias b; both are scalar tensors owned by
    the model.

    `pos_mask` (N, M) bool is the complete set of positive pairs; default: the identity (requires
    M == N, sample i's positive is column i). A mask replaces the identity rather than adding to it:
    build it as `eye | same_key_mask(key, key)` to also mark duplicates as positives.

    Returns -sum over all N*M pairs of log σ(label * logit), divided by N. Gradient reaches z, z_pos,
    logit_scale and logit_bias; detach z_pos when it is a frozen target (the paper's sg(.)).

    The release averages the loss "in both directions" (rows vs columns and columns vs rows). With
    every pair in the sum that is a no-op: the transposed problem has the transposed logits and
    labels, hence the same sum (and for M == N the same divisor), so it is not done here.
    """
    _check_pairs(z, z_pos, logit_scale, logit_bias)
    n, m = z.shape[0], z_pos.shape[0]
    if n == 0:
        raise ValueError("siglip_loss: z has no rows; the loss is a mean over rows")
    if pos_mask is None:
        if m != n:
            raise ValueError(f"siglip_loss: without pos_mask z and z_pos need the same rows, got {n} and {m}")
        pos_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    elif pos_mask.shape != (n, m) or pos_mask.dtype != torch.bool:
        raise ValueError(f"siglip_loss: pos_mask must be bool ({n}, {m}), got {pos_mask.dtype} {tuple(pos_mask.shape)}")
    dtype = _compute_dtype(z, z_pos)
    with torch.autocast(device_type=z.device.type, enabled=False):
        zn = F.normalize(z.to(dtype), dim=-1)  # (N, E)
        cols = F.normalize(z_pos.to(dtype), dim=-1)  # (M, E)
        return _pair_loss_sum(zn, cols, logit_scale, logit_bias, pos_mask, dtype) / n


def _all_gather_rows(x: Tensor, counts: list[int], group: dist.ProcessGroup | None) -> Tensor:
    """Concatenate every rank's (n_r, ...) rows in rank order; n_r may differ (pad to max, gather, trim)."""
    n_max = max(counts)
    padded = x.new_zeros((n_max, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(out, padded, group=group)
    return torch.cat([o[:c] for o, c in zip(out, counts, strict=True)])


def distributed_siglip_loss(
    z: Tensor,
    z_pos: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    *,
    pos_key: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """SigLIP over the global batch with negatives gathered from every rank (DisCo-CLIP style).

    Each rank passes its own rows z (n_r, E) and their positives z_pos (n_r, E); n_r may differ
    between ranks and may be 0 (e.g. mixed single-/dual-arm batches). The reference latents of all
    ranks are gathered (row counts are exchanged first, then padded to the largest and trimmed), and
    the local rows are scored against all N = sum_r n_r columns; row i's positive is global column
    offset_r + i. Optional `pos_key` (n_r,) int64 marks further positives: rows and columns with the
    same non-negative key (-1 = unique), see `same_key_mask`.

    The gathered columns carry no gradient: z_pos is a stop-gradient target (paper eq. 3) and must
    not require grad (detach it; ValueError otherwise, on every world size, so single-process and
    multi-process runs agree).

    Normalisation: this rank returns

        loss_r = world_size / N * sum_{i in rank r, j < N} -log σ(label_ij * logit_ij),

    so that with L = siglip_loss on the concatenated global batch (a sum over all N rows divided by
    N), mean_r loss_r == L, and the DDP gradient (the mean over ranks of each rank's gradient) equals
    the single-process gradient of L for the model's parameters, logit_scale and logit_bias. A rank
    with no rows returns 0 (still attached to the graph, so DDP sees every parameter).

    Without an initialised process group, or with world size 1, this is `siglip_loss` (with the
    pos_key mask). All ranks must pass pos_key or none must; E must agree (checked).
    """
    _check_pairs(z, z_pos, logit_scale, logit_bias)
    n_r = z.shape[0]
    if z_pos.shape[0] != n_r:
        raise ValueError(f"distributed_siglip_loss: z has {n_r} rows but z_pos has {z_pos.shape[0]}")
    if z_pos.requires_grad:
        raise ValueError("distributed_siglip_loss: z_pos requires grad; it is a stop-gradient target, detach it")
    if pos_key is not None and (pos_key.shape != (n_r,) or pos_key.dtype != torch.int64):
        raise ValueError(
            f"distributed_siglip_loss: pos_key must be int64 ({n_r},), got {pos_key.dtype} {tuple(pos_key.shape)}"
        )

    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        mask = None
        if pos_key is not None:
            mask = torch.eye(n_r, dtype=torch.bool, device=z.device) | same_key_mask(pos_key, pos_key)
        return siglip_loss(z, z_pos, logit_scale, logit_bias, pos_mask=mask)

    rank = dist.get_rank(group)
    # Exchange (rows, E, has_key) first: unequal shapes would otherwise hang all_gather.
    meta = torch.tensor([n_r, z.shape[1], int(pos_key is not None)], dtype=torch.int64, device=z.device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    rows, dims, has_key = (list(v) for v in zip(*(m.tolist() for m in metas), strict=True))
    if len(set(dims)) != 1 or len(set(has_key)) != 1:
        raise ValueError(f"distributed_siglip_loss: ranks disagree on E {dims} or on passing pos_key {has_key}")
    n_global = sum(rows)
    if n_global == 0:
        raise ValueError("distributed_siglip_loss: no rows on any rank")
    offset = sum(rows[:rank])

    dtype = _compute_dtype(z, z_pos)
    with torch.autocast(device_type=z.device.type, enabled=False):
        zn = F.normalize(z.to(dtype), dim=-1)  # (n_r, E)
        # Normalising before the gather is the same maths and gathers fp32, never bf16.
        cols = _all_gather_rows(F.normalize(z_pos.to(dtype), dim=-1), rows, group)  # (N, E), no grad
        local = torch.arange(n_r, device=z.device)
        pos_mask = torch.zeros(n_r, n_global, dtype=torch.bool, device=z.device)  # (n_r, N)
        pos_mask[local, offset + local] = True
        if pos_key is not None:
            pos_mask |= same_key_mask(pos_key, _all_gather_rows(pos_key, rows, group))
        loss_sum = _pair_loss_sum(zn, cols, logit_scale, logit_bias, pos_mask, dtype)
        return loss_sum * (world / n_global)


def _masked_mean(values: Tensor, mask: Tensor | None, name: str) -> Tensor:
    """Mean of `values` (...) over the elements whose leading dims are True in `mask` (a prefix shape).
    Under DDP training the count is every rank's (`global_count`), so the mean is the global batch's."""
    values = values.to(_compute_dtype(values))
    if mask is None:
        return values.mean()
    if mask.shape != values.shape[: mask.ndim]:
        raise ValueError(f"{name}: mask {tuple(mask.shape)} is not a leading part of shape {tuple(values.shape)}")
    w = mask.to(values.dtype).reshape(*mask.shape, *([1] * (values.ndim - mask.ndim)))  # broadcasts over the rest
    per_vector = math.prod(values.shape[mask.ndim :])  # elements per masked entry
    return (values * w).sum() / (global_count(w.sum()) * per_vector).clamp_min(1e-6)


def feature_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over elements (paper eq. 4, L_rec = ||f_t+H - f^_t+H||^2 per element).

    `mask` (B, P) or (B,) bool selects the real patches / samples; their elements are averaged, an
    all-False mask gives 0. Computed in at least fp32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"feature_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    dtype = _compute_dtype(pred, target)
    return _masked_mean((pred.to(dtype) - target.to(dtype)) ** 2, mask, "feature_mse")


def l1_mean(z: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute value of z (..., E) over the real vectors (paper eq. 4, λ_reg ||z_v,i||_1).

    `mask` (leading dims) bool marks real vectors; an all-False mask gives 0. At least fp32.
    """
    return _masked_mean(z.to(_compute_dtype(z)).abs(), mask, "l1_mean")


def _check_code_usage(z: Tensor, codebook: Tensor, target_counts: Tensor, tau: float, smoothing: float) -> None:
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"code_usage_kl: z {tuple(z.shape)} and codebook {tuple(codebook.shape)} must be (N, D), (K, D)"
        )
    if target_counts.shape != (codebook.shape[0],):
        raise ValueError(f"code_usage_kl: target_counts {tuple(target_counts.shape)} must be ({codebook.shape[0]},)")
    if not tau > 0 or not smoothing > 0:
        raise ValueError(f"code_usage_kl: need tau > 0 and smoothing > 0, got {tau}, {smoothing}")


def _code_distances(z: Tensor, codebook: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, K) squared distances from the latents to the frozen (detached) codebook, in `dtype`."""
    return (z.to(dtype)[:, None, :] - codebook.detach().to(dtype)[None, :, :]).pow(2).sum(-1)


def _usage_kl(p_bar: Tensor, counts: Tensor, smoothing: float) -> Tensor:
    q = counts.clamp_min(0) + smoothing
    q = q / q.sum()
    return (q * (q.log() - p_bar.clamp_min(1e-30).log())).sum()


def code_usage_kl(
    z: Tensor, codebook: Tensor, target_counts: Tensor, tau: float = 0.1, smoothing: float = 1e-3
) -> Tensor:
    """KL(q || p_bar) between a target code distribution and the batch's soft code usage.

    Not a term of the paper: a clap-vla option against the collapse of action-free samples' action
    latents onto two to four codes (docs/results.md, "Reading the hand"). With z (N, D) latents and
    the frozen codebook (K, D):

        p_i,k  = softmax_k(-||z_i - c_k||^2 / (tau * s))    s = batch mean of ||z_i - c_k||^2 (no gradient)
        p_bar  = mean_i p_i                                  the batch's soft code usage (K,)
        q      = (target_counts + smoothing) / sum           e.g. the robot samples' true-code histogram
        loss   = sum_k q_k (log q_k - log p_bar_k)

    Dividing by s makes `tau` independent of the latents' scale. Collapsed latents (all near one
    code) give a large loss, latents spread like the target a small one. Only z gets a gradient.
    Returns 0 (attached to z) for N = 0 or an all-zero target histogram: no rows or no target, no
    term. Computed in at least fp32. `distributed_code_usage_kl` is the same over a DDP global batch.
    """
    _check_code_usage(z, codebook, target_counts, tau, smoothing)
    dtype = _compute_dtype(z, codebook)
    counts = target_counts.detach().to(dtype)
    if z.shape[0] == 0 or not counts.clamp_min(0).sum() > 0:
        return z.sum().to(dtype) * 0
    with torch.autocast(device_type=z.device.type, enabled=False):
        d = _code_distances(z, codebook, dtype)  # (N, K)
        p_bar = torch.softmax(-d / (tau * d.detach().mean().clamp_min(1e-12)), dim=-1).mean(0)
        return _usage_kl(p_bar, counts, smoothing)


def distributed_code_usage_kl(
    z: Tensor,
    codebook: Tensor,
    target_counts: Tensor,
    tau: float = 0.1,
    smoothing: float = 1e-3,
    *,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """`code_usage_kl` over the global batch of a DDP/FSDP run: each rank passes its own rows z
    (n_r, D), n_r may differ and be 0, and its own target histogram; the histograms, the row count,
    the distance normaliser s and the soft usage sums are all-reduced, so p_bar and q are the global
    batch's and every rank returns the same value L (the single-process loss on the concatenated
    rows). The gradient reaching z_r is world_size * dL/dz_r, so that DDP's average over ranks equals
    the single-process gradient (written as L + world * (L - sg(L)): value L, scaled gradient).

    Every rank must call it (it is a collective) while gradients are enabled. Without a process
    group, with world size 1, or under no_grad (evaluation runs on rank 0 alone, as `global_count`),
    it is `code_usage_kl`.
    """
    _check_code_usage(z, codebook, target_counts, tau, smoothing)
    enabled = dist.is_available() and dist.is_initialized() and torch.is_grad_enabled()
    world = dist.get_world_size(group) if enabled else 1
    if world == 1:
        return code_usage_kl(z, codebook, target_counts, tau, smoothing)
    dtype = _compute_dtype(z, codebook)
    with torch.autocast(device_type=z.device.type, enabled=False):
        d = _code_distances(z, codebook, dtype)  # (n_r, K)
        k = codebook.shape[0]
        head = torch.stack([d.detach().sum(), torch.tensor(float(d.shape[0]), dtype=dtype, device=d.device)])
        stats = torch.cat([head, target_counts.detach().to(dtype).clamp_min(0)])  # (2 + K,)
        dist.all_reduce(stats, group=group)
        d_sum, n, counts = stats[0], stats[1], stats[2:]
        if n == 0 or not counts.sum() > 0:
            return z.sum().to(dtype) * 0
        s = (d_sum / (n * k)).clamp_min(1e-12)
        local = torch.softmax(-d / (tau * s), dim=-1).sum(0)  # (K,) this rank's soft usage sum
        total = local.detach().clone()
        dist.all_reduce(total, group=group)
        p_bar = (total + local - local.detach()) / n  # global value, gradient through the local rows only
        loss = _usage_kl(p_bar, counts, smoothing)
        return loss.detach() + world * (loss - loss.detach())


# -- CLAP-RF post-training (paper §III-E, Algorithm 4) ----------------------------------------------


def flow_matching_loss(velocity: Tensor, noise: Tensor, actions: Tensor, mask: Tensor | None = None) -> Tensor:
    """Rectified-flow regression (pi0 convention, models/rf_head.py): x_t = t*eps + (1-t)*a has velocity
    eps - a; loss = mean ||v_pred - (eps - a)||^2 over the elements of the masked (B, H[, A]) entries.
    At least fp32."""
    if not velocity.shape == noise.shape == actions.shape:
        raise ValueError(
            f"flow_matching_loss: velocity {tuple(velocity.shape)}, noise {tuple(noise.shape)} and actions "
            f"{tuple(actions.shape)} must match"
        )
    dtype = _compute_dtype(velocity, noise, actions)
    target = noise.to(dtype) - actions.to(dtype)
    return _masked_mean((velocity.to(dtype) - target) ** 2, mask, "flow_matching_loss")


KL_DIRECTIONS = ("policy_ref", "ref_policy")


def knowledge_matching_kl(
    policy_logits: Tensor, ref_logits: Tensor, direction: str = "policy_ref", reduction: str = "mean"
) -> Tensor:
    """Knowledge Matching (paper eq. 7): mean over M teacher-forced positions (the caller picks them:
    every target token, or the action tokens only) of the KL divergence between the trainable
    policy's next-token distribution and the frozen reference's, over the whole vocabulary. Eq. 7
    sums over the positions; the mean is the release's normalisation, the one its alpha was set for.
    `policy_ref` is the paper's KL(p_policy || p_ref) = sum p_pol (log p_pol - log p_ref);
    `ref_policy` is KL(p_ref || p_policy). Logits (M, V); computed in fp32 (at least); the reference
    is treated as a constant (no gradient reaches it). `reduction="sum"` returns the sum over the M
    positions (eq. 7 as written; a caller divides by a count pooled across ranks under DDP)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(f"KL: policy logits {tuple(policy_logits.shape)} vs reference {tuple(ref_logits.shape)}")
    if direction not in KL_DIRECTIONS:
        raise ValueError(f"KL direction must be one of {KL_DIRECTIONS}, got {direction!r}")
    dtype = _compute_dtype(policy_logits, ref_logits)
    lp = F.log_softmax(policy_logits.to(dtype), -1)
    lr = F.log_softmax(ref_logits.detach().to(dtype), -1)
    if len(lp) == 0:
        return lp.sum() * 0.0
    p, q = (lp, lr) if direction == "policy_ref" else (lr, lp)  # KL(p || q) = sum p (log p - log q)
    kl = (p.exp() * (p - q)).sum(-1)  # (M,)
    return kl.mean() if reduction == "mean" else kl.sum()
