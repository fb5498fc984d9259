import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from clap_vla.data.rotations import euler_to_matrix, matrix_to_euler

angles = st.tuples(st.floats(-np.pi, np.pi), st.floats(-np.pi / 2 + 1e-3, np.pi / 2 - 1e-3), st.floats(-np.pi, np.pi))


@settings(max_examples=200, deadline=None)
@given(angles)
def test_euler_to_matrix_matches_scipy_extrinsic_xyz(rpy):
    ref = Rotation.from_euler("xyz", rpy).as_matrix()
    np.testing.assert_allclose(euler_to_matrix(np.array(rpy)), ref, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(angles)
def test_matrix_to_euler_inverts(rpy):
    m = euler_to_matrix(np.array(rpy))
    back = matrix_to_euler(m)
    np.testing.assert_allclose(euler_to_matrix(back), m, atol=1e-10)
    # Same angles as scipy up to the 2*pi wrap at +-pi (3.14159 and -3.14159 are one angle).
    d = back - Rotation.from_matrix(m).as_euler("xyz")
    np.testing.assert_allclose((d + np.pi) % (2 * np.pi) - np.pi, 0, atol=1e-7)


def test_gimbal_lock_reproduces_matrix():
    for pitch in (np.pi / 2, -np.pi / 2):
        m = euler_to_matrix(np.array([0.3, pitch, -1.1]))
        np.testing.assert_allclose(euler_to_matrix(matrix_to_euler(m)), m, atol=1e-9)


def test_batched_shapes():
    rpy = np.random.default_rng(0).uniform(-1, 1, (4, 5, 3))
    assert euler_to_matrix(rpy).shape == (4, 5, 3, 3)
    assert matrix_to_euler(euler_to_matrix(rpy)).shape == (4, 5, 3)
