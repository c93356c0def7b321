"""DICOM files -> validated stacks -> :class:`~medidd.io.volume.Volume` (CT in HU, MR as stored).

How files become volumes:

1. :func:`~medidd.io.dicom_header.read_header` reads each header (``stop_before_pixels``) and
   rejects what is not a CT/MR image slice (non-image SOP classes, other modalities, colour,
   localisers, missing geometry).
2. :func:`build_stacks` groups the usable headers by SeriesInstanceUID (and image type, echo,
   temporal position), then by geometry (orientation, matrix, pixel spacing). Files of a series
   that disagree with its main geometry are rejected as "inconsistent geometry". Copies of the
   same SOP instance (one image in several transfer syntaxes) are used once.
3. :func:`plan_stack` sorts the frames by ImagePositionPatient projected on the slice normal and
   derives the slice spacing from the positions (not SliceThickness); duplicate positions, missing
   slices, irregular spacing, too few slices and single 2D images are rejected with the fix.
4. :meth:`StackPlan.load` decodes the pixels (pylibjpeg handles JPEG baseline/lossless, JPEG-LS,
   JPEG 2000 and RLE), applies RescaleSlope/Intercept (CT -> HU, per frame for enhanced
   multi-frame objects), inverts MONOCHROME1 MR images (CT keeps its HU: the photometric
   interpretation is a display choice) and reorients to canonical axial (Z, H, W).

Pixels are decoded only for the stacks that are chosen. No DICOM value leaves this module.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from medidd.io.sample_data import write_dicom_series
    >>> from medidd.io.volume import Volume
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> v = Volume(np.zeros((4, 8, 8), np.float32) - 1000, (2.5, 0.5, 0.5), "CT", "p-x", "s-x")
    >>> _ = write_dicom_series(v, d / "s", patient_name="MEDIDD^DOC", patient_id="DOC1")
    >>> headers = [read_header(p, p.name) for p in sorted((d / "s").iterdir())]
    >>> stacks, rejected = build_stacks([h.header for h in headers if h.header], salt=b"0" * 32)
    >>> plan = plan_stack(stacks[0], IngestOptions())
    >>> vol = plan.load(patient_key="p-x")
    >>> vol.shape, vol.spacing, float(vol.data.max())
    ((4, 8, 8), (2.5, 0.5, 0.5), -1000.0)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset

from medidd.io.dicom_header import DicomHeader, FrameGeometry, quiet_pydicom, read_header
from medidd.io.geometry import GeometryError, closest_axes, slice_spacing, to_canonical_axial
from medidd.io.options import IngestOptions
from medidd.io.pseudonym import pseudonymise
from medidd.io.volume import Modality, Volume

logger = logging.getLogger(__name__)

__all__ = ["Stack", "StackPlan", "StackRejected", "build_stacks", "plan_stack", "read_header"]


class StackRejected(ValueError):
    """A stack that cannot be used; ``str(exc)`` is the one-line reason."""


@dataclass
class Stack:
    """Frames of one series and one geometry, from one or more files."""

    series_key: str
    modality: str
    headers: list[DicomHeader]
    duplicates: dict[str, str] = field(default_factory=dict)  # duplicate file -> kept file

    @property
    def files(self) -> list[str]:
        return [h.file for h in self.headers]

    @property
    def n_frames(self) -> int:
        return sum(len(h.frames) for h in self.headers)


@dataclass
class StackPlan:
    """A validated stack: frames sorted along the normal, spacing known, pixels not yet read."""

    stack: Stack
    frames: list[tuple[DicomHeader, FrameGeometry]]
    spacing: tuple[float, float, float]  # along (slices, rows, columns), before reorientation
    dirs: npt.NDArray[np.float64]  # LPS direction of (slices, rows, columns)

    @property
    def n_slices(self) -> int:
        return len(self.frames)

    def load(self, *, patient_key: str) -> Volume:
        """Decode the pixels into a canonical axial :class:`Volume`.

        Raises:
            StackRejected: pixels that cannot be decoded (truncated file, corrupt compressed
                stream, wrong size); the reason names the file.
        """
        decoded: dict[Path, npt.NDArray[np.generic]] = {}
        first = self.frames[0][0]
        data = np.empty((len(self.frames), first.rows, first.cols), dtype=np.float32)
        for k, (header, frame) in enumerate(self.frames):
            if header.path not in decoded:
                decoded = {header.path: _decode(header)}  # keep one file's pixels at a time
            pixels = decoded[header.path]
            data[k] = pixels if frame.frame is None else pixels[frame.frame]
            if frame.slope != 1.0:
                data[k] *= frame.slope
            if frame.intercept != 0.0:
                data[k] += frame.intercept
        if self.stack.modality == "MR" and self.frames[0][0].monochrome1:
            data = data.max() + data.min() - data
        data, spacing = to_canonical_axial(data, self.dirs, self.spacing)
        modality: Modality = "CT" if self.stack.modality == "CT" else "MR"
        return Volume(data, spacing, modality, patient_key, self.stack.series_key)


def _decode(header: DicomHeader) -> npt.NDArray[np.generic]:
    n_frames = len(header.frames)
    try:
        with quiet_pydicom():
            ds = _read_full(header.path)
            pixels = ds.pixel_array
    except Exception as exc:
        raise StackRejected(
            f"unreadable pixel data in {header.file} ({type(exc).__name__}): truncated file or "
            "corrupt compressed stream; re-export the series"
        ) from None
    plane = (header.rows, header.cols)
    expected = (n_frames, *plane) if header.multiframe else plane
    if header.multiframe and n_frames == 1 and pixels.shape == expected[1:]:
        pixels = pixels[None]
    if pixels.shape != expected:
        raise StackRejected(
            f"pixel data of {header.file} has shape {pixels.shape}, header says {expected}; "
            "re-export the series"
        )
    return pixels


def _read_full(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
    # Files without a meta header: tell the decoder how the data set was encoded.
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            dcm_uid.ImplicitVRLittleEndian
            if implicit
            else (dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian)
        )
    return ds


def _geometry_key(h: DicomHeader) -> tuple[object, ...]:
    fr = h.frames[0]
    return (
        tuple(round(v, 3) for v in fr.orientation),
        h.rows,
        h.cols,
        tuple(round(v, 3) for v in fr.pixel_spacing),
    )


def build_stacks(
    headers: list[DicomHeader], *, salt: bytes
) -> tuple[list[Stack], dict[str, str]]:
    """Group usable headers into stacks; return the stacks and ``{file: reason}`` rejections.

    Within a series, files whose geometry differs from the most common geometry are rejected
    ("inconsistent geometry"); enhanced multi-frame files form a stack each.
    """
    by_series: dict[tuple[object, ...], list[DicomHeader]] = defaultdict(list)
    for h in sorted(headers, key=lambda h: h.file):
        ident = h.series or f"file:{h.file}"
        mf = ("mf", h.instance or h.file) if h.multiframe else ()
        by_series[(ident, h.modality, h.subkey, *mf)].append(h)
    stacks: list[Stack] = []
    rejected: dict[str, str] = {}
    for key, members in by_series.items():
        by_geometry: dict[tuple[object, ...], list[DicomHeader]] = defaultdict(list)
        for h in members:
            by_geometry[_geometry_key(h)].append(h)
        groups = sorted(by_geometry.values(), key=len, reverse=True)
        main = groups[0]
        series_key = pseudonymise("|".join(map(str, key)), salt, prefix="s")
        for odd in groups[1:]:
            for h in odd:
                rejected[h.file] = (
                    f"inconsistent geometry: orientation/matrix/pixel spacing differs from the "
                    f"other {len(main)} file(s) of series {series_key}; re-export the series"
                )
        stack = Stack(series_key=series_key, modality=main[0].modality, headers=[])
        seen: dict[tuple[object, ...], str] = {}
        for h in main:
            ident2 = (h.instance, tuple(f.position for f in h.frames)) if h.instance else None
            if ident2 is not None and ident2 in seen:
                stack.duplicates[h.file] = seen[ident2]
                continue
            if ident2 is not None:
                seen[ident2] = h.file
            stack.headers.append(h)
        stacks.append(stack)
    return stacks, rejected


def plan_stack(stack: Stack, options: IngestOptions) -> StackPlan:
    """Sort and validate a stack's geometry (no pixels read).

    Raises:
        StackRejected: single 2D image, too few slices, duplicate positions, missing slices or
            irregular spacing; the reason says how to fix it.
    """
    frames = [(h, fr) for h in stack.headers for fr in h.frames]
    first = frames[0][1]
    row = np.array(first.orientation[:3])
    col = np.array(first.orientation[3:])
    normal = np.cross(row, col)
    dirs = np.stack([normal, col, row])
    if len({tuple(round(v, 3) for v in fr.orientation) for _, fr in frames}) > 1:
        raise StackRejected("inconsistent geometry: frames differ in orientation")
    proj = np.array([float(np.dot(fr.position, normal)) for _, fr in frames])
    order = np.argsort(proj, kind="stable")
    frames = [frames[i] for i in order]
    proj = proj[order]
    in_plane = (first.pixel_spacing[0], first.pixel_spacing[1])
    if len(frames) == 1:
        if not options.allow_2d:
            raise StackRejected("single 2D image, not a volume (pass allow_2d to use it)")
        if closest_axes(dirs)[0] != 2:
            raise StackRejected("single 2D image that is not axial; only axial slices are used")
        thickness = frames[0][0].slice_thickness or 1.0
        return StackPlan(stack, frames, (thickness, *in_plane), dirs)
    try:
        dz = slice_spacing(proj, tolerance=options.spacing_tolerance)
    except GeometryError as exc:
        raise StackRejected(str(exc)) from None
    if len(frames) < options.min_slices:
        raise StackRejected(
            f"too few slices ({len(frames)} < min_slices={options.min_slices}) for a volume"
        )
    return StackPlan(stack, frames, (dz, *in_plane), dirs)
