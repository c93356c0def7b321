"""NIfTI (.nii, .nii.gz) and NRRD (.nrrd, .nhdr) volumes -> canonical axial :class:`Volume`.

NIfTI is read with nibabel (ITK's NIfTI reader silently turns NaN/inf into 0), NRRD with
SimpleITK (directions in LPS, spacing in mm); both are reoriented to the
canonical (Z, H, W) order of :mod:`medidd.io.geometry` by permuting/flipping axes.

Modality: a volume file carries none, so it comes from the caller's hint (``modality="CT"``)
or, without a hint, from :func:`guess_modality`: **CT** when the minimum is below -500 and at
least 1% of the voxels lie in the air band of Hounsfield units (-1100 to -900), or when at
least 5% lie in the fat band (-200 to -50: a crop inside the body, such as a spine CT, holds
no air); **MR** otherwise. MR intensities are arbitrary and rarely negative. Pass the hint for
CT stored without the -1024 offset.

Rejected with a reason (``VolumeFileError``): unreadable files; label maps and masks, by name
or by content (:mod:`medidd.io.masks`; ``LabelMapError``, raised before any modality guess);
4D time series (fMRI, DWI: one 3D volume per file is read, never a silent pick of one), 5D and
vector/colour images; a single 2D slice (unless ``allow_2d``); too few slices; non-finite
voxels (NaN/inf; or ``nonfinite="replace"`` sets them to the smallest finite value).

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
from medidd.io.masks import label_map_evidence, mask_name_marker
from medidd.io.options import IngestOptions
from medidd.io.volume import Modality, Volume

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")
DETACHED_DATA_SUFFIXES = (".raw", ".raw.gz", ".raw.bz2")
AIR_HU = (-1100.0, -900.0)
FAT_HU = (-200.0, -50.0)


class VolumeFileError(ValueError):
    """A volume file that cannot be used; ``str(exc)`` is a one-line reason."""


class LabelMapError(VolumeFileError):
    """The file is a label map or mask (by name or content): never a patient's image."""


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` has a NIfTI/NRRD name (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``)."""
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def guess_modality(data: npt.NDArray[np.floating]) -> Modality:
    """CT if ``data`` looks like Hounsfield units, else MR.

    CT: the minimum is below -500 and >= 1% of the voxels are air (-1100..-900 HU), or >= 5%
    are fat (-200..-50 HU; a crop inside the body holds no air). MR intensities are rarely
    negative. Never called on a label map (those are rejected first).

    Example:
        >>> guess_modality(np.array([-1024.0, -1000, 40, 300])), guess_modality(np.arange(9.0))
        ('CT', 'MR')
        >>> guess_modality(np.array([-120.0, -90, 30, 60, 400, 900]))  # spine crop: fat, no air
        'CT'
    """
    if data.size == 0:
        return "MR"
    fat = np.count_nonzero((data >= FAT_HU[0]) & (data <= FAT_HU[1]))
    if fat >= 0.05 * data.size:
        return "CT"
    if float(np.min(data)) >= -500.0:
        return "MR"
    air = np.count_nonzero((data >= AIR_HU[0]) & (data <= AIR_HU[1]))
    return "CT" if air >= 0.01 * data.size else "MR"


_Raw = tuple[npt.NDArray[np.generic], npt.NDArray[np.float64], tuple[float, float, float]]


def volume_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3D shape of a stored image of ``shape``, or a :class:`VolumeFileError` saying why it
    is not one volume. Trailing axes of length 1 are dropped; a 2D image gets one slice.

    Example:
        >>> volume_shape((64, 64, 30, 1)), volume_shape((64, 64))
        ((64, 64, 30), (64, 64, 1))
        >>> volume_shape((64, 64, 30, 120))
        Traceback (most recent call last):
        ...
        medidd.io.readers.VolumeFileError: 4D image (120 volumes of 64x64x30, ...): save ...
    """
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 4:
        raise VolumeFileError(
            f"4D image ({dims[3]} volumes of {'x'.join(map(str, dims[:3]))}, a time series such "
            "as fMRI or DWI): save the one 3D volume to use as its own file"
        )
    if len(dims) > 4:
        raise VolumeFileError(
            f"{len(dims)}D image ({'x'.join(map(str, dims))}: vector, tensor or multi-component "
            "data), not a grayscale CT/MR volume"
        )
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise VolumeFileError(f"{len(dims)}D data ({'x'.join(map(str, dims))}), not an image")
    return dims[0], dims[1], dims[2]


def _read_nifti(path: Path) -> _Raw:
    """NIfTI through nibabel: ITK's NIfTI reader silently turns NaN/inf into 0."""
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeFileError("not a NIfTI-1/2 image")
    if image.get_data_dtype().names is not None:
        raise VolumeFileError("vector/colour image, not a grayscale CT/MR volume")
    shape = volume_shape(tuple(int(n) for n in image.shape))  # before loading a 4D series
    data = np.asanyarray(image.dataobj).reshape(shape)
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
    shape = volume_shape(tuple(int(n) for n in image.GetSize()))  # (i, j, k[, t])
    data = sitk.GetArrayFromImage(image).transpose().reshape(shape)
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
        LabelMapError: the file is a label map or mask (by name or content).
        VolumeFileError: any other unusable file; one-line reasons that name ``file``.
    """
    opts = options or IngestOptions()
    marker = mask_name_marker(path.name)
    if marker is not None:
        raise LabelMapError(
            f"{file}: label map or mask by its name ('{marker}'), not an image; masks are never "
            "used as images (rename the file if it holds an image)"
        )
    try:
        is_nifti = path.name.lower().endswith((".nii", ".nii.gz"))
        raw, dirs, spacing = _read_nifti(path) if is_nifti else _read_itk(path)
    except VolumeFileError as exc:
        raise VolumeFileError(f"{file}: {exc}") from None
    except Exception as exc:
        raise VolumeFileError(
            f"{file}: unreadable volume file ({type(exc).__name__}): damaged or truncated"
        ) from None
    evidence = label_map_evidence(raw)
    if evidence is not None:
        raise LabelMapError(
            f"{file}: label map or mask ({evidence}), not an image; masks are never used as "
            "images"
        )
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
