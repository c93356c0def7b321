"""Write volumes as real DICOM series, and turn the fetched sample volumes into a patients tree.

``make_sample_patients`` converts the real CT/MR volumes fetched by
``shared/data/fetch_real_samples.sh`` (``ct/*.nrrd|*.nii.gz``, ``mr/*``) into one DICOM series
per patient (``out/CT-01-lung1/IM0001.dcm``...), so that demos, tests and benchmarks exercise the
real ``--patients ./dicom`` path. Names and IDs are fake (``MEDIDD^SAMPLE01``); UIDs derive
deterministically from the seed, so a rerun writes identical files.

Series are CT/MR Image Storage, explicit VR little endian (or JPEG 2000 lossless / RLE with
``compress=True``), int16 with RescaleSlope/Intercept, axial orientation, one file per slice.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from medidd.io.volume import Volume
    >>> v = Volume(np.full((3, 4, 4), 40.0, np.float32), (5.0, 0.8, 0.8), "CT", "p-x", "s-x")
    >>> files = write_dicom_series(v, pathlib.Path(tempfile.mkdtemp()) / "ct",
    ...                            patient_name="MEDIDD^DOC", patient_id="DOC-1")
    >>> [f.name for f in files]
    ['IM0001.dcm', 'IM0002.dcm', 'IM0003.dcm']
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset

from medidd._atomic import atomic_directory
from medidd._options import look_up_option
from medidd.io.options import IngestOptions
from medidd.io.readers import read_volume_file
from medidd.io.volume import Volume

logger = logging.getLogger(__name__)

CODECS = {"j2k": dcm_uid.JPEG2000Lossless, "rle": dcm_uid.RLELossless}
SAMPLE_MODALITIES = ("CT", "MR", "both")
_INT16_SPAN = 32000.0


def _rescale(data: npt.NDArray[np.float32], modality: str) -> tuple[float, float]:
    """Slope and intercept so that ``stored = (value - intercept) / slope`` fits in int16."""
    lo, hi = float(data.min()), float(data.max())
    intercept = -1024.0 if modality == "CT" else 0.0
    integral = bool(np.all(data == np.round(data)))
    if integral and lo - intercept >= -_INT16_SPAN and hi - intercept <= _INT16_SPAN:
        return 1.0, intercept
    slope = max((hi - lo) / (2 * _INT16_SPAN), 1e-6)
    return slope, (hi + lo) / 2.0


def _uid(*parts: object) -> dcm_uid.UID:
    return dcm_uid.UID(dcm_uid.generate_uid(entropy_srcs=["medidd-sample", *map(str, parts)]))


def write_dicom_series(
    volume: Volume,
    out_dir: Path,
    *,
    patient_name: str,
    patient_id: str,
    seed: int = 0,
    compress: bool = False,
    codec: str = "j2k",
    overwrite: bool = False,
) -> list[Path]:
    """Write ``volume`` as a CT/MR Image Storage series, one file per slice, into ``out_dir``.

    Args:
        volume: canonical axial volume (Z foot-to-head, H anterior-to-posterior, W right-to-left).
        out_dir: the series folder; it appears complete or not at all.
        patient_name: PatientName to write (use fake names for samples).
        patient_id: PatientID to write.
        seed: makes the study/series/instance UIDs deterministic.
        compress: encode the pixels losslessly (``codec``: ``"j2k"`` JPEG 2000 or ``"rle"``).
        overwrite: replace an existing ``out_dir``.

    Returns:
        The written files, in slice order.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        ValueError: non-finite voxels or an unknown codec.
    """
    out_dir = Path(out_dir)
    codec = look_up_option(codec, tuple(CODECS), what="codec")
    if compress and codec == "j2k" and min(volume.shape[1:]) < 32:
        raise ValueError("JPEG 2000 needs images of at least 32x32 pixels: use codec='rle'")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: delete it or pass overwrite=True")
    if not np.all(np.isfinite(volume.data)):
        raise ValueError("volume holds NaN/inf voxels: a DICOM series cannot store them")
    slope, intercept = _rescale(volume.data, volume.modality)
    stored = np.round((volume.data - intercept) / slope).astype(np.int16)
    n, rows, cols = stored.shape
    dz, dy, dx = volume.spacing
    study = _uid(seed, patient_id, "study")
    series = _uid(seed, patient_id, "series")
    frame_of_ref = _uid(seed, patient_id, "frame")
    sop_class = dcm_uid.CTImageStorage if volume.modality == "CT" else dcm_uid.MRImageStorage
    x0, y0 = -(cols - 1) * dx / 2.0, -(rows - 1) * dy / 2.0
    names = [f"IM{k + 1:04d}.dcm" for k in range(n)]
    with atomic_directory(out_dir) as tmp:
        for k in range(n):
            instance = _uid(seed, patient_id, "instance", k)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = instance
            meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
            meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = instance
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.FrameOfReferenceUID = frame_of_ref
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.Modality = volume.modality
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.StudyDate = ds.SeriesDate = "20000101"
            ds.SeriesNumber = 1
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(k * dz, 4)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [round(dy, 6), round(dx, 6)]
            ds.SliceThickness = round(dz, 6)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = rows, cols
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = f"{slope:.10g}"
            ds.RescaleIntercept = f"{intercept:.10g}"
            ds.RescaleType = "HU" if volume.modality == "CT" else "US"
            ds.PixelData = stored[k].tobytes()
            if compress:
                ds.compress(CODECS[codec], stored[k], generate_instance_uid=False)
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            (tmp / names[k]).write_bytes(buf.getvalue())
    return [out_dir / name for name in names]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def make_sample_patients(
    samples_dir: Path,
    out: Path,
    *,
    modality: str = "both",
    compress: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Convert the fetched sample volumes into a DICOM-series-per-patient tree under ``out``.

    Args:
        samples_dir: the fetched samples (with ``ct/`` and ``mr/``).
        out: the patients folder to create (one sub-folder per patient).
        modality: ``"CT"``, ``"MR"`` or ``"both"``.
        compress: write JPEG 2000 lossless series instead of uncompressed ones.
        overwrite: replace patient folders that already exist.

    Returns:
        The patient folders written, e.g. ``out/CT-01-lung1``.

    Example:
        >>> from pathlib import Path
        >>> make_sample_patients(Path("data/samples"), Path("/tmp/x"), modality="MRI")
        Traceback (most recent call last):
        ...
        ValueError: unknown modality 'MRI': did you mean 'MR'? valid: CT, MR, both
    """
    choice = look_up_option(modality, SAMPLE_MODALITIES, what="modality")
    wanted = ("CT", "MR") if choice == "both" else (choice,)
    sources: list[tuple[str, int, Path]] = []
    for mod in wanted:
        folder = Path(samples_dir) / mod.lower()
        files = sorted(
            p for p in folder.glob("*") if p.name.endswith((".nrrd", ".nii.gz", ".nii", ".nhdr"))
        )
        if not files:
            raise FileNotFoundError(
                f"no sample volumes in {folder}: run shared/data/fetch_real_samples.sh first"
            )
        sources.extend((mod, i + 1, p) for i, p in enumerate(files))
    written = []
    for n, (mod, index, path) in enumerate(sources, start=1):
        target = Path(out) / f"{mod}-{index:02d}-{_stem(path)}"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists: delete it or pass overwrite=True")
        volume = read_volume_file(
            path,
            path.name,
            patient_key=f"sample-{n:02d}",
            series_key=f"sample-{n:02d}",
            options=IngestOptions.model_validate({"modality": mod}),
        )
        write_dicom_series(
            volume,
            target,
            patient_name=f"MEDIDD^SAMPLE{n:02d}",
            patient_id=f"MEDIDD-SAMPLE-{n:02d}",
            seed=n,
            compress=compress,
            overwrite=overwrite,
        )
        logger.info("wrote sample patient %s (%d slices)", target.name, volume.n_slices)
        written.append(target)
    return written
