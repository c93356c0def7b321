"""Write an enhanced volume: NIfTI on the input's grid, and a derived DICOM series.

The DICOM series is written from the input series' own files (one output file per input
slice): the same patient, study and frame of reference, new Series and SOP Instance UIDs,
``ImageType`` DERIVED\\SECONDARY, a ``DerivationDescription``, a ``SourceImageSequence`` that
points at the input slice, and the pixels as uncompressed signed 16-bit values with a
rescale to HU (CT) or to the input's units (MR). It stays at the site like its input.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from medidd.enhance.source import SourceGrid, lps_affine
    >>> grid = SourceGrid((4, 4, 2), np.eye(3), (1.0, 1.0, 2.0),
    ...                   lps_affine(np.eye(3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))
    >>> p = write_nifti(np.zeros((4, 4, 2), np.float32), grid,
    ...                 pathlib.Path(tempfile.mkdtemp()) / "x.nii.gz")
    >>> import nibabel as nib
    >>> nib.load(str(p)).header.get_zooms()
    (np.float32(1.0), np.float32(1.0), np.float32(2.0))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from medidd.enhance.source import SourceGrid

_INT16 = 32767.0


def write_nifti(raw: npt.NDArray[np.float32], grid: SourceGrid, path: Path) -> Path:
    """Write ``raw`` (the input's raw layout, native units) as float32 NIfTI-1 with the
    input's affine (qform and sform)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(raw, dtype=np.float32), grid.affine)
    image.set_qform(grid.affine, code=grid.xform_code)
    image.set_sform(grid.affine, code=grid.xform_code)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return path


def _rescale(values: npt.NDArray[np.float32], modality: str) -> tuple[float, float]:
    """(slope, intercept) so that ``round((v - intercept) / slope)`` fits int16."""
    lo, hi = float(values.min()), float(values.max())
    if modality == "CT" and lo >= -_INT16 and hi <= _INT16:
        return 1.0, 0.0
    intercept = (lo + hi) / 2.0
    span = max(hi - intercept, intercept - lo, 1e-6)
    return span / _INT16, intercept


def write_derived_dicom(slices: npt.NDArray[np.float32], grid: SourceGrid, folder: Path, *,
                        modality: str, description: str, series_suffix: str = "MediDD"
                        ) -> list[Path]:
    """Write ``slices`` (S, rows, columns; native units) as a derived series into the existing
    ``folder``, one file per input slice of ``grid.frames`` (single-frame files only).

    Returns the files written, in slice order.

    Raises:
        ValueError: multi-frame input (write NIfTI only), or a shape that does not match.
    """
    import pydicom
    from pydicom import uid as dcm_uid
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if not grid.frames:
        raise ValueError("no DICOM slices to derive from (the input is a volume file)")
    if any(index is not None for _, index in grid.frames):
        raise ValueError("enhanced multi-frame DICOM input: a derived series is not written "
                         "(the NIfTI output has the enhanced volume)")
    if slices.shape[0] != len(grid.frames):
        raise ValueError(f"{slices.shape[0]} slices for {len(grid.frames)} input files")
    slope, intercept = _rescale(slices, modality)
    stored = np.clip(np.round((slices - intercept) / slope), -32768, 32767).astype(np.int16)
    series_uid = dcm_uid.generate_uid()
    written = []
    for k, (path, _) in enumerate(grid.frames):
        ds = pydicom.dcmread(str(path))
        source_ref = Dataset()
        source_ref.ReferencedSOPClassUID = ds.SOPClassUID
        source_ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        sop_uid = dcm_uid.generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        kept = [str(v) for v in list(ds.get("ImageType", []))[2:]]
        ds.ImageType = ["DERIVED", "SECONDARY", *kept]
        ds.DerivationDescription = description[:1024]
        ds.SourceImageSequence = Sequence([source_ref])
        old = str(ds.get("SeriesDescription", "") or "").strip()
        ds.SeriesDescription = f"{old} {series_suffix}".strip()[-64:]
        number = ds.get("SeriesNumber")
        ds.SeriesNumber = (int(number) if number not in (None, "") else 0) % 1000 + 1000
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue",
                    "PixelPaddingValue", "PixelPaddingRangeLimit", "NumberOfFrames"):
            if tag in ds:
                del ds[tag]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        out = Path(folder) / f"IM{k + 1:04d}.dcm"
        ds.save_as(str(out), enforce_file_format=True)
        written.append(out)
    return written
