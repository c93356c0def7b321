"""A site's patients folder -> one :class:`SliceSet` per usable patient, with a cache.

:func:`prepare_patients` runs ingestion (:func:`medidd.io.discover.ingest`) and the modality
pipeline (:func:`preprocess_volume`) and keeps every reason a patient or series was not used.
Its result is cached under a key made of the *content* of every input file (SHA-256 of the
bytes, names relative to the folder) plus the ingestion and preprocessing settings and the
MediDD version: a rerun on unchanged data reads the cache instead of decoding DICOM again, and
any change of a byte or a setting recomputes. The cache lives at the site (it holds normalised
images of real patients) and is written atomically.

Example:
    >>> import tempfile, pathlib
    >>> from medidd.io.options import IngestOptions
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> prep = prepare_patients(d, salt=b"0" * 32)
    >>> prep.slices, prep.skipped[0].reason
    ([], 'empty patients folder: no files found')
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import medidd
from medidd.atomic import atomic_write_bytes
from medidd.io.discover import IngestReport, ingest, summarise_cohort
from medidd.io.options import IngestOptions
from medidd.io.volume import Skipped
from medidd.preprocess.pipeline import PreprocessConfig, preprocess_volume
from medidd.preprocess.slices import SliceSet

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class PreparedCohort:
    """Normalised slices per usable patient, what was skipped and why, and an inspect summary.

    ``skipped`` and ``summary`` may name local files: they are for the site operator only.
    """

    slices: list[SliceSet] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    cache_hit: bool = False

    @property
    def n_slices(self) -> int:
        return sum(len(s) for s in self.slices)


def series_sources(report: IngestReport) -> dict[str, str]:
    """Where each used series came from, relative to the patients folder: its file (a volume
    file, a one-file series) or the folder that holds its files (``"CT-01-x/"``).

    Local-only: these names may identify patients; show them to the site operator, never ship
    them.

    Example:
        >>> r = IngestReport(used={"p1/a.dcm": "s-1", "p1/b.dcm": "s-1", "ct.nii.gz": "s-2"})
        >>> series_sources(r)
        {'s-1': 'p1/', 's-2': 'ct.nii.gz'}
    """
    files: dict[str, list[str]] = {}
    for file, series in report.used.items():
        files.setdefault(series, []).append(file)
    out = {}
    for series, names in files.items():
        if len(names) == 1:
            out[series] = names[0]
        else:
            common = os.path.commonpath(names).replace(os.sep, "/")
            out[series] = f"{common}/" if common else "./"
    return out


def _files_under(root: Path) -> list[Path]:
    """Every file under ``root``, following symbolic links to folders (a patients folder of
    links to each patient's folder is common), sorted as ``sorted(root.rglob("*"))`` would."""
    found = []
    for dirpath, _, names in os.walk(root, followlinks=True):
        found += [Path(dirpath) / n for n in names]
    return sorted(found)


def content_key(root: Path, *parts: str) -> str:
    """SHA-256 over every visible file's relative name and bytes under ``root`` (symbolic
    links to folders followed), plus ``parts``."""
    h = hashlib.sha256()
    for p in _files_under(root):
        rel = p.relative_to(root)
        if p.is_file() and not any(s.startswith(".") for s in rel.parts):
            h.update(str(rel).encode() + b"\0")
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _to_blob(prep: PreparedCohort) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {
            "slices": [
                {
                    "images": s.images,
                    "z": s.z,
                    "key": s.patient_key,
                    "modality": s.modality,
                    "window": list(s.window),
                }
                for s in prep.slices
            ],
            "skipped": [[s.source, s.reason] for s in prep.skipped],
            "summary": json.dumps(prep.summary, default=str),
        },
        buf,
    )
    return buf.getvalue()


def _from_blob(blob: bytes) -> PreparedCohort:
    data = torch.load(io.BytesIO(blob), weights_only=True)
    slices = [
        SliceSet(d["images"], d["z"], d["key"], d["modality"], (d["window"][0], d["window"][1]))
        for d in data["slices"]
    ]
    skipped = [Skipped(a, b) for a, b in data["skipped"]]
    return PreparedCohort(slices, skipped, json.loads(data["summary"]), cache_hit=True)


def prepare_patients(
    patients_dir: Path,
    *,
    salt: bytes,
    cfg: PreprocessConfig | None = None,
    options: IngestOptions | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> PreparedCohort:
    """Ingest and preprocess every patient under ``patients_dir``.

    One :class:`SliceSet` per usable patient: its largest usable series of the requested
    modality (``options.modality``; without one, the modality most patients have). A patient
    whose volume has no usable slice after preprocessing is skipped with the reason.
    """
    cfg = cfg or PreprocessConfig()
    options = options or IngestOptions()
    root = Path(patients_dir)
    key = None
    if cache_dir is not None and root.is_dir():
        key = content_key(
            root, salt.hex(), cfg.model_dump_json(), options.model_dump_json(), medidd.__version__
        )
        cached = Path(cache_dir) / f"{key}.pt"
        if cached.is_file():
            try:
                return _from_blob(cached.read_bytes())
            except Exception as exc:  # a damaged cache entry is recomputed, never trusted
                logger.warning("cache entry unreadable (%s); recomputing", type(exc).__name__)
    report = ingest(root, salt, options, progress)
    cohort = report.cohort
    prep = PreparedCohort(skipped=list(cohort.skipped), summary=summarise_cohort(cohort))
    modality: str | None = options.modality
    if modality is None:
        counts: dict[str, int] = {}
        for p in cohort.usable_patients:
            for m in {v.modality for v in p.volumes}:
                counts[m] = counts.get(m, 0) + 1
        modality = max(counts, key=counts.__getitem__) if counts else "CT"
    for patient in cohort.patients:
        prep.skipped.extend(patient.skipped)
        vols = sorted(
            (v for v in patient.volumes if v.modality == modality), key=lambda v: -v.n_slices
        )
        if not vols:
            if patient.volumes:
                prep.skipped.append(
                    Skipped(patient.key, f"no {modality} series (the site's modality)")
                )
            continue
        try:
            prep.slices.append(preprocess_volume(vols[0], cfg))
        except ValueError as exc:
            prep.skipped.append(Skipped(patient.key, str(exc)))
    if key is not None and cache_dir is not None:
        atomic_write_bytes(Path(cache_dir) / f"{key}.pt", _to_blob(prep))
    return prep
