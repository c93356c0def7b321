"""Read one DICOM file's header (no pixels) into plain geometry, or a one-line rejection.

Only what ingestion needs is copied out of the dataset: frame positions, orientation, pixel
spacing, rescale, and (kept inside ``medidd.io``, for grouping only) the patient, series and
instance identifiers. Rejection reasons cite DICOM-standard terms (SOP class names, modality
codes, photometric interpretations), never free-text header values or identifiers.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = p.write_text("not an image")
    >>> read_header(p, "notes.txt").reason
    'not a DICOM file'
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)

CT_CLASSES = frozenset(
    {
        dcm_uid.CTImageStorage,
        dcm_uid.EnhancedCTImageStorage,
        dcm_uid.LegacyConvertedEnhancedCTImageStorage,
    }
)
MR_CLASSES = frozenset(
    {
        dcm_uid.MRImageStorage,
        dcm_uid.EnhancedMRImageStorage,
        dcm_uid.LegacyConvertedEnhancedMRImageStorage,
    }
)
IMAGE_CLASSES = CT_CLASSES | MR_CLASSES
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# Words of SOP class names that mark objects which hold no image to train on.
_NON_IMAGE_WORDS = (
    "Structure Set",
    "Dose",
    "Plan",
    "Segmentation",
    "SR Storage",
    "Waveform",
    "ECG",
    "Presentation State",
    "Key Object",
    "Spectroscopy",
    "Raw Data",
    "Encapsulated",
    "Registration",
    "Treatment Record",
    "Surface",
)


@dataclass(frozen=True)
class FrameGeometry:
    """One 2D frame: where it is and how its stored values map to physical units."""

    frame: int | None  # index in a multi-frame pixel array; None for a single-frame file
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


@dataclass(frozen=True)
class DicomHeader:
    """What ingestion keeps of a usable CT/MR file (identifiers stay inside ``medidd.io``)."""

    path: Path
    file: str  # relative to the patients folder, for messages
    patient: str
    study: str
    series: str
    instance: str
    modality: str
    subkey: tuple[str, ...]  # image type, echo, temporal position: splits mixed series
    rows: int
    cols: int
    monochrome1: bool
    multiframe: bool
    slice_thickness: float
    frames: tuple[FrameGeometry, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class HeaderResult:
    """Either ``header`` or ``reason`` is set; ``patient`` is the PatientID ("" if none)."""

    file: str
    header: DicomHeader | None = None
    reason: str | None = None
    patient: str = ""
    study: str = ""


class _DropBelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Hold back pydicom's warnings while reading: they quote header values (UIDs, dates).

    Local to the ``with`` block: a filter on the ``pydicom`` logger and a warnings catcher.
    """
    dicom_logger = logging.getLogger("pydicom")
    drop = _DropBelowError()
    dicom_logger.addFilter(drop)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        if caught:
            logger.debug("%d pydicom warning(s) held back (they may quote header values)",
                         len(caught))
    finally:
        dicom_logger.removeFilter(drop)


def _read(path: Path) -> Dataset | None:
    """Header only; ``None`` when the file is not DICOM at all."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None
    if not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "DirectoryRecordSequence")):
        return None
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip()


def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unreadable {what}") from exc
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"unreadable {what}")
    return out


def describe_sop_class(sop: str) -> str:
    """One-line reason for a SOP class that is not a CT/MR image (standard names only)."""
    name = dcm_uid.UID(sop).name if sop else "unknown SOP class"
    if sop == DICOMDIR_CLASS:
        return "DICOMDIR (index of a file set), not an image; the image files are read directly"
    if any(word in name for word in _NON_IMAGE_WORDS):
        return f"non-image object ({name}): holds no CT/MR slices"
    if "Secondary Capture" in name:
        return f"secondary capture ({name}), not a CT/MR acquisition"
    if "Image Storage" in name:
        return f"{name} is not a CT or MR image (only CT and MR series are used)"
    return f"not a CT/MR image object ({name})"


def _rescale(item: Dataset) -> tuple[float, float] | None:
    seq = item.get("PixelValueTransformationSequence")
    src = seq[0] if seq else item
    if "RescaleSlope" not in src and "RescaleIntercept" not in src:
        return None
    slope = float(src.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(src.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _enhanced_frames(ds: Dataset) -> tuple[FrameGeometry, ...]:
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not per_frame or len(per_frame) != n_frames:
        raise ValueError("missing geometry: multi-frame image without per-frame positions")
    frames = []
    for i, item in enumerate(per_frame):

        def pick(seq_name: str, item: Dataset = item) -> Dataset | None:
            seq = item.get(seq_name) or shared.get(seq_name)
            return seq[0] if seq else None

        pos, ori, meas = (
            pick("PlanePositionSequence"),
            pick("PlaneOrientationSequence"),
            pick("PixelMeasuresSequence"),
        )
        if pos is None or ori is None or meas is None or "PixelSpacing" not in meas:
            raise ValueError("missing geometry: frames without position/orientation/spacing")
        rescale = _rescale(item) or _rescale(shared) or _rescale(ds) or (1.0, 0.0)
        frames.append(
            FrameGeometry(
                frame=i,
                position=_floats(pos.get("ImagePositionPatient"), 3, "frame position"),  # type: ignore[arg-type]
                orientation=_floats(ori.get("ImageOrientationPatient"), 6, "frame orientation"),  # type: ignore[arg-type]
                pixel_spacing=_floats(meas.get("PixelSpacing"), 2, "pixel spacing"),  # type: ignore[arg-type]
                slope=rescale[0],
                intercept=rescale[1],
            )
        )
    return tuple(frames)


def _classic_frame(ds: Dataset) -> tuple[FrameGeometry, ...]:
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("missing geometry: multi-frame image without per-frame positions")
    needed = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    missing = [k for k in needed if k not in ds]
    if missing:
        raise ValueError(f"missing geometry ({', '.join(missing)}): slices cannot be stacked")
    slope, intercept = _rescale(ds) or (1.0, 0.0)
    return (
        FrameGeometry(
            frame=None,
            position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient"),  # type: ignore[arg-type]
            orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient"),  # type: ignore[arg-type]
            pixel_spacing=_floats(ds.PixelSpacing, 2, "PixelSpacing"),  # type: ignore[arg-type]
            slope=slope,
            intercept=intercept,
        ),
    )


def _check_orientation(frames: tuple[FrameGeometry, ...]) -> None:
    for fr in frames:
        row, col = np.array(fr.orientation[:3]), np.array(fr.orientation[3:])
        if (
            abs(np.linalg.norm(row) - 1) > 0.01
            or abs(np.linalg.norm(col) - 1) > 0.01
            or abs(float(row @ col)) > 0.01
        ):
            raise ValueError("invalid ImageOrientationPatient (not two orthogonal unit vectors)")
        if min(fr.pixel_spacing) <= 0:
            raise ValueError("invalid PixelSpacing (not positive)")


def read_header(path: Path, file: str) -> HeaderResult:
    """Read ``path``'s header and decide whether it can be part of a CT/MR volume.

    Args:
        path: the file.
        file: its path relative to the patients folder (used in messages).

    Returns:
        A :class:`HeaderResult` with a :class:`DicomHeader`, or a one-line ``reason``.
    """
    with quiet_pydicom():
        try:
            ds = _read(path)
        except Exception as exc:  # a damaged header must not stop the other files
            return HeaderResult(file, reason=f"unreadable DICOM header ({type(exc).__name__})")
        if ds is None:
            return HeaderResult(file, reason="not a DICOM file")
        try:
            return _classify(ds, path, file)
        except Exception as exc:
            return HeaderResult(
                file,
                reason=f"unreadable DICOM header ({type(exc).__name__}): damaged or non-standard",
                patient=_text(ds, "PatientID"),
            )


def _classify(ds: Dataset, path: Path, file: str) -> HeaderResult:
    patient, study = _text(ds, "PatientID"), _text(ds, "StudyInstanceUID")

    def reject(reason: str) -> HeaderResult:
        return HeaderResult(file, reason=reason, patient=patient, study=study)

    meta = getattr(ds, "file_meta", None) or Dataset()
    sop = _text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID")
    if "DirectoryRecordSequence" in ds or sop == DICOMDIR_CLASS:
        return reject(describe_sop_class(DICOMDIR_CLASS))
    modality = _text(ds, "Modality").upper()
    if sop and sop not in IMAGE_CLASSES:
        return reject(describe_sop_class(sop))
    if not sop and not (modality in ("CT", "MR") and "Rows" in ds):
        return reject("no SOP Class UID and no CT/MR image attributes: not a usable image")
    if not modality:
        modality = "CT" if sop in CT_CLASSES else "MR"
    if modality not in ("CT", "MR"):
        return reject(f"modality {modality[:16]} is not supported (CT and MR only)")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if "Rows" not in ds or "Columns" not in ds or not photometric:
        return reject("no image attributes (Rows/Columns/PhotometricInterpretation missing)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        return reject(f"colour image ({photometric[:16]}), not a grayscale CT/MR image")
    image_type = tuple(str(v).strip().upper() for v in (ds.get("ImageType") or ()))
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return reject("localiser (scout) image, not a diagnostic slice")
    enhanced = sop in IMAGE_CLASSES and sop not in (dcm_uid.CTImageStorage, dcm_uid.MRImageStorage)
    try:
        frames = (
            _enhanced_frames(ds)
            if enhanced or "PerFrameFunctionalGroupsSequence" in ds
            else _classic_frame(ds)
        )
        _check_orientation(frames)
    except ValueError as exc:
        return reject(str(exc))
    subkey = (
        "\\".join(v for v in image_type if v not in ("", "NONE")),
        _text(ds, "EchoNumbers"),
        _text(ds, "TemporalPositionIdentifier"),
    )
    try:
        thickness = float(ds.get("SliceThickness") or 0.0)
    except (TypeError, ValueError):
        thickness = 0.0
    header = DicomHeader(
        path=path,
        file=file,
        patient=patient,
        study=study,
        series=_text(ds, "SeriesInstanceUID"),
        instance=_text(ds, "SOPInstanceUID"),
        modality=modality,
        subkey=subkey,
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        monochrome1=photometric == "MONOCHROME1",
        multiframe=len(frames) > 1 or frames[0].frame is not None,
        slice_thickness=thickness if np.isfinite(thickness) and thickness > 0 else 0.0,
        frames=frames,
    )
    return HeaderResult(file, header=header, patient=patient, study=study)
