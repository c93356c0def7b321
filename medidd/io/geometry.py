"""Pure geometry of image stacks: canonical axial orientation and slice spacing from positions.

Canonical axial order (every :class:`~medidd.io.volume.Volume`): array axes (Z, H, W) point to
patient superior, posterior and left (DICOM LPS +z, +y, +x). Shown with H downwards, a slice
looks like a radiological axial view (anterior at the top, patient right on the image left).
Reorientation only permutes and flips axes (no resampling); an oblique stack is assigned to its
closest canonical axes, like ``nibabel.as_closest_canonical``.

Example:
    >>> import numpy as np
    >>> dirs = np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], float)  # axes -> S, -P, L
    >>> out, sp = to_canonical_axial(np.arange(24.0).reshape(2, 3, 4), dirs, (5.0, 1.0, 0.5))
    >>> out.shape, sp
    ((2, 3, 4), (5.0, 1.0, 0.5))
    >>> slice_spacing(np.array([0.0, 2.5, 5.0, 7.5]), tolerance=0.1)
    2.5
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

# For canonical array axis Z, H, W: the LPS component it must follow (S=2, P=1, L=0).
_TARGET_COMPONENT = (2, 1, 0)


class GeometryError(ValueError):
    """A stack whose geometry cannot make a volume; the message is a one-line reason."""


def closest_axes(dirs: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """For each array axis (row of ``dirs``, a unit vector in LPS), the LPS component it follows.

    The assignment is the permutation that maximises the summed absolute cosines, so a strongly
    oblique stack still gets three different components.
    """
    best: tuple[int, int, int] = (0, 1, 2)
    best_score = -1.0
    for perm in itertools.permutations(range(3)):
        score = float(sum(abs(dirs[i, perm[i]]) for i in range(3)))
        if score > best_score:
            best, best_score = (perm[0], perm[1], perm[2]), score
    return best


def obliquity_degrees(dirs: npt.NDArray[np.float64]) -> float:
    """Largest angle between an array axis and the canonical axis it is assigned to."""
    comps = closest_axes(dirs)
    cosines = [min(1.0, abs(float(dirs[i, comps[i]]))) for i in range(3)]
    return float(np.degrees(np.arccos(min(cosines))))


def to_canonical_axial(
    data: npt.NDArray[np.float32],
    dirs: npt.NDArray[np.float64],
    spacing: tuple[float, float, float],
) -> tuple[npt.NDArray[np.float32], tuple[float, float, float]]:
    """Permute/flip ``data`` so its axes follow superior, posterior, left (canonical Z, H, W).

    Args:
        data: a 3D array.
        dirs: (3, 3) array; row ``i`` is the LPS direction of increasing index along axis ``i``.
        spacing: voxel size along the axes of ``data`` (mm).

    Returns:
        The reoriented array (``data`` itself when already canonical, else a contiguous copy)
        and its spacing (z, y, x) in mm.
    """
    comps = closest_axes(dirs)
    source = [comps.index(c) for c in _TARGET_COMPONENT]
    flips = [dirs[old, comps[old]] < 0 for old in source]
    if source == [0, 1, 2] and not any(flips):
        return data, (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    out = np.transpose(data, source)
    for new_axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=new_axis)
    new_spacing = (spacing[source[0]], spacing[source[1]], spacing[source[2]])
    return np.ascontiguousarray(out), (
        float(new_spacing[0]),
        float(new_spacing[1]),
        float(new_spacing[2]),
    )


def slice_spacing(positions: npt.NDArray[np.float64], *, tolerance: float) -> float:
    """Regular slice spacing (mm) of sorted slice positions along the stack normal.

    Args:
        positions: slice positions projected on the slice normal, sorted ascending (mm).
        tolerance: largest relative deviation of a gap from the median gap.

    Raises:
        GeometryError: duplicate positions, missing slices (gaps that are whole multiples of the
            usual gap) or irregular spacing; the message names the fix.
    """
    if positions.size < 2:
        raise GeometryError("a single slice has no slice spacing")
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        n_dup = int(np.sum(gaps < 1e-3))
        raise GeometryError(
            f"{n_dup} slice(s) share a position with another slice (several acquisitions, "
            "echoes or copies in one series); export each stack as its own series"
        )
    step = float(np.median(gaps))
    ratio = gaps / step
    regular = np.abs(ratio - 1.0) <= tolerance
    if np.all(regular):
        return float((positions[-1] - positions[0]) / (positions.size - 1))
    whole = np.round(ratio)
    gap_like = (whole >= 2) & (np.abs(ratio - whole) <= tolerance * whole)
    if np.all(regular | gap_like):
        missing = int(np.sum(whole[gap_like] - 1))
        raise GeometryError(
            f"missing slices: {missing} slice(s) absent in {int(np.sum(gap_like))} gap(s) of a "
            f"{step:.2f} mm series; re-export the complete series"
        )
    raise GeometryError(
        f"irregular slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm, tolerance "
        f"{tolerance:.0%}); resample the series to a regular grid or raise spacing_tolerance"
    )
