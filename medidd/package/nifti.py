"""Export a package as NIfTI stacks, to look at distilled images in any NIfTI/DICOM viewer.

One ``<patient key>_hq.nii.gz`` and one ``<patient key>_lq.nii.gz`` per patient, float32 in
native units: the package's window undone (HU for CT, ``lo + x * (hi - lo)``), or the
normalised [0, 1] values with ``native=False``. Voxel ``(i, j, k)`` is column ``i``, row ``j``
of the patient's ``k``-th image. In-plane spacing: the patient's real pixel size on the
preprocessing grid when the caller knows it (``pixel_mm``: computed at the site from the
patient's scan, see ``medidd-node export --patients``), else 1 mm nominal; along ``k`` 1 mm
nominal, because consecutive images of a stack are not neighbouring slices (they sit at spread
axial positions). The affine is ``diag(-dx, -dx, 1)`` (RAS), so a slice displays with the same
up/down and left/right as the 2D array, i.e. as a DICOM viewer shows an axial image in
radiological convention. The header carries no description or other text. Each file is
written atomically.

Example:
    >>> import tempfile, pathlib, torch
    >>> from medidd.package.io import write_package
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> p = write_package(d / "pkg", torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8),
    ...     task="denoise", modality="CT", degradation={"kind": "gaussian"},
    ...     window=(-1000.0, 1000.0), patients=[("p-0123abcd", 2)], ipc=2, method="random",
    ...     seed=0, method_config={})
    >>> files = export_nifti(p, d / "nifti", pixel_mm={"p-0123abcd": 0.7})
    >>> [f.name for f in files]
    ['p-0123abcd_hq.nii.gz', 'p-0123abcd_lq.nii.gz']
    >>> import nibabel as nib
    >>> img = nib.load(str(files[0]))
    >>> [round(float(z), 2) for z in img.header.get_zooms()], float(img.get_fdata().min()) >= -1000
    ([0.7, 0.7, 1.0], True)
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medidd.atomic import atomic_write_bytes
from medidd.package.io import read_package

logger = logging.getLogger(__name__)

#: The nominal voxel-to-world matrix of an exported stack (1 mm, RAS, radiological display).
NOMINAL_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


if TYPE_CHECKING:
    import nibabel as nib


def stack_to_nifti(images: npt.NDArray[np.float32], pixel_mm: float = 1.0) -> nib.Nifti1Image:
    """(K, H, W) images -> a NIfTI image of shape (W, H, K), in-plane spacing ``pixel_mm``.

    Example:
        >>> stack_to_nifti(np.zeros((3, 4, 5), np.float32)).shape
        (5, 4, 3)
    """
    data = np.ascontiguousarray(np.transpose(images.astype(np.float32), (2, 1, 0)))
    import nibabel as nib  # imported here: only the viewer export needs it

    affine = NOMINAL_AFFINE @ np.diag([pixel_mm, pixel_mm, 1.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_qform(affine, code=2)  # aligned: no scanner coordinates
    img.header.set_sform(affine, code=2)
    return img


def export_nifti(package_path: Path, out_dir: Path, *, max_bytes: int | None = None,
                 native: bool = True, pixel_mm: Mapping[str, float] | None = None) -> list[Path]:
    """Write HQ and LQ stacks of every patient of a (validated) package as ``.nii.gz``.

    Args:
        package_path: package folder or .zip.
        out_dir: where to write (created).
        max_bytes: refuse larger packages.
        native: undo the window (HU for CT); ``False`` keeps [0, 1].
        pixel_mm: in-plane pixel size per patient key (mm); patients not in it get 1 mm.

    Returns the written paths, HQ then LQ per patient in manifest order. Raises
    :class:`~medidd.package.io.PackageError` when the package is not valid.

    Example: see the module docstring.
    """
    pkg = read_package(Path(package_path), max_bytes=max_bytes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = pkg.manifest.window
    written: list[Path] = []
    for patient in pkg.manifest.patients:
        hq, lq = pkg.patient_images(patient.key)
        spacing = float((pixel_mm or {}).get(patient.key, 1.0))
        for name, stack in (("hq", hq), ("lq", lq)):
            values = stack[:, 0].numpy()
            if native:
                values = lo + values * (hi - lo)
            img = stack_to_nifti(values, spacing)
            path = out_dir / f"{patient.key}_{name}.nii.gz"
            atomic_write_bytes(path, gzip.compress(img.to_bytes(), mtime=0))
            written.append(path)
    logger.info("exported %d NIfTI stacks", len(written))
    return written
