import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clap_vla.data.action_space import (
    ArmLayout,
    chunk_to_absolute,
    chunk_to_relative,
    gripper_from_unit,
    gripper_to_unit,
)
from clap_vla.errors import ConfigError


def _reference_relative(chunk, s0):
    """Naive float64 reference with scipy, one step at a time."""
    out = np.zeros_like(chunk)
    for k in range(chunk.shape[0]):
        for a in range(chunk.shape[1]):
            out[k, a, :3] = chunk[k, a, :3] - s0[a, :3]
            r = Rotation.from_euler("xyz", chunk[k, a, 3:6]) * Rotation.from_euler("xyz", s0[a, 3:6]).inv()
            out[k, a, 3:6] = r.as_euler("xyz")
            out[k, a, 6] = chunk[k, a, 6]
    return out


def test_relative_matches_scipy_reference_and_inverts():
    rng = np.random.default_rng(0)
    chunk = rng.uniform(-1, 1, (16, 2, 7))
    s0 = rng.uniform(-1, 1, (2, 7))
    rel = chunk_to_relative(chunk, s0)
    np.testing.assert_allclose(rel, _reference_relative(chunk, s0), atol=1e-9)
    np.testing.assert_allclose(chunk_to_absolute(rel, s0), chunk, atol=1e-9)


def test_relative_of_start_pose_is_zero():
    s0 = np.array([[0.1, 0.2, 0.3, 0.4, -0.2, 2.0, 0.7]] * 2)
    rel = chunk_to_relative(s0[None], s0)
    np.testing.assert_allclose(rel[0, :, :6], 0, atol=1e-12)
    assert np.allclose(rel[0, :, 6], 0.7)


def test_relative_batched_over_leading_dims():
    rng = np.random.default_rng(1)
    chunk, s0 = rng.uniform(-1, 1, (3, 8, 2, 7)), rng.uniform(-1, 1, (3, 2, 7))
    rel = chunk_to_relative(chunk, s0)
    for b in range(3):
        np.testing.assert_allclose(rel[b], _reference_relative(chunk[b], s0[b]), atol=1e-9)


def test_layout_single_arm_goes_right_and_pads_left():
    lay = ArmLayout.for_dim(7)
    flat = np.arange(7.0)[None].repeat(3, 0)
    u = lay.to_unified(flat)
    assert u.shape == (3, 2, 7)
    assert (u[:, 0] == 0).all() and (u[:, 1] == flat).all()
    assert lay.arm_mask.tolist() == [False, True]
    np.testing.assert_array_equal(lay.from_unified(u), flat)


def test_layout_bimanual_is_left_then_right():
    lay = ArmLayout.for_dim(14)
    u = lay.to_unified(np.arange(14.0))
    assert u[0].tolist() == list(range(7)) and u[1].tolist() == list(range(7, 14))
    assert lay.arm_mask.all()


def test_layout_errors_name_the_value():
    with pytest.raises(ConfigError, match="8 values"):
        ArmLayout.for_dim(8, "ds/action")
    with pytest.raises(ConfigError, match="'middle'"):
        ArmLayout(("middle",))


def test_gripper_mapping_roundtrip_and_clip():
    g = np.array([0.0, 0.02, 0.04, 0.05])
    u = gripper_to_unit(g, 0.0, 0.04)
    np.testing.assert_allclose(u, [-1, 0, 1, 1])
    np.testing.assert_allclose(gripper_from_unit(u[:3], 0.0, 0.04), g[:3])
    with pytest.raises(ConfigError, match="high > low"):
        gripper_to_unit(g, 1.0, 1.0)
