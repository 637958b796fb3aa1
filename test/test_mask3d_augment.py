"""Augmentations keep geometry rigid up to scale/jitter, colours in range, and are seeded."""

import numpy as np

from training.mask3d.augment import AugmentConfig, augment_color, augment_geometry, random_rotation_z


def _cloud(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 4, (n, 3)).astype(np.float32), rng.uniform(0, 1, (n, 3)).astype(np.float32)


def test_rotation_is_proper_and_about_z():
    r = random_rotation_z(np.random.default_rng(3))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0) and np.allclose(r[2], [0, 0, 1])


def test_geometry_preserves_distances_up_to_scale():
    xyz, _ = _cloud()
    cfg = AugmentConfig(scale=(1.25, 1.25), jitter_sigma=0.0)
    out = augment_geometry(xyz, np.random.default_rng(1), cfg)
    d_in = np.linalg.norm(xyz[:50, None] - xyz[None, :50], axis=-1)
    d_out = np.linalg.norm(out[:50, None] - out[None, :50], axis=-1)
    np.testing.assert_allclose(d_out, 1.25 * d_in, rtol=1e-4, atol=1e-4)
    # heights are only scaled about the centre: z never mixes with x/y
    np.testing.assert_allclose(out[:, 2] - out[:, 2].mean(), 1.25 * (xyz[:, 2] - xyz[:, 2].mean()), atol=1e-4)


def test_seeded_and_colour_range():
    xyz, rgb = _cloud()
    a = augment_geometry(xyz, np.random.default_rng(5)), augment_color(rgb, np.random.default_rng(5))
    b = augment_geometry(xyz, np.random.default_rng(5)), augment_color(rgb, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].min() >= 0 and a[1].max() <= 1 and not np.allclose(a[1], rgb)
    assert augment_geometry(xyz[:0], np.random.default_rng(0)).shape == (0, 3)
