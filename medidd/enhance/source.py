"""Where a :class:`~medidd.io.Volume` came from: the input's own voxel grid, to write back onto.

:mod:`medidd.io` hands out canonical axial volumes (axes permuted/flipped to superior,
posterior, left) with spacing only. To write an enhanced volume with the input's real geometry,
:func:`source_grid` finds the files ingestion used for the volume and rebuilds the input's
grid: for a DICOM series from its headers (ImagePositionPatient of the first slice along the
normal, ImageOrientationPatient, PixelSpacing, slice spacing from the positions, exactly as
ingestion sorted them), for a NIfTI/NRRD file from its affine. :func:`from_canonical_axial`
undoes the reorientation, so ``to_canonical_axial(from_canonical_axial(x, d), d, s)`` is ``x``.

The "raw" layout of a DICOM series here is (columns, rows, slices) — NIfTI's usual (i, j, k) —
and that of a volume file is the file's own.

Example:
    >>> import numpy as np
    >>> from medidd.io.geometry import to_canonical_axial
    >>> dirs = np.array([[-1.0, 0, 0], [0, 0, 1], [0, 1, 0]])  # an oblique-free, flipped stack
    >>> raw = np.arange(24.0).reshape(2, 3, 4)
    >>> canon, _ = to_canonical_axial(raw, dirs, (1.0, 2.0, 3.0))
    >>> bool(np.array_equal(from_canonical_axial(canon, dirs), raw))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from medidd.io.geometry import closest_axes

_TARGET_COMPONENT = (2, 1, 0)  # canonical Z, H, W follow LPS S, P, L (medidd.io.geometry)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SourceError(ValueError):
    """The input's geometry cannot be rebuilt; the message names the input."""


def from_canonical_axial(data: npt.NDArray[np.float32], dirs: npt.NDArray[np.float64]
                         ) -> npt.NDArray[np.float32]:
    """The inverse of :func:`medidd.io.geometry.to_canonical_axial` for an array of the
    input's axes with LPS directions ``dirs`` (row ``i``: direction of raw axis ``i``)."""
    comps = closest_axes(dirs)
    source = [comps.index(c) for c in _TARGET_COMPONENT]
    out = data
    for new_axis, old in enumerate(source):
        if dirs[old, comps[old]] < 0:
            out = np.flip(out, axis=new_axis)
    return np.ascontiguousarray(np.transpose(out, np.argsort(source)))


@dataclass(frozen=True)
class SourceGrid:
    """The input's voxel grid.

    Attributes:
        shape: raw array shape.
        dirs: (3, 3); row ``i`` is the LPS direction of raw axis ``i``.
        spacing: voxel size along the raw axes (mm).
        affine: 4x4 RAS affine of the raw array (what a NIfTI of it carries).
        frames: for a DICOM series, (file, frame index or None) per slice, in raw slice order;
            empty for a volume file.
        xform_code: NIfTI qform/sform code to write (1: scanner, or the input file's own).
    """

    shape: tuple[int, int, int]
    dirs: npt.NDArray[np.float64]
    spacing: tuple[float, float, float]
    affine: npt.NDArray[np.float64]
    frames: tuple[tuple[Path, int | None], ...] = field(default_factory=tuple)
    xform_code: int = 1

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        lps = _LPS_TO_RAS @ self.affine
        return float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3])

    def canonical_shape(self) -> tuple[int, int, int]:
        """The shape ingestion's canonical volume of this grid has."""
        comps = closest_axes(self.dirs)
        z, h, w = (self.shape[comps.index(c)] for c in _TARGET_COMPONENT)
        return z, h, w

    def to_raw(self, canonical: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """A canonical (Z, H, W) array of this grid, in the input's raw layout."""
        if canonical.shape != self.canonical_shape():
            raise SourceError(f"canonical shape {canonical.shape} does not fit the input grid "
                              f"{self.shape}")
        return from_canonical_axial(canonical, self.dirs)


def lps_affine(dirs: npt.NDArray[np.float64], spacing: tuple[float, float, float],
               origin: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    """4x4 RAS affine of an array whose axis ``i`` runs along ``dirs[i]`` (LPS) in steps of
    ``spacing[i]`` mm from ``origin`` (LPS).

    Example:
        >>> lps_affine(np.eye(3), (0.5, 0.5, 2.0), (10.0, 20.0, 30.0))[:3, 3].tolist()
        [-10.0, -20.0, 30.0]
    """
    a = np.eye(4)
    a[:3, :3] = (np.asarray(dirs, dtype=np.float64) * np.asarray(spacing)[:, None]).T
    a[:3, 3] = origin
    return _LPS_TO_RAS @ a


def dicom_grid(frames: list[tuple[Path, int | None]], dirs_src: npt.NDArray[np.float64],
               spacing_src: tuple[float, float, float], first_position: tuple[float, float, float],
               rows: int, cols: int) -> SourceGrid:
    """The grid of a sorted DICOM stack given as ingestion planned it (axes slices, rows,
    columns; ``dirs_src`` rows normal, column direction, row direction), in (columns, rows,
    slices) layout."""
    dirs = np.asarray(dirs_src, dtype=np.float64)[[2, 1, 0]]
    spacing = (float(spacing_src[2]), float(spacing_src[1]), float(spacing_src[0]))
    return SourceGrid((cols, rows, len(frames)), dirs, spacing,
                      lps_affine(dirs, spacing, first_position), tuple(frames))


def volume_file_grid(path: Path) -> SourceGrid:
    """The grid of a NIfTI/NRRD file, in the file's own layout (as :mod:`medidd.io.readers`
    reads it: trailing unit dimensions dropped, a 2D image as one slice)."""
    from medidd.io.readers import volume_shape

    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(str(path))
        shape = volume_shape(tuple(int(n) for n in image.shape))  # type: ignore[attr-defined]
        affine = np.asarray(image.affine, dtype=np.float64)  # type: ignore[attr-defined]
        columns = affine[:3, :3] * np.array([[-1.0], [-1.0], [1.0]])
        spacing = np.linalg.norm(columns, axis=0)
        code = int(image.header.get("sform_code", 1)) or 1  # type: ignore[attr-defined]
        return SourceGrid(shape, (columns / spacing).T, (float(spacing[0]), float(spacing[1]),
                          float(spacing[2])), affine, xform_code=code)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    n = reader.GetDimension()
    size = volume_shape(tuple(int(s) for s in reader.GetSize()))
    direction = np.eye(3)
    d = np.array(reader.GetDirection(), dtype=np.float64).reshape(n, n)
    direction[:min(n, 3), :min(n, 3)] = d[:3, :3]
    spacing3 = (*[float(s) for s in reader.GetSpacing()][:3], 1.0, 1.0)[:3]
    origin = (*[float(o) for o in reader.GetOrigin()][:3], 0.0, 0.0)[:3]
    dirs = direction.T
    return SourceGrid(size, dirs, (spacing3[0], spacing3[1], spacing3[2]),
                      lps_affine(dirs, (spacing3[0], spacing3[1], spacing3[2]),
                                 (origin[0], origin[1], origin[2])))
