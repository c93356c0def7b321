"""Export a package as NIfTI stacks, to look at distilled images in any NIfTI/DICOM viewer.

One ``<patient key>_hq.nii.gz`` and one ``<patient key>_lq.nii.gz`` per patient, float32 in the
package's normalised units ([0, 1] for HQ: set the viewer's window to 0..1). Voxel ``(i, j, k)``
is column ``i``, row ``j`` of the patient's ``k``-th image. The spacing is **1 mm nominal** in
every direction: distilled images have no physical pixel size, and consecutive images of a
stack are not neighbouring slices (they sit at spread axial positions). The affine is
``diag(-1, -1, 1)`` (RAS), so a slice displays with the same up/down and left/right as the 2D
array, i.e. as a DICOM viewer shows an axial image in radiological convention. The header
carries no description or other text. Each file is written atomically.

Example:
    >>> import tempfile, pathlib, torch
    >>> from medidd.package.io import write_package
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> p = write_package(d / "pkg", torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8),
    ...     task="denoise", modality="CT", degradation={"kind": "gaussian"},
    ...     window=(-1000.0, 1000.0), patients=[("p-0123abcd", 2)], ipc=2, method="random",
    ...     seed=0, method_config={})
    >>> [f.name for f in export_nifti(p, d / "nifti")]
    ['p-0123abcd_hq.nii.gz', 'p-0123abcd_lq.nii.gz']
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medidd._atomic import atomic_write_bytes
from medidd.package.io import read_package

logger = logging.getLogger(__name__)

#: The nominal voxel-to-world matrix of an exported stack (1 mm, RAS, radiological display).
NOMINAL_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


if TYPE_CHECKING:
    import nibabel as nib


def stack_to_nifti(images: npt.NDArray[np.float32]) -> nib.Nifti1Image:
    """(K, H, W) images -> a NIfTI image of shape (W, H, K) with the nominal affine.

    Example:
        >>> stack_to_nifti(np.zeros((3, 4, 5), np.float32)).shape
        (5, 4, 3)
    """
    data = np.ascontiguousarray(np.transpose(images.astype(np.float32), (2, 1, 0)))
    import nibabel as nib  # imported here: only the viewer export needs it

    img = nib.Nifti1Image(data, NOMINAL_AFFINE)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_qform(NOMINAL_AFFINE, code=2)  # aligned: no scanner coordinates
    img.header.set_sform(NOMINAL_AFFINE, code=2)
    return img


def export_nifti(package_path: Path, out_dir: Path, *, max_bytes: int | None = None) -> list[Path]:
    """Write HQ and LQ stacks of every patient of a (validated) package as ``.nii.gz``.

    Returns the written paths, HQ then LQ per patient in manifest order. Raises
    :class:`~medidd.package.io.PackageError` when the package is not valid.

    Example: see the module docstring.
    """
    pkg = read_package(Path(package_path), max_bytes=max_bytes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for patient in pkg.manifest.patients:
        hq, lq = pkg.patient_images(patient.key)
        for name, stack in (("hq", hq), ("lq", lq)):
            img = stack_to_nifti(stack[:, 0].numpy())
            path = out_dir / f"{patient.key}_{name}.nii.gz"
            atomic_write_bytes(path, gzip.compress(img.to_bytes(), mtime=0))
            written.append(path)
    logger.info("exported %d NIfTI stacks", len(written))
    return written
