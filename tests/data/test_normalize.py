import numpy as np
import pytest

from clap_vla.data.action_space import ArmLayout, chunk_to_relative
from clap_vla.data.normalize import ActionNormalizer, NormStats, compute_norm_stats
from clap_vla.errors import ConfigError


def _chunks(rng, n=200, H=8):
    layout = ArmLayout(("right",))
    flat = rng.normal(0, 0.3, (n, H, 7))
    flat[..., 6] = rng.uniform(0.0, 0.08, (n, H))  # raw gripper in metres
    s0 = layout.to_unified(rng.normal(0, 0.3, (n, 7)))
    return layout, layout.to_unified(flat), s0


def test_stats_match_numpy_over_valid_steps():
    rng = np.random.default_rng(0)
    layout, chunks, s0 = _chunks(rng)
    valid = rng.random(chunks.shape[:2]) > 0.2
    rel = chunk_to_relative(chunks, s0)
    st = compute_norm_stats(rel, valid, layout, relative=True, horizon=8)
    steps = rel[valid][:, 1]  # right arm
    np.testing.assert_allclose(st.array("q01")[1], np.quantile(steps, 0.01, axis=0))
    np.testing.assert_allclose(st.array("q99")[1], np.quantile(steps, 0.99, axis=0))
    np.testing.assert_allclose(st.array("mean")[1], steps.mean(0))
    np.testing.assert_allclose(st.array("std")[1], steps.std(0))
    assert st.count == valid.sum()
    # The absent left arm gets an identity range.
    assert st.array("q01")[0].tolist() == [-1.0] * 7 and st.array("q99")[0].tolist() == [1.0] * 7


def test_normalize_range_and_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    layout, chunks, s0 = _chunks(rng)
    valid = np.ones(chunks.shape[:2], bool)
    st = compute_norm_stats(chunk_to_relative(chunks, s0), valid, layout, relative=True, horizon=8)
    st.save(tmp_path)
    norm = ActionNormalizer(NormStats.load(tmp_path))
    x = norm.normalize(chunks, s0)
    assert x.dtype == np.float32 and x.shape == chunks.shape
    assert x.min() >= -1 and x.max() <= 1
    assert (x[..., 0, :] == 0).all()  # the absent left arm stays zero-padded
    assert x[..., 1, 6].min() == pytest.approx(-1) and x[..., 1, 6].max() == pytest.approx(1)
    back = norm.unnormalize(x, s0)
    # Values inside [q01, q99] come back exactly (up to float32); outside they were clipped.
    rel = chunk_to_relative(chunks, s0)
    inside = ((rel >= st.array("q01")) & (rel <= st.array("q99"))).all(-1)[..., 1]
    np.testing.assert_allclose(back[..., 1, :][inside], chunks[..., 1, :][inside], atol=1e-5)


def test_constant_dimension_is_centred_not_exploded():
    layout = ArmLayout(("right",))
    chunks = np.zeros((10, 4, 2, 7))
    chunks[..., 1, 0] = 0.5
    st = compute_norm_stats(chunks, np.ones((10, 4), bool), layout, relative=False, horizon=4)
    x = ActionNormalizer(st).normalize(chunks, None)
    assert np.isfinite(x).all() and np.abs(x[..., 1, :6]).max() == 0


def test_relative_without_state_is_a_clear_error():
    layout, chunks, _s0 = _chunks(np.random.default_rng(2), n=4)
    st = compute_norm_stats(chunks, np.ones(chunks.shape[:2], bool), layout, relative=True, horizon=8)
    with pytest.raises(ConfigError, match="observation.state"):
        ActionNormalizer(st).normalize(chunks, None)
