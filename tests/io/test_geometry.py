"""Geometry maths: canonical reorientation against a brute-force reference; slice spacing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medidd.io.geometry import GeometryError, slice_spacing, to_canonical_axial


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", list(itertools.product((1, -1), repeat=3)))
def test_any_axis_permutation_and_flip_is_undone(perm: tuple[int, ...], signs: tuple[int, ...]
                                                 ) -> None:
    canon = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (S, P, L)
    canon_dirs = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)  # LPS of each axis
    spacing = (5.0, 0.8, 0.6)
    stored = np.transpose(canon, perm)  # axis i of stored is canonical axis perm[i]
    dirs = canon_dirs[list(perm)].copy()
    for axis, sign in enumerate(signs):
        if sign < 0:
            stored = np.flip(stored, axis)
            dirs[axis] *= -1
    out, sp = to_canonical_axial(stored, dirs, tuple(spacing[p] for p in perm))  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, canon)
    assert sp == spacing


def test_slightly_oblique_stack_goes_to_its_closest_axes() -> None:
    t = np.radians(10)
    dirs = np.array([[0, np.sin(t), np.cos(t)], [0, np.cos(t), -np.sin(t)], [1, 0, 0]])
    data = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    out, _ = to_canonical_axial(data, dirs, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, data)


def test_slice_spacing_cases() -> None:
    assert slice_spacing(np.array([0.0, 1.25, 2.5, 3.75]), tolerance=0.1) == pytest.approx(1.25)
    assert slice_spacing(np.array([0.0, 5.02, 9.98, 15.0]), tolerance=0.1) == pytest.approx(5.0)
    with pytest.raises(GeometryError, match="missing slices: 2 slice"):
        slice_spacing(np.array([0.0, 2.0, 4.0, 10.0, 12.0]), tolerance=0.1)
    with pytest.raises(GeometryError, match="irregular slice spacing"):
        slice_spacing(np.array([0.0, 2.0, 4.0, 7.0, 9.0]), tolerance=0.1)
    with pytest.raises(GeometryError, match="share a position"):
        slice_spacing(np.array([0.0, 2.0, 2.0, 4.0]), tolerance=0.1)
