"""Find the patients under a folder and load their usable CT/MR volumes.

Layouts (both may appear in one folder):

* **A** — each sub-folder is a patient, with files at any depth inside (DICOM files, or
  NIfTI/NRRD volumes). The patient key hashes the folder name. A folder that mixes several
  PatientIDs is split into one patient per PatientID (noted in :attr:`IngestReport.notes`).
* **B** — files directly in the patients folder: DICOM files are grouped by PatientID (then by
  StudyInstanceUID when PatientID is empty); each NIfTI/NRRD file is one patient.

Per patient, every series is validated on headers alone (see :mod:`medidd.io.dicom`). With
``series="largest"`` (default) one volume per modality is kept — the most slices, then the
finest slice spacing, then the largest matrix — because several reconstructions of one scan
(kernels, phases) would otherwise weigh a patient twice; its pixels are decoded, and if that
fails the next candidate is tried. ``series="all"`` keeps every usable series.

Label maps and masks (NIfTI/NRRD files named or shaped like one, see :mod:`medidd.io.masks`;
DICOM SEG and RTSTRUCT objects) never become a patient's image: they are skipped before the
series of a patient are ranked and before any modality is guessed.

Nothing raises for bad data: each unusable file or series becomes a :class:`Skipped` item with
a one-line reason naming the file relative to the patients folder; one bad patient never stops
the others. These ``source`` paths are for the site operator only: they may contain local
folder names and must not be shipped.

Example:
    >>> import tempfile, pathlib
    >>> cohort = load_cohort(pathlib.Path(tempfile.mkdtemp()), b"0" * 32)
    >>> cohort.patients, cohort.skipped[0].reason
    ([], 'empty patients folder: no files found')
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medidd.io.dicom import Stack, StackPlan, StackRejected, build_stacks, plan_stack
from medidd.io.dicom_header import HeaderResult, read_header
from medidd.io.options import IngestOptions
from medidd.io.pseudonym import pseudonymise
from medidd.io.readers import (
    DETACHED_DATA_SUFFIXES,
    VolumeFileError,
    is_volume_file,
    read_volume_file,
)
from medidd.io.volume import Cohort, Patient, Skipped, Volume

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class IngestReport:
    """A :class:`Cohort` plus what happened to every file.

    Attributes:
        cohort: the patients and what was skipped.
        used: ``{file: series_key}`` for every file that is part of a returned volume.
        rejected: ``{file: reason}`` for every other file.
        notes: remarks that are not rejections (a folder split by PatientID...).
    """

    cohort: Cohort = field(default_factory=Cohort)
    used: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Unit:
    """One patient's inputs before loading (identity strings never leave this module)."""

    identity: str
    source: str  # folder or file, relative, for messages
    headers: list[HeaderResult] = field(default_factory=list)
    volume_files: list[tuple[Path, str]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


@dataclass
class _Candidate:
    series_key: str
    modality: str
    n_slices: int
    dz: float
    pixels: int
    files: list[str]
    duplicates: dict[str, str]
    load: Callable[[], Volume]


def _folder_identity(folder: str) -> str:
    return f"dir:{folder}"


def folder_patient_key(folder: str, salt: bytes) -> str:
    """The key :func:`ingest` gives the patient in sub-folder ``folder`` of the patients folder
    (layout A; a folder that mixes PatientIDs is split into other keys).

    Lets a caller that made the tree (benchmarks, :mod:`medidd.io.sample_data`) tell which
    patient came from which folder without file names leaving ``medidd.io``.

    Example:
        >>> import tempfile, pathlib
        >>> from medidd.io.sample_data import write_dicom_series
        >>> from medidd.io.volume import Volume
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> v = Volume(np.zeros((3, 4, 4), np.float32) - 1000, (2.0, 1.0, 1.0), "CT", "p", "s")
        >>> _ = write_dicom_series(v, d / "CT-01-x", patient_name="A^B", patient_id="A1")
        >>> ingest(d, b"0" * 32).cohort.patients[0].key == folder_patient_key("CT-01-x", b"0" * 32)
        True
    """
    return pseudonymise(_folder_identity(folder), salt)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _files_under(folder: Path, root: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and _visible(p, root)]
    has_nhdr = {p.parent for p in files if p.name.lower().endswith(".nhdr")}
    return sorted(
        p
        for p in files
        if not (p.parent in has_nhdr and p.name.lower().endswith(DETACHED_DATA_SUFFIXES))
    )


def _split_files(files: list[Path], root: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    volumes = [(p, _rel(p, root)) for p in files if is_volume_file(p)]
    return volumes, [p for p in files if not is_volume_file(p)]


def _stack_source(files: list[str]) -> str:
    if len(files) == 1:
        return files[0]
    parent = Path(files[0]).parent.as_posix()
    return f"{parent}/ ({len(files)} files)"


def _candidate_from_plan(plan: StackPlan, patient_key: str) -> _Candidate:
    stack: Stack = plan.stack
    return _Candidate(
        series_key=stack.series_key,
        modality=stack.modality,
        n_slices=plan.n_slices,
        dz=plan.spacing[0],
        pixels=stack.headers[0].rows * stack.headers[0].cols,
        files=stack.files,
        duplicates=stack.duplicates,
        load=lambda: plan.load(patient_key=patient_key),
    )


def _load_patient(
    unit: _Unit, key: str, options: IngestOptions, salt: bytes, report: IngestReport
) -> Patient:
    patient = Patient(key=key)

    def reject(files: list[str], reason: str) -> None:
        for f in files:
            report.rejected[f] = reason
        patient.skipped.append(Skipped(_stack_source(files), reason))

    for file, reason in unit.other:
        reject([file], reason)
    headers = []
    for result in unit.headers:
        if result.header is None:
            reject([result.file], result.reason or "unusable file")
        else:
            headers.append(result.header)
    stacks, odd = build_stacks(headers, salt=salt)
    for file, reason in odd.items():
        reject([file], reason)
    candidates: list[_Candidate] = []
    for stack in stacks:
        files = stack.files + list(stack.duplicates)
        if options.modality and stack.modality != options.modality:
            reject(files, f"modality {stack.modality} not requested (modality={options.modality})")
            continue
        try:
            candidates.append(_candidate_from_plan(plan_stack(stack, options), key))
        except StackRejected as exc:
            reject(files, f"series {stack.series_key}: {exc}")
    for path, file in unit.volume_files:
        series_key = pseudonymise(f"file:{file}", salt, prefix="s")
        try:
            vol = read_volume_file(
                path, file, patient_key=key, series_key=series_key, options=options
            )
        except VolumeFileError as exc:
            reject([file], str(exc).removeprefix(f"{file}: "))
            continue
        candidates.append(
            _Candidate(
                series_key, vol.modality, vol.n_slices, vol.spacing[0],
                vol.shape[1] * vol.shape[2], [file], {}, lambda vol=vol: vol,  # type: ignore[misc]
            )
        )
    by_modality: dict[str, list[_Candidate]] = defaultdict(list)
    for cand in candidates:
        by_modality[cand.modality].append(cand)
    for modality in sorted(by_modality):
        ranked = sorted(
            by_modality[modality], key=lambda c: (-c.n_slices, c.dz, -c.pixels, c.series_key)
        )
        kept: _Candidate | None = None
        for cand in ranked:
            if kept is not None and options.series == "largest":
                reject(
                    cand.files + list(cand.duplicates),
                    f"series {cand.series_key} not selected: {kept.series_key} is the larger "
                    f"{modality} series of this patient (series='all' keeps every series)",
                )
                continue
            try:
                volume = cand.load()
            except StackRejected as exc:
                reject(cand.files + list(cand.duplicates), f"series {cand.series_key}: {exc}")
                continue
            patient.volumes.append(volume)
            kept = cand
            for f in cand.files:
                report.used[f] = cand.series_key
            for dup, original in cand.duplicates.items():
                reject([dup], f"duplicate of {original} (same SOP instance); used once")
    return patient


def _group_loose(
    files: list[Path], root: Path, report: IngestReport
) -> list[_Unit]:
    volumes, others = _split_files(files, root)
    units: dict[str, _Unit] = {}
    for path, file in volumes:
        units[f"file:{file}"] = _Unit(f"file:{file}", file, volume_files=[(path, file)])
    for path in others:
        file = _rel(path, root)
        result = read_header(path, file)
        if result.patient:
            ident = f"id:{result.patient}"
        elif result.study:
            ident = f"study:{result.study}"
        elif result.header is not None:
            ident = f"file:{file}"
        else:
            reason = result.reason or "unusable file"
            report.rejected[file] = reason
            report.cohort.skipped.append(Skipped(file, reason))
            continue
        units.setdefault(ident, _Unit(ident, file)).headers.append(result)
    return list(units.values())


def _split_folder(unit: _Unit, report: IngestReport) -> list[_Unit]:
    """One unit per PatientID when a patient folder mixes several."""
    ids = sorted({r.patient for r in unit.headers if r.patient})
    if len(ids) <= 1:
        return [unit]
    parts: dict[str, _Unit] = {}
    for result in unit.headers:
        pid = result.patient or ""
        parts.setdefault(pid, _Unit(f"{unit.identity}|id:{pid}", unit.source)).headers.append(
            result
        )
    first = parts[ids[0]]
    first.volume_files, first.other = unit.volume_files, unit.other
    report.notes.append(
        f"{unit.source} holds {len(ids)} different PatientIDs: split into {len(parts)} patients"
    )
    return list(parts.values())


def ingest(
    patients_dir: Path,
    salt: bytes,
    options: IngestOptions | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Load every patient under ``patients_dir``; report what happened to each file.

    Args:
        patients_dir: the patients folder (layouts A and B, see the module docstring).
        salt: the site salt (:func:`medidd.io.pseudonym.load_or_create_salt`).
        options: what counts as usable (:class:`IngestOptions`).
        progress: called as ``progress(done, total)`` after each patient.

    Raises:
        FileNotFoundError: ``patients_dir`` is not a folder. Bad data never raises.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "p1").mkdir()
        >>> _ = (d / "p1" / "notes.txt").write_text("hello")
        >>> report = ingest(d, b"0" * 32)
        >>> report.rejected
        {'p1/notes.txt': 'not a DICOM file'}
    """
    root = Path(patients_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"patients folder {root} does not exist or is not a folder: pass the folder that "
            "holds one sub-folder (or one file set) per patient"
        )
    opts = options or IngestOptions()
    report = IngestReport()
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        report.cohort.skipped.append(Skipped(".", "empty patients folder: no files found"))
        return report
    loose = [p for p in entries if p.is_file()]
    units: list[_Unit] = _group_loose(loose, root, report) if loose else []
    folders = [p for p in entries if p.is_dir()]
    pending: list[tuple[Path, str]] = [(p, _rel(p, root)) for p in folders]
    total = len(units) + len(pending)
    done = 0

    def finish(unit: _Unit) -> None:
        nonlocal done
        key = pseudonymise(unit.identity, salt)
        try:
            report.cohort.patients.append(_load_patient(unit, key, opts, salt, report))
        except Exception as exc:  # one bad patient never stops the others
            where = "".join(traceback.format_tb(exc.__traceback__)[-2:])
            logger.error("unexpected %s while loading a patient:\n%s", type(exc).__name__, where)
            reason = f"unexpected error ({type(exc).__name__}) while reading; please report it"
            report.cohort.patients.append(Patient(key, skipped=[Skipped(unit.source, reason)]))
        if progress is not None:
            progress(done + 1, total)
        done += 1

    for unit in units:
        finish(unit)
    for folder, source in pending:
        files = _files_under(folder, root)
        if not files:
            report.cohort.skipped.append(Skipped(f"{source}/", "empty folder: no files found"))
            done += 1
            if progress is not None:
                progress(done, total)
            continue
        volumes, others = _split_files(files, root)
        unit = _Unit(_folder_identity(source), f"{source}/", volume_files=volumes)
        for path in others:
            unit.headers.append(read_header(path, _rel(path, root)))
        parts = _split_folder(unit, report)
        total += len(parts) - 1
        for part in parts:
            finish(part)
    n_ok = len(report.cohort.usable_patients)
    logger.info("%d of %d patients have a usable volume", n_ok, len(report.cohort.patients))
    return report


def load_cohort(
    patients_dir: Path,
    salt: bytes,
    *,
    modality: str | None = None,
    min_slices: int = 3,
    allow_2d: bool = False,
    spacing_tolerance: float = 0.1,
    series: str = "largest",
    nonfinite: str = "reject",
    progress: Progress | None = None,
) -> Cohort:
    """Load the usable CT/MR volumes of every patient under ``patients_dir``.

    Keyword arguments are those of :class:`IngestOptions`; see :func:`ingest` for a per-file
    account of what was used and why the rest was not.

    Example:
        >>> import tempfile, pathlib
        >>> try:
        ...     load_cohort(pathlib.Path(tempfile.mkdtemp()), b"0" * 32, series="al")
        ... except ValueError as exc:
        ...     print("did you mean 'all'?" in str(exc))
        True
    """
    options = IngestOptions.model_validate(
        {
            "modality": modality,
            "min_slices": min_slices,
            "allow_2d": allow_2d,
            "spacing_tolerance": spacing_tolerance,
            "series": series,
            "nonfinite": nonfinite,
        }
    )
    return ingest(patients_dir, salt, options, progress).cohort


def summarise_cohort(cohort: Cohort) -> list[dict[str, Any]]:
    """Rows for an ``inspect`` table: one per volume, then one per skipped input.

    Volume rows: ``kind="volume"``, ``patient``, ``series``, ``modality``, ``slices``,
    ``shape`` (Z, H, W), ``spacing`` (z, y, x mm), ``min``, ``max``. Skipped rows:
    ``kind="skipped"``, ``patient`` (``None`` when the input belongs to no patient), ``source``,
    ``reason``. Values are plain Python types (JSON-ready).

    Example:
        >>> summarise_cohort(Cohort(skipped=[Skipped("x.txt", "not a DICOM file")]))
        [{'kind': 'skipped', 'patient': None, 'source': 'x.txt', 'reason': 'not a DICOM file'}]
    """
    rows: list[dict[str, Any]] = []
    for patient in cohort.patients:
        for vol in patient.volumes:
            rows.append(
                {
                    "kind": "volume",
                    "patient": patient.key,
                    "series": vol.series_key,
                    "modality": vol.modality,
                    "slices": vol.n_slices,
                    "shape": list(vol.shape),
                    "spacing": [round(float(s), 4) for s in vol.spacing],
                    "min": float(np.min(vol.data)),
                    "max": float(np.max(vol.data)),
                }
            )
    for patient in cohort.patients:
        for item in patient.skipped:
            rows.append(
                {"kind": "skipped", "patient": patient.key, "source": item.source,
                 "reason": item.reason}
            )
    for item in cohort.skipped:
        rows.append({"kind": "skipped", "patient": None, "source": item.source,
                     "reason": item.reason})
    return rows
