"""VectorQuantizer: parity with a float64 nearest-neighbour reference, eq. 2 losses, straight-through
gradients, padding masks, dead-code restart (single process and 2-rank gloo), input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clap_vla.errors import ConfigError
from clap_vla.nn.quantizer import QuantizerOutput, VectorQuantizer


def naive_nearest(z: np.ndarray, codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 brute force: (N, E), (K, E) -> argmin (N,), full squared distances (N, K)."""
    z = z.astype(np.float64)
    c = codebook.astype(np.float64)
    d = ((z[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d


def assert_nearest(z: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> None:
    """indices match the float64 reference; a different pick is only accepted at a near-tie that
    fp32 cannot resolve (never seen with these seeds, but a BLAS may sum in another order)."""
    ref, d = naive_nearest(z.detach().double().reshape(-1, z.shape[-1]).numpy(), codebook.detach().double().numpy())
    got = indices.reshape(-1).numpy()
    rows = np.arange(len(got))
    gap = d[rows, got] - d[rows, ref]
    assert np.all(gap <= 1e-5 * (1 + d[rows, ref])), f"wrong codes at rows {np.nonzero(got != ref)[0][:10]}"
    assert (got == ref).mean() > 0.99


def make_vq(k: int = 64, dim: int = 16, seed: int = 0, **kw) -> VectorQuantizer:
    torch.manual_seed(seed)
    vq = VectorQuantizer(k, dim, **kw)
    with torch.no_grad():  # spread the codes like data so that many are in play
        vq.codebook.normal_()
    return vq


# ---------------------------------------------------------------- nearest code


def test_indices_match_float64_reference():
    vq = make_vq(k=128, dim=32)
    z = torch.randn(4, 2, 8, 32, generator=torch.Generator().manual_seed(1))  # (B, A, Nq, E)
    out = vq(z)
    assert isinstance(out, QuantizerOutput)
    assert out.indices.shape == (4, 2, 8) and out.indices.dtype == torch.long
    assert_nearest(z, vq.codebook, out.indices)


def test_quantized_equals_codebook_rows():
    vq = make_vq()
    z = torch.randn(10, 3, 16)
    out = vq(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    torch.testing.assert_close(out.quantized, vq.codebook.detach()[out.indices], rtol=0, atol=0)
    torch.testing.assert_close(vq.lookup(out.indices), out.quantized.detach(), rtol=0, atol=0)


def test_fp32_lookup_under_bf16_autocast():
    vq = make_vq(k=256, dim=32)
    g = torch.Generator().manual_seed(2)
    z32 = torch.randn(512, 32, generator=g)
    z16 = z32.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = vq(z32)  # fp32 input: autocast would run the matmul in bf16 if not disabled
        out16 = vq(z16)
    assert_nearest(z32, vq.codebook, out32.indices)
    assert_nearest(z16.float(), vq.codebook, out16.indices)  # reference on the bf16-rounded input
    assert out16.quantized.dtype == torch.bfloat16 and out32.quantized.dtype == torch.float32
    for t in (out16.codebook_loss, out16.commitment_loss, out16.perplexity, out16.usage):
        assert t.dtype == torch.float32 and t.dim() == 0
    torch.testing.assert_close(out16.quantized, vq.codebook.detach()[out16.indices].to(torch.bfloat16))


# ---------------------------------------------------------------- losses and statistics


def test_losses_by_hand():
    vq = VectorQuantizer(4, 2, beta=0.25)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]))
    z = torch.tensor([[0.1, 0.2], [0.9, -0.1], [0.3, 1.5]])
    out = vq(z)
    assert out.indices.tolist() == [0, 1, 2]
    # squared errors per vector: 0.05, 0.02, 0.34 -> 0.41 over 3 vectors x 2 dims
    torch.testing.assert_close(out.codebook_loss, torch.tensor(0.41 / 6))
    torch.testing.assert_close(out.commitment_loss, torch.tensor(0.25 * 0.41 / 6))
    torch.testing.assert_close(out.loss, torch.tensor(1.25 * 0.41 / 6))
    torch.testing.assert_close(out.perplexity, torch.tensor(3.0))
    torch.testing.assert_close(out.usage, torch.tensor(0.75))


def test_perplexity_of_skewed_histogram():
    vq = VectorQuantizer(4, 1)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0], [10.0], [20.0], [30.0]]))
    out = vq(torch.tensor([[0.0], [0.1], [0.2], [10.0]]))  # codes 0,0,0,1
    p = np.array([0.75, 0.25])
    torch.testing.assert_close(out.perplexity, torch.tensor(float(np.exp(-(p * np.log(p)).sum()))))
    torch.testing.assert_close(out.usage, torch.tensor(0.5))


def test_usage_counts_only_in_training():
    vq = make_vq(k=8, dim=4)
    z = torch.randn(20, 4)
    vq.eval()
    vq(z)
    assert vq.usage_counts.sum() == 0
    vq.train()
    out = vq(z)
    vq(z)
    assert vq.usage_counts.dtype == torch.long
    assert vq.usage_counts.tolist() == (2 * torch.bincount(out.indices, minlength=8)).tolist()


# ---------------------------------------------------------------- gradients


def test_straight_through_gradient_reaches_z():
    vq = make_vq()
    z = torch.randn(6, 5, 16, requires_grad=True)
    w = torch.randn(6, 5, 16)
    out = vq(z)
    rec = (out.quantized * w).sum()  # stands in for the decoder's loss: d rec / d quantized = w
    (gz,) = torch.autograd.grad(rec, z, retain_graph=True)
    torch.testing.assert_close(gz, w, rtol=0, atol=0)
    (gc,) = torch.autograd.grad(rec, vq.codebook, allow_unused=True)
    assert gc is None or gc.abs().max() == 0, "reconstruction path must not train the codebook"


def test_codebook_and_commitment_gradients_go_to_their_side():
    vq = make_vq(k=8, dim=4, beta=0.5)
    z = torch.randn(10, 4, requires_grad=True)
    out = vq(z)
    gz, gc = torch.autograd.grad(out.codebook_loss, (z, vq.codebook), allow_unused=True, retain_graph=True)
    assert gz is None or gz.abs().max() == 0
    q = vq.codebook.detach()[out.indices]
    expected = torch.zeros_like(vq.codebook).index_add_(0, out.indices, 2 * (q - z.detach()) / z.numel())
    torch.testing.assert_close(gc, expected)

    gz, gc = torch.autograd.grad(out.commitment_loss, (z, vq.codebook), allow_unused=True)
    assert gc is None or gc.abs().max() == 0
    torch.testing.assert_close(gz, 0.5 * 2 * (z.detach() - q) / z.numel())


def test_bf16_input_gets_bf16_gradient():
    vq = make_vq()
    z = torch.randn(4, 16, dtype=torch.bfloat16, requires_grad=True)
    out = vq(z)
    (out.quantized.float().sum() + out.commitment_loss).backward()
    assert z.grad is not None and z.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------- padding mask


def test_masked_rows_do_not_count():
    vq = make_vq(k=16, dim=8)
    g = torch.Generator().manual_seed(3)
    real = torch.randn(5, 8, generator=g)
    z = torch.cat([real, 100 + 50 * torch.randn(3, 8, generator=g)])  # 3 padding rows far away
    mask = torch.tensor([True] * 5 + [False] * 3)

    ref_vq = make_vq(k=16, dim=8)
    ref = ref_vq(real)
    out = vq(z, mask=mask)
    for name in ("codebook_loss", "commitment_loss", "perplexity", "usage"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), msg=name)
    assert torch.equal(vq.usage_counts, ref_vq.usage_counts)
    torch.testing.assert_close(out.indices[:5], ref.indices)


def test_mask_over_arms_shape():
    vq = make_vq(k=16, dim=8)
    z = torch.randn(3, 2, 4, 8)  # (B, A, Nq, E)
    arm_mask = torch.tensor([[True, False], [True, True], [False, True]])  # (B, A)
    mask = arm_mask[:, :, None].expand(3, 2, 4)  # (B, A, Nq)
    out = vq(z, mask=mask)
    ref = make_vq(k=16, dim=8)(z[mask])
    torch.testing.assert_close(out.codebook_loss, ref.codebook_loss)


def test_all_masked_gives_zero_finite_losses():
    vq = make_vq(k=8, dim=4)
    z = torch.randn(2, 3, 4, requires_grad=True)
    out = vq(z, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert out.codebook_loss == 0 and out.commitment_loss == 0 and out.usage == 0 and out.perplexity == 0
    out.loss.backward()  # still part of the graph
    assert vq.usage_counts.sum() == 0


# ---------------------------------------------------------------- dead-code restart


def clustered_setup(seed: int = 0) -> tuple[VectorQuantizer, torch.Tensor]:
    """K=32 codes: codes 0 and 1 sit on the data, the other 30 far away (never nearest)."""
    vq = VectorQuantizer(32, 4, restart_every=10)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vq.codebook.copy_(50 + torch.randn(32, 4, generator=g))
        vq.codebook[0] = torch.full((4,), -1.0)
        vq.codebook[1] = torch.full((4,), 1.0)
    z = torch.randn(256, 4, generator=g)
    return vq, z


def test_dead_code_restart_revives_codes():
    vq, z = clustered_setup()
    out = vq(z)
    assert out.usage == 2 / 32
    before = vq.codebook.detach().clone()

    assert vq.maybe_restart(z, step=7, generator=torch.Generator().manual_seed(0)) == 0  # not a multiple
    assert torch.equal(vq.codebook, before) and vq.usage_counts.sum() == 256

    n = vq.maybe_restart(z, step=10, generator=torch.Generator().manual_seed(0))
    assert n == 30
    assert vq.usage_counts.sum() == 0
    torch.testing.assert_close(vq.codebook[:2], before[:2], rtol=0, atol=0)  # live codes untouched
    _, d = naive_nearest(vq.codebook.detach()[2:].numpy(), z.numpy())
    assert d.min(1).max() < 1e-3, "revived codes should sit on encoder outputs"

    after = vq(z)
    assert after.usage > 0.9, after.usage
    assert set(range(2, 32)) <= set(after.indices.tolist())


def test_restart_is_deterministic_given_generator():
    vq_a, z = clustered_setup()
    vq_b, _ = clustered_setup()
    vq_c, _ = clustered_setup()
    for vq in (vq_a, vq_b, vq_c):
        vq(z)
    vq_a.restart_dead_codes(z, generator=torch.Generator().manual_seed(5))
    vq_b.restart_dead_codes(z, generator=torch.Generator().manual_seed(5))
    vq_c.restart_dead_codes(z, generator=torch.Generator().manual_seed(6))
    assert torch.equal(vq_a.codebook, vq_b.codebook)
    assert not torch.equal(vq_a.codebook, vq_c.codebook)


def test_restart_ignores_masked_rows_and_state_dict_round_trip():
    vq, z = clustered_setup()
    pool = torch.cat([z, 1000 + torch.randn(64, 4)])
    mask = torch.tensor([True] * 256 + [False] * 64)
    vq(pool, mask=mask)
    assert vq.usage_counts.sum() == 256
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    assert "usage_counts" in state
    assert vq.restart_dead_codes(pool, generator=torch.Generator().manual_seed(0), mask=mask) == 30
    assert vq.codebook.detach().abs().max() < 50, "a code was revived from a padding row"

    resumed, _ = clustered_setup(seed=9)
    resumed.load_state_dict(state)
    assert resumed.restart_dead_codes(pool, generator=torch.Generator().manual_seed(0), mask=mask) == 30
    assert torch.equal(resumed.codebook, vq.codebook)


def test_restart_edge_cases():
    vq, z = clustered_setup()
    vq.restart_every = 0
    assert vq.maybe_restart(z, step=10) == 0
    vq.restart_every = 10
    assert vq.maybe_restart(z, step=0) == 0
    # nothing real to draw from: no restart, counts kept for the next window
    vq(z)
    assert vq.restart_dead_codes(z, mask=torch.zeros(256, dtype=torch.bool)) == 0
    assert vq.usage_counts.sum() == 256
    # fewer real vectors than dead codes: draws with replacement, noise keeps them apart
    assert vq.restart_dead_codes(z[:3], generator=torch.Generator().manual_seed(0)) == 30
    assert torch.unique(vq.codebook.detach(), dim=0).shape[0] == 32
    vq.codebook.requires_grad_(False)
    with pytest.raises(RuntimeError, match="frozen"):
        vq.restart_dead_codes(z)


def _restart_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        vq, _ = clustered_setup(seed=0)  # same initial codebook on both ranks
        # Rank 0 only ever uses code 0 and rank 1 only code 1: only the summed counts keep both alive.
        g = torch.Generator().manual_seed(100 + rank)
        z = (-1.0 if rank == 0 else 1.0) + 0.1 * torch.randn(64 * (rank + 1), 4, generator=g)
        vq(z)
        # Different generators per rank: only rank 0's draw may matter.
        n = vq.maybe_restart(z, step=10, generator=torch.Generator().manual_seed(rank))
        torch.save({"n": n, "codebook": vq.codebook.detach().clone()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_restart_keeps_codebooks_identical(tmp_path):
    mp.spawn(_restart_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["n"] == r1["n"] == 30, (r0["n"], r1["n"])
    assert torch.equal(r0["codebook"], r1["codebook"])
    vq, _ = clustered_setup(seed=0)
    torch.testing.assert_close(r0["codebook"][:2], vq.codebook.detach()[:2], rtol=0, atol=0)
    assert (r0["codebook"][2:] + 1).abs().max() < 1, "new codes come from rank 0's data (around -1)"


# ---------------------------------------------------------------- input checks


def test_lookup_names_bad_index():
    vq = make_vq(k=8, dim=4)
    assert vq.lookup(torch.tensor([[0, 7]])).shape == (1, 2, 4)
    with pytest.raises(ValueError, match=r"\[0, 8\).*\[-1, 8\]"):
        vq.lookup(torch.tensor([3, 8, -1, 2]))
    with pytest.raises(ValueError, match="integer"):
        vq.lookup(torch.tensor([1.0]))


def test_wrong_dim_and_non_finite_input_raise():
    vq = make_vq(k=8, dim=4)
    with pytest.raises(ValueError, match=r"code dimension 4, got shape \(2, 5\)"):
        vq(torch.randn(2, 5))
    z = torch.randn(3, 4)
    z[0, 1] = float("nan")
    z[2, 0] = float("inf")
    z[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"3 non-finite values of 12 \(2 NaN, 1 inf\)"):
        vq(z)
    with pytest.raises(ValueError, match="mask shape"):
        vq(torch.randn(3, 4), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-finite"):
        vq.restart_dead_codes(z)


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"num_codes": 0}, "num_codes"), ({"beta": -1.0}, "beta"), ({"restart_every": -5}, "restart_every")],
)
def test_bad_config_names_field(kw, field):
    args = {"num_codes": 8, "dim": 4} | kw
    with pytest.raises(ConfigError, match=field):
        VectorQuantizer(**args)
