"""Write volumes as real DICOM series, and turn the fetched sample volumes into a patients tree.

``make_sample_patients`` turns the real cohort fetched by ``shared/data/fetch_real_samples.sh``
(:data:`SAMPLE_COHORT`: 12 CT, of which 2 head and 10 body, and 7 MR, of which 5 head and 2
body) into a hospital tree with one folder per patient (``out/CT-03-lung1/IM0001.dcm``...), so
that demos, tests and benchmarks exercise the real ``--patients ./dicom`` path. Volume files
become DICOM series with fake names and IDs (``MEDIDD^SAMPLE03``) and UIDs derived from the
sample's number, so a rerun writes identical files; real DICOM samples are copied as they are.
:func:`sample_region` / :func:`sample_regions` tell head from body patients afterwards.

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
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset

from medidd.atomic import atomic_directory
from medidd.io.discover import folder_patient_key
from medidd.io.options import IngestOptions
from medidd.io.readers import VOLUME_SUFFIXES, LabelMapError, is_volume_file, read_volume_file
from medidd.io.volume import Modality, Volume
from medidd.lookup import look_up_option

logger = logging.getLogger(__name__)

CODECS = {"j2k": dcm_uid.JPEG2000Lossless, "rle": dcm_uid.RLELossless}
SAMPLE_MODALITIES = ("CT", "MR", "both")
SAMPLE_REGIONS = ("head", "body", "all")
_INT16_SPAN = 32000.0
_MODALITIES: tuple[Modality, ...] = ("CT", "MR")

Region = Literal["head", "body"]

#: The fetched cohort in numbering order, per modality: (sample name, body region). The first
#: cohort (CT 1-4, MR 1-3) keeps its numbers; the items added with cohort v2 follow.
_COHORT: dict[Modality, tuple[tuple[str, Region], ...]] = {
    "CT": (
        ("abdomen_3mm", "body"),
        ("chest_cta_1p5mm", "body"),
        ("lung1", "body"),
        ("lung2", "body"),
        ("ctchest_slicer", "body"),
        ("head_ct1", "head"),
        ("head_ct2", "head"),
        ("pycerr_pat1", "body"),
        ("pycerr_pat2", "body"),
        ("pycerr_pat3", "body"),
        ("pycerr_pat4", "body"),
        ("spine_ct", "body"),
    ),
    "MR": (
        ("abdomen_mr", "body"),
        ("brain1", "head"),
        ("brain2", "head"),
        ("head_lowres", "head"),
        ("head_t1_d2s", "head"),
        ("head_t1_itk", "head"),
        ("spine_t2", "body"),
    ),
}


@dataclass(frozen=True)
class SampleItem:
    """One patient of the fetched sample cohort.

    Attributes:
        modality: ``"CT"`` or ``"MR"`` (the ``ct/`` or ``mr/`` folder of the samples).
        index: its number within the modality (``CT-03``).
        name: the sample's file stem or folder name (``lung1``, ``pycerr_pat1``).
        region: ``"head"`` or ``"body"`` (chest, abdomen, spine).
        number: its number in the whole cohort (fake PatientID ``MEDIDD-SAMPLE-03``, UID seed).
    """

    modality: Modality
    index: int
    name: str
    region: Region
    number: int

    @property
    def folder(self) -> str:
        """The patient folder name, e.g. ``CT-03-lung1``."""
        return f"{self.modality}-{self.index:02d}-{self.name}"


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
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: delete it or pass overwrite=True")
    with atomic_directory(out_dir) as tmp:
        names = _write_series(
            volume, tmp, patient_name=patient_name, patient_id=patient_id, seed=seed,
            compress=compress, codec=codec,
        )
    return [out_dir / name for name in names]


def _write_series(
    volume: Volume,
    folder: Path,
    *,
    patient_name: str,
    patient_id: str,
    seed: int,
    compress: bool,
    codec: str,
) -> list[str]:
    """Write the slices of ``volume`` into the existing ``folder``; return the file names."""
    codec = look_up_option(codec, tuple(CODECS), what="codec")
    if compress and codec == "j2k" and min(volume.shape[1:]) < 32:
        raise ValueError("JPEG 2000 needs images of at least 32x32 pixels: use codec='rle'")
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
        (folder / names[k]).write_bytes(buf.getvalue())
    return names


def _stem(name: str) -> str:
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _items() -> tuple[SampleItem, ...]:
    rows = [(m, i, name, region) for m in _MODALITIES for i, (name, region) in
            enumerate(_COHORT[m], start=1)]
    return tuple(SampleItem(m, i, name, region, n) for n, (m, i, name, region) in
                 enumerate(rows, start=1))


SAMPLE_COHORT: tuple[SampleItem, ...] = _items()
#: The first sample cohort (before issue 11): 4 body CT and 3 MR, for callers that measured on it.
COHORT_V1 = ("abdomen_3mm", "chest_cta_1p5mm", "lung1", "lung2", "abdomen_mr", "brain1", "brain2")


def sample_region(name: str | Path) -> Region:
    """The body region of a sample patient: ``"head"`` or ``"body"``.

    Args:
        name: a patient folder written by :func:`make_sample_patients` (``"CT-06-head_ct1"``,
            or its path), a sample name (``"head_ct1"``) or a sample file (``"lung1.nrrd"``).

    Raises:
        ValueError: not a sample of the cohort (with the closest name).

    Example:
        >>> sample_region("CT-06-head_ct1"), sample_region("lung1.nrrd"), sample_region("spine_t2")
        ('head', 'body', 'body')
        >>> sample_region("CT-01-lungs1")
        Traceback (most recent call last):
        ...
        ValueError: unknown sample 'lungs1': did you mean 'lung1'? valid: abdomen_3mm, ...
    """
    base = Path(name).name
    match = re.fullmatch(r"(?:CT|MR)-\d+-(.+)", base)
    stem = match.group(1) if match else _stem(base)
    regions = {item.name: item.region for item in SAMPLE_COHORT}
    return regions[look_up_option(stem, regions, what="sample")]


def sample_regions(tree: Path, salt: bytes) -> dict[str, Region]:
    """``{patient key: region}`` for the patient folders of a tree written by
    :func:`make_sample_patients`, with the keys :func:`medidd.io.discover.ingest` gives them
    under ``salt``, so that a benchmark can split a prepared cohort by region.

    Example:
        >>> import tempfile
        >>> tree = Path(tempfile.mkdtemp())
        >>> for folder in ("CT-03-lung1", "CT-06-head_ct1"):
        ...     (tree / folder).mkdir()
        >>> sorted(sample_regions(tree, b"0" * 32).values())
        ['body', 'head']
    """
    return {
        folder_patient_key(folder.name, salt): sample_region(folder.name)
        for folder in sorted(Path(tree).iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }


def _find(samples_dir: Path, item: SampleItem) -> Path | None:
    folder = samples_dir / item.modality.lower()
    for candidate in (item.name, *(item.name + suffix for suffix in VOLUME_SUFFIXES)):
        if (folder / candidate).exists():
            return folder / candidate
    return None


def _unknown(samples_dir: Path, modality: str) -> list[str]:
    known = {item.name for item in SAMPLE_COHORT if item.modality == modality}
    folder = samples_dir / modality.lower()
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and (p.is_dir() or is_volume_file(p))
        and (p.name if p.is_dir() else _stem(p.name)) not in known
    )


def _read(path: Path, item: SampleItem) -> Volume:
    return read_volume_file(
        path,
        path.name,
        patient_key=f"sample-{item.number:02d}",
        series_key=f"sample-{item.number:02d}",
        options=IngestOptions.model_validate({"modality": item.modality}),
    )


def _write_item(item: SampleItem, source: Path, folder: Path, compress: bool) -> int:
    """Write one sample patient into the empty ``folder``; return its number of image files."""

    def write(volume: Volume) -> int:
        files = _write_series(
            volume,
            folder,
            patient_name=f"MEDIDD^SAMPLE{item.number:02d}",
            patient_id=f"MEDIDD-SAMPLE-{item.number:02d}",
            seed=item.number,
            compress=compress,
            codec="j2k",
        )
        return len(files)

    if source.is_file():
        return write(_read(source, item))
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    volume_files = [p for p in files if is_volume_file(p)]
    if not volume_files:  # a real DICOM series (and its RTSTRUCT): copied as it is
        for path in files:
            target = folder / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        return len(files)
    images, masks = [], []
    for path in volume_files:
        try:
            images.append(_read(path, item))
        except LabelMapError:
            masks.append(path)
    if len(images) != 1:
        raise ValueError(
            f"sample folder {source} holds {len(images)} images besides {len(masks)} mask(s), "
            "expected one: fetch the samples again"
        )
    for path in masks:  # masks stay beside the image, as at a site; ingestion skips them
        shutil.copy2(path, folder / path.name)
    return write(images[0])


def make_sample_patients(
    samples_dir: Path,
    out: Path,
    *,
    modality: str = "both",
    region: str = "all",
    names: Sequence[str] | None = None,
    compress: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write the fetched sample cohort as a patients tree under ``out``, one folder per patient.

    The folder of a patient is ``{modality}-{index:02d}-{sample name}`` (``CT-03-lung1``,
    ``MR-07-spine_t2``; :data:`SAMPLE_COHORT` fixes the numbers, so a sample keeps its folder
    name, and hence its patient key, whatever is filtered or added). Volume files become one
    DICOM series; a sample that is already a DICOM series (``pycerr_pat1``..4) is copied as it
    is, with its RTSTRUCT; the masks beside a sample's image (``spine_ct``, ``spine_t2``) are
    copied beside its series and never become patients. :func:`sample_region` tells the region
    of a folder, :func:`sample_regions` of a patient key.

    Args:
        samples_dir: the fetched samples (with ``ct/`` and ``mr/``).
        out: the patients folder to create (one sub-folder per patient).
        modality: ``"CT"``, ``"MR"`` or ``"both"``.
        region: ``"head"``, ``"body"`` or ``"all"`` (see :data:`SAMPLE_COHORT`).
        names: only these samples (``("lung1", "lung2")``; :data:`COHORT_V1` is the first
            cohort of 4 CT and 3 MR); ``None``: all.
        compress: write JPEG 2000 lossless series instead of uncompressed ones (copied DICOM
            series are left as they are).
        overwrite: replace patient folders that already exist.

    Returns:
        The patient folders written, e.g. ``out/CT-03-lung1``, in cohort order.

    Raises:
        FileNotFoundError: no sample of a requested modality in ``samples_dir``.
        ValueError: an unknown option value or sample name, or no sample selected.
        FileExistsError: a patient folder exists and ``overwrite`` is false (nothing written).

    Example:
        >>> make_sample_patients(Path("data/samples"), Path("/tmp/x"), modality="MRI")
        Traceback (most recent call last):
        ...
        ValueError: unknown modality 'MRI': did you mean 'MR'? valid: CT, MR, both
    """
    choice = look_up_option(modality, SAMPLE_MODALITIES, what="modality")
    where = look_up_option(region, SAMPLE_REGIONS, what="region")
    samples_dir = Path(samples_dir)
    known = [item.name for item in SAMPLE_COHORT]
    chosen = set(known) if names is None else {look_up_option(n, known, what="sample")
                                               for n in names}
    wanted = [
        item
        for item in SAMPLE_COHORT
        if choice in ("both", item.modality)
        and where in ("all", item.region)
        and item.name in chosen
    ]
    if not wanted:
        raise ValueError(
            f"no sample is {choice if choice != 'both' else 'CT or MR'}, region {where} and "
            f"one of names={list(names or [])}: widen the selection"
        )
    sources: list[tuple[SampleItem, Path]] = []
    for mod in sorted({item.modality for item in wanted}):
        folder = samples_dir / mod.lower()
        found = [(i, _find(samples_dir, i)) for i in wanted if i.modality == mod]
        present = [(i, p) for i, p in found if p is not None]
        if not present:
            raise FileNotFoundError(
                f"no sample volumes in {folder}: run shared/data/fetch_real_samples.sh first"
            )
        missing = [i.name for i, p in found if p is None]
        if missing:
            logger.warning("samples missing from %s: %s (fetch them again)", folder, missing)
        unknown = _unknown(samples_dir, mod)
        if unknown:
            logger.warning("not in the sample cohort, left out: %s in %s", unknown, folder)
        sources += present
    targets = [Path(out) / item.folder for item, _ in sources]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists: delete it or pass overwrite=True"
        )
    for (item, source), target in zip(sources, targets, strict=True):
        with atomic_directory(target) as tmp:
            n_files = _write_item(item, source, tmp, compress)
        logger.info("wrote sample patient %s (%d image files)", target.name, n_files)
    return targets
