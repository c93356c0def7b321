"""NIfTI (.nii, .nii.gz) and NRRD (.nrrd, .nhdr) volumes -> canonical axial :class:`Volume`.

NIfTI is read with nibabel (ITK's NIfTI reader silently turns NaN/inf into 0), NRRD with
SimpleITK (directions in LPS, spacing in mm); both are reoriented to the
canonical (Z, H, W) order of :mod:`medidd.io.geometry` by permuting/flipping axes.

Modality: a volume file carries none, so it comes from the caller's hint (``modality="CT"``)
or, without a hint, from :func:`guess_modality`: **CT** when the minimum is below -500 and at
least 1% of the voxels lie in the air band of Hounsfield units (-1100 to -900), **MR**
otherwise. MR intensities are arbitrary and rarely negative; a CT in HU always shows air
(outside the body, lungs, bowel). Pass the hint for CT stored without the -1024 offset.

Rejected with a reason (``VolumeFileError``): unreadable files, 4D/vector/colour images,
a single 2D slice (unless ``allow_2d``), too few slices, label maps (integers with at most 8
distinct values) and non-finite voxels (NaN/inf; or ``nonfinite="replace"`` sets them to the
smallest finite value).

Example:
    >>> import tempfile, pathlib, numpy as np, SimpleITK as sitk
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "ct.nii.gz"
    >>> arr = (np.arange(144) - 1000).astype(np.int16).reshape(4, 6, 6)
    >>> img = sitk.GetImageFromArray(arr); img.SetSpacing((1, 1, 3))
    >>> sitk.WriteImage(img, str(p))
    >>> v = read_volume_file(p, "ct.nii.gz", patient_key="p-1", series_key="s-1")
    >>> v.modality, v.shape, v.spacing
    ('CT', (4, 6, 6), (3.0, 1.0, 1.0))
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from medidd.io.geometry import to_canonical_axial
from medidd.io.options import IngestOptions
from medidd.io.volume import Modality, Volume

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")
DETACHED_DATA_SUFFIXES = (".raw", ".raw.gz", ".raw.bz2")
AIR_HU = (-1100.0, -900.0)


class VolumeFileError(ValueError):
    """A volume file that cannot be used; ``str(exc)`` is a one-line reason."""


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` has a NIfTI/NRRD name (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``)."""
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def guess_modality(data: npt.NDArray[np.floating]) -> Modality:
    """CT if ``data`` looks like Hounsfield units (minimum < -500 and >= 1% air), else MR.

    Example:
        >>> guess_modality(np.array([-1024.0, -1000, 40, 300])), guess_modality(np.arange(9.0))
        ('CT', 'MR')
    """
    if data.size == 0 or float(np.min(data)) >= -500.0:
        return "MR"
    air = np.count_nonzero((data >= AIR_HU[0]) & (data <= AIR_HU[1]))
    return "CT" if air >= 0.01 * data.size else "MR"


def _looks_like_labels(data: npt.NDArray[np.generic]) -> bool:
    if not np.issubdtype(data.dtype, np.integer) and not np.issubdtype(data.dtype, np.bool_):
        return False
    sample = data.ravel()[:: max(1, data.size // 200_000)]
    return bool(np.unique(sample).size <= 8 and np.unique(data).size <= 8)


_Raw = tuple[npt.NDArray[np.generic], npt.NDArray[np.float64], tuple[float, float, float]]


def _squeeze_to_3d(data: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    if data.ndim == 4 and data.shape[3] != 1:
        raise VolumeFileError(f"4D image ({data.shape[3]} volumes); store one 3D volume per file")
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise VolumeFileError(f"{data.ndim}D image; expected a 3D volume")
    return data


def _read_nifti(path: Path) -> _Raw:
    """NIfTI through nibabel: ITK's NIfTI reader silently turns NaN/inf into 0."""
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeFileError("not a NIfTI-1/2 image")
    if image.get_data_dtype().names is not None:
        raise VolumeFileError("vector/colour image, not a grayscale CT/MR volume")
    data = _squeeze_to_3d(np.asanyarray(image.dataobj))
    affine = np.asarray(image.affine, dtype=np.float64)
    columns = affine[:3, :3] * np.array([[-1.0], [-1.0], [1.0]])  # RAS -> LPS
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise VolumeFileError("invalid affine (zero voxel size)")
    dirs = (columns / spacing).T  # row i: LPS direction of array axis i
    return data, dirs, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _read_itk(path: Path) -> _Raw:
    """NRRD (and anything else SimpleITK reads); array axes reversed to (i, j, k)."""
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeFileError("vector/colour image, not a grayscale CT/MR volume")
    array = sitk.GetArrayFromImage(image)  # (k, j, i) or (t, k, j, i)
    data = _squeeze_to_3d(array.transpose())
    n = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(n, n)[:3, :3]
    if n == 2:
        direction = np.eye(3)
        direction[:2, :2] = np.array(image.GetDirection()).reshape(2, 2)
    spacing = [*image.GetSpacing(), 1.0][:3]
    return data, direction.T, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def read_volume_file(
    path: Path,
    file: str,
    *,
    patient_key: str,
    series_key: str,
    options: IngestOptions | None = None,
) -> Volume:
    """Read a NIfTI/NRRD file into a canonical axial :class:`Volume`.

    Args:
        path: the file.
        file: its path relative to the patients folder (for messages).
        patient_key: pseudonymous patient key.
        series_key: pseudonymous series key.
        options: ``modality`` hint, ``min_slices``, ``allow_2d``, ``nonfinite``.

    Raises:
        VolumeFileError: with a one-line reason naming ``file``.
    """
    opts = options or IngestOptions()
    try:
        is_nifti = path.name.lower().endswith((".nii", ".nii.gz"))
        raw, dirs, spacing = _read_nifti(path) if is_nifti else _read_itk(path)
    except VolumeFileError as exc:
        raise VolumeFileError(f"{file}: {exc}") from None
    except Exception as exc:
        raise VolumeFileError(
            f"{file}: unreadable volume file ({type(exc).__name__}): damaged or truncated"
        ) from None
    if _looks_like_labels(raw):
        raise VolumeFileError(f"{file}: label map or mask (few integer values), not an image")
    data = raw.astype(np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        n_bad = int(bad.sum())
        if opts.nonfinite == "reject" or n_bad == data.size:
            raise VolumeFileError(
                f"{file}: {n_bad} non-finite voxel(s) (NaN/inf); fix the file or pass "
                "nonfinite='replace' to set them to the smallest finite value"
            )
        data[bad] = float(data[~bad].min())
        logger.warning("%d non-finite voxels replaced by the minimum in one volume", n_bad)
    data, spacing = to_canonical_axial(data, dirs, spacing)
    if data.shape[0] == 1 and not opts.allow_2d:
        raise VolumeFileError(f"{file}: single 2D image, not a volume (pass allow_2d to use it)")
    if 1 < data.shape[0] < opts.min_slices or (data.shape[0] == 1 and not opts.allow_2d):
        raise VolumeFileError(
            f"{file}: too few slices ({data.shape[0]} < min_slices={opts.min_slices})"
        )
    modality: Modality = opts.modality if opts.modality is not None else guess_modality(data)
    return Volume(data, spacing, modality, patient_key, series_key)
