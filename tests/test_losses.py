"""Loss terms against naive references: SigLIP (value and gradients, pos_mask, bf16), its distributed
version on 2 gloo ranks with unequal batch sizes, and the small VD-VAE terms."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clap_vla.losses import (
    code_usage_kl,
    distributed_code_usage_kl,
    distributed_siglip_loss,
    feature_mse,
    l1_mean,
    same_key_mask,
    siglip_loss,
)

LOG10 = math.log(10.0)


def _naive_siglip(z, zp, t, b, pos) -> torch.Tensor:
    """Double loop over (i, j) with scalar float64 tensor ops, so autograd gives reference gradients."""
    n, m = z.shape[0], zp.shape[0]
    zn = [z[i] / torch.sqrt(sum(z[i, k] ** 2 for k in range(z.shape[1]))) for i in range(n)]
    pn = [zp[j] / torch.sqrt(sum(zp[j, k] ** 2 for k in range(zp.shape[1]))) for j in range(m)]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for j in range(m):
            logit = torch.exp(t) * sum(zn[i][k] * pn[j][k] for k in range(z.shape[1])) + b
            label = 1.0 if pos[i][j] else -1.0
            total = total - torch.log(1 / (1 + torch.exp(-label * logit)))
    return total / n


def _naive_siglip_value(z, zp, t, b, pos) -> float:
    """Pure Python floats: -sum log(1 / (1 + exp(-label * logit))) / N."""
    z, zp = z.tolist(), zp.tolist()
    t, b = float(t.detach()), float(b.detach())

    def unit(v):
        s = math.sqrt(sum(x * x for x in v))
        return [x / s for x in v]

    zn, pn = [unit(v) for v in z], [unit(v) for v in zp]
    total = 0.0
    for i, zi in enumerate(zn):
        for j, pj in enumerate(pn):
            logit = math.exp(t) * sum(a * c for a, c in zip(zi, pj, strict=True)) + b
            label = 1.0 if pos[i][j] else -1.0
            total -= math.log(1 / (1 + math.exp(-label * logit)))
    return total / len(zn)


def _leaves(n=4, m=4, e=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, e, generator=g, dtype=dtype).requires_grad_()
    zp = torch.randn(m, e, generator=g, dtype=dtype).requires_grad_()
    # Away from the init (t = log 10, b = -10) so that positives and negatives both matter.
    t = torch.tensor(LOG10 - 0.7, dtype=dtype, requires_grad=True)
    b = torch.tensor(-1.3, dtype=dtype, requires_grad=True)
    return z, zp, t, b


def _grads(loss, leaves):
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("case", ["identity", "pos_mask", "rectangular"])
def test_siglip_value_and_gradients_match_the_naive_double_loop(case):
    n, m = (4, 6) if case == "rectangular" else (4, 4)
    z, zp, t, b = _leaves(n, m)
    if case == "identity":
        pos, mask = torch.eye(n, dtype=torch.bool), None
    elif case == "pos_mask":
        pos = torch.eye(n, dtype=torch.bool) | same_key_mask(torch.tensor([3, -1, 3, -1]), torch.tensor([3, -1, 3, -1]))
        assert pos.sum() == 6  # rows 0 and 2 are also each other's positives
        mask = pos
    else:
        pos = torch.zeros(n, m, dtype=torch.bool)
        pos[0, 5] = pos[1, 1] = pos[3, 0] = pos[3, 2] = True  # row 2 has no positive at all
        mask = pos
    loss = siglip_loss(z, zp, t, b, pos_mask=mask)
    ref = _naive_siglip(z, zp, t, b, pos.tolist())
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_naive_siglip_value(z, zp, t, b, pos.tolist()), rel=1e-12)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    leaves = (z, zp, t, b)
    for name, got, want in zip(
        ("z", "z_pos", "logit_scale", "logit_bias"), _grads(loss, leaves), _grads(ref, leaves), strict=True
    ):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), name
        assert got.abs().sum() > 0, name  # gradient reaches every input


def test_siglip_gradcheck_and_both_directions_is_a_no_op():
    z, zp, t, b = _leaves(3, 3, e=4, seed=1)
    assert torch.autograd.gradcheck(lambda *a: siglip_loss(*a), (z, zp, t, b))
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda *a: siglip_loss(*a, pos_mask=mask), (z, zp, t, b))
    # The release's "average of both directions": the transposed problem has the same sum.
    assert siglip_loss(z, zp, t, b).item() == pytest.approx(siglip_loss(zp, z, t, b).item(), rel=1e-12)
    assert siglip_loss(z, zp, t, b, pos_mask=mask).item() == pytest.approx(
        siglip_loss(zp, z, t, b, pos_mask=mask.T).item(), rel=1e-12
    )


def test_siglip_inputs_are_normalised_inside():
    z, zp, t, b = _leaves(4, 4)
    scaled = siglip_loss(z * torch.tensor([[3.0], [0.1], [7.0], [1.0]], dtype=torch.float64), zp * 5, t, b)
    assert scaled.item() == pytest.approx(siglip_loss(z, zp, t, b).item(), rel=1e-12)


def test_siglip_bf16_inputs_compute_in_fp32():
    z, zp, t, b = (x.detach().float() for x in _leaves(8, 8, e=32, seed=2))
    t, b = torch.tensor(LOG10), torch.tensor(-10.0)  # the init values
    fp32 = siglip_loss(z, zp, t, b)
    bf = siglip_loss(z.bfloat16(), zp.bfloat16(), t, b)
    assert bf.dtype == torch.float32
    # Exactly the fp32 computation on the rounded inputs, and close to the unrounded result.
    assert bf.item() == pytest.approx(siglip_loss(z.bfloat16().float(), zp.bfloat16().float(), t, b).item(), rel=1e-6)
    assert bf.item() == pytest.approx(fp32.item(), rel=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = siglip_loss(z, zp, t, b)  # fp32 parameters, as the model keeps them
    assert auto.dtype == torch.float32
    assert auto.item() == pytest.approx(fp32.item(), rel=1e-6)


def test_siglip_rejects_bad_shapes():
    z, zp, t, b = _leaves(4, 5)
    with pytest.raises(ValueError, match="same rows, got 4 and 5"):
        siglip_loss(z, zp, t, b)
    with pytest.raises(ValueError, match=r"pos_mask must be bool \(4, 5\)"):
        siglip_loss(z, zp, t, b, pos_mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        siglip_loss(z, zp[:, :3], t, b)


def test_distributed_without_a_process_group_is_siglip_loss():
    z, zp, t, b = _leaves(5, 5)
    zp = zp.detach()
    assert distributed_siglip_loss(z, zp, t, b).item() == pytest.approx(siglip_loss(z, zp, t, b).item(), rel=1e-12)
    key = torch.tensor([4, -1, 4, -1, 9])
    mask = torch.eye(5, dtype=torch.bool) | same_key_mask(key, key)
    assert distributed_siglip_loss(z, zp, t, b, pos_key=key).item() == pytest.approx(
        siglip_loss(z, zp, t, b, pos_mask=mask).item(), rel=1e-12
    )
    assert mask.sum() == 7
    with pytest.raises(ValueError, match="stop-gradient"):
        distributed_siglip_loss(z, zp.requires_grad_(), t, b)


# ---------------------------------------------------------------------------------------- distributed

E_IN, E = 5, 6
CASES = [((3, 5), False), ((0, 4), False), ((3, 5), True), ((4, 0), True)]


def _global_batch(n: int, with_key: bool, dtype=torch.float64):
    """The same global batch on every rank and in the test process."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, E_IN, generator=g, dtype=dtype)
    w = torch.randn(E_IN, E, generator=g, dtype=dtype)
    zp = torch.randn(n, E, generator=g, dtype=dtype)
    key = None
    if with_key:
        key = torch.tensor([7, -1, 3, 7, -1, 3, 11, 7][:n])  # duplicates straddle the rank boundary
        for j in range(n):  # equal keys = equal reference codes
            first = int((key == key[j]).nonzero()[0]) if key[j] >= 0 else j
            zp[j] = zp[first]
    return x, w, zp, key


def _params(w, dtype=torch.float64):
    return (
        w.clone().requires_grad_(),
        torch.tensor(LOG10 - 0.5, dtype=dtype, requires_grad=True),
        torch.tensor(-2.0, dtype=dtype, requires_grad=True),
    )


def _single_process(sizes, with_key):
    x, w, zp, key = _global_batch(sum(sizes), with_key)
    W, t, b = _params(w)
    mask = None if key is None else torch.eye(len(key), dtype=torch.bool) | same_key_mask(key, key)
    loss = siglip_loss(x @ W, zp, t, b, pos_mask=mask)
    loss.backward()
    return loss.detach(), W.grad, t.grad, b.grad


def _dist_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = []
    for sizes, with_key in CASES:
        x, w, zp, key = _global_batch(sum(sizes), with_key)
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        W, t, b = _params(w)  # identical on every rank, like DDP parameters
        loss = distributed_siglip_loss(
            x[lo:hi] @ W, zp[lo:hi], t, b, pos_key=None if key is None else key[lo:hi].contiguous()
        )
        loss.backward()
        # What DDP does: average the parameter gradients over ranks.
        stats = [loss.detach().clone(), W.grad, t.grad, b.grad]
        for s in stats:
            torch.distributed.all_reduce(s)
            s /= world
        results.append([loss.detach(), *stats])
    torch.save(results, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_distributed_siglip_on_two_gloo_ranks_with_unequal_batches_matches_one_process(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for c, (sizes, with_key) in enumerate(CASES):
        want_loss, *want_grads = _single_process(sizes, with_key)
        local0, mean_loss, *grads = ranks[0][c]
        local1 = ranks[1][c][0]
        tag = f"sizes={sizes} key={with_key}"
        assert mean_loss.item() == pytest.approx(want_loss.item(), rel=1e-10), tag
        assert ((local0 + local1) / 2).item() == pytest.approx(want_loss.item(), rel=1e-10), tag
        if 0 in sizes:
            assert (local0 if sizes[0] == 0 else local1).item() == 0.0, tag
        for name, got, want in zip(("W", "logit_scale", "logit_bias"), grads, want_grads, strict=True):
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), f"{tag} {name}"
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][c][1:], ranks[1][c][1:], strict=True)), tag  # ranks agree


def test_pos_key_duplicates_are_positives():
    sizes, with_key = (3, 5), True
    x, w, zp, key = _global_batch(sum(sizes), with_key)
    W, t, b = _params(w)
    # Rows 0, 3, 7 share key 7 and rows 2, 5 share key 3: 8 diagonal + 6 + 2 extra positives.
    mask = torch.eye(8, dtype=torch.bool) | same_key_mask(key, key)
    assert mask.sum() == 16 and mask[0, 7] and mask[7, 3] and not mask[1, 4]
    with_dups = siglip_loss(x @ W, zp, t, b, pos_mask=mask)
    assert with_dups.item() == pytest.approx(_naive_siglip_value(x @ W, zp, t, b, mask.tolist()), rel=1e-12)
    assert with_dups.item() != pytest.approx(siglip_loss(x @ W, zp, t, b).item(), rel=1e-3)  # the mask matters


# ---------------------------------------------------------------------------------------- VD-VAE terms


def test_feature_mse_and_l1_mean_with_masks_match_naive_means():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    patch = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    sample = torch.tensor([True, False, True])

    def naive(values, keep):
        picked = [float(values[i, p, d]) for i in range(3) for p in range(4) for d in range(5) if keep(i, p)]
        return sum(picked) / len(picked)

    sq, ab = (pred - target) ** 2, pred.abs()
    assert feature_mse(pred, target).item() == pytest.approx(naive(sq, lambda i, p: True), rel=1e-6)
    assert feature_mse(pred, target, patch).item() == pytest.approx(naive(sq, lambda i, p: patch[i, p]), rel=1e-6)
    assert feature_mse(pred, target, sample).item() == pytest.approx(naive(sq, lambda i, p: sample[i]), rel=1e-6)
    assert l1_mean(pred).item() == pytest.approx(naive(ab, lambda i, p: True), rel=1e-6)
    assert l1_mean(pred, patch).item() == pytest.approx(naive(ab, lambda i, p: patch[i, p]), rel=1e-6)
    assert l1_mean(pred, sample).item() == pytest.approx(naive(ab, lambda i, p: sample[i]), rel=1e-6)

    none = torch.zeros(3, 4, dtype=torch.bool)
    leaf = pred.clone().requires_grad_()
    assert feature_mse(leaf, target, none).item() == 0.0 and l1_mean(leaf, none).item() == 0.0
    out = feature_mse(leaf.bfloat16(), target.bfloat16(), patch)
    assert out.dtype == torch.float32
    l1_mean(leaf, patch).backward()
    assert torch.equal(leaf.grad[1] != 0, torch.zeros(4, 5, dtype=torch.bool))  # masked vectors get no gradient
    with pytest.raises(ValueError, match="mask"):
        l1_mean(pred, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ"):
        feature_mse(pred, target[:2])


def _naive_code_usage_kl(z, codebook, counts, tau, smoothing):
    z, c = z.double().tolist(), codebook.double().tolist()
    n, k = len(z), len(c)
    d = [[sum((a - b) ** 2 for a, b in zip(z[i], c[j], strict=True)) for j in range(k)] for i in range(n)]
    s = sum(map(sum, d)) / (n * k)
    p_bar = [0.0] * k
    for i in range(n):
        e = [math.exp(-d[i][j] / (tau * s)) for j in range(k)]
        for j in range(k):
            p_bar[j] += e[j] / sum(e) / n
    q = [float(v) + smoothing for v in counts]
    q = [v / sum(q) for v in q]
    return sum(q[j] * (math.log(q[j]) - math.log(p_bar[j])) for j in range(k))


def test_code_usage_kl_matches_naive_loop_and_punishes_collapse():
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(6, 3, generator=g, dtype=torch.float64)
    counts = torch.tensor([3, 0, 2, 5, 1, 0])
    z = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    cb = codebook.clone().requires_grad_(True)
    got = code_usage_kl(z, cb, counts, tau=0.5, smoothing=0.1)
    assert got.item() == pytest.approx(_naive_code_usage_kl(z.detach(), codebook, counts, 0.5, 0.1), rel=1e-10)
    got.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0 and cb.grad is None  # the codebook stays frozen
    # Latents on the codes the target uses, in its proportions, beat latents all on one code.
    spread = codebook[torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3, 3, 4])]
    collapsed = codebook[torch.tensor([1] * 11)]
    assert code_usage_kl(spread, codebook, counts) < 0.1 < 1.0 < code_usage_kl(collapsed, codebook, counts)
    assert code_usage_kl(z[:0], codebook, counts).item() == 0
    assert code_usage_kl(z, codebook, torch.zeros(6, dtype=torch.long)).item() == 0  # no target, no term
    with pytest.raises(ValueError, match="target_counts"):
        code_usage_kl(z, codebook, counts[:3])


# (rows on rank 0, rows on rank 1) and which ranks hold target counts: unequal, empty, one-sided.
USAGE_CASES = [((3, 5), (True, True)), ((0, 4), (True, False)), ((4, 0), (False, True)), ((2, 2), (False, False))]


def _usage_batch(sizes, has_counts):
    g = torch.Generator().manual_seed(sum(sizes))
    codebook = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x = torch.randn(sum(sizes), 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    counts = [torch.randint(0, 5, (6,), generator=g) * int(h) for h in has_counts]
    return codebook, x, w, counts


def _usage_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = []
    for sizes, has_counts in USAGE_CASES:
        codebook, x, w, counts = _usage_batch(sizes, has_counts)
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        W = w.clone().requires_grad_()
        loss = distributed_code_usage_kl(x[lo:hi] @ W, codebook, counts[rank], tau=0.5, smoothing=0.1)
        loss.backward()
        grad = W.grad.clone()
        torch.distributed.all_reduce(grad)  # what DDP does: average the parameter gradients over ranks
        results.append((loss.detach(), grad / world))
    with torch.no_grad():  # evaluation (rank 0 alone in training): no collective, the local batch
        codebook, x, w, counts = _usage_batch(*USAGE_CASES[0])
        results.append(distributed_code_usage_kl(x @ w, codebook, counts[0], tau=0.5, smoothing=0.1))
    torch.save(results, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_distributed_code_usage_kl_on_two_gloo_ranks_matches_one_process(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_usage_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for c, (sizes, has_counts) in enumerate(USAGE_CASES):
        codebook, x, w, counts = _usage_batch(sizes, has_counts)
        W = w.clone().requires_grad_()
        want = code_usage_kl(x @ W, codebook, counts[0] + counts[1], tau=0.5, smoothing=0.1)
        want.backward()
        tag = f"sizes={sizes} counts on ranks={has_counts}"
        for r in range(2):  # every rank returns the global loss
            assert ranks[r][c][0].item() == pytest.approx(want.item(), rel=1e-10, abs=1e-15), tag
        torch.testing.assert_close(ranks[0][c][1], W.grad, rtol=1e-9, atol=1e-12, msg=tag)
        assert torch.equal(ranks[0][c][1], ranks[1][c][1]), tag
        if not any(has_counts):
            assert want.item() == 0 and W.grad.abs().sum() == 0, tag
        else:
            assert want.item() > 0 and W.grad.abs().sum() > 0, tag
    codebook, x, w, counts = _usage_batch(*USAGE_CASES[0])
    want_local = code_usage_kl(x @ w, codebook, counts[0], tau=0.5, smoothing=0.1).item()
    assert ranks[0][-1].item() == pytest.approx(want_local, rel=1e-12)
