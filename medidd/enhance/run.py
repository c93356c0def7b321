"""Enhance every patient of a folder with a trained model: the site's ``enhance`` command.

Per usable patient (ingestion exactly as for distillation: :func:`medidd.io.discover.ingest`,
the model's modality), the largest series is enhanced (:func:`enhance_volume`) and written
into ``out`` as:

- ``<patient>/<series>.nii.gz``: float32 NIfTI in HU (CT) or the input's units (MR), on the
  input's voxel grid with its affine (spacing, origin, direction);
- ``<patient>/<series>_dicom/IM0001.dcm ...`` for DICOM input: a derived series (new UIDs,
  ImageType DERIVED, see :mod:`medidd.enhance.writers`);
- ``enhance.json``: the model (its sha256 and card), the input's content hash and, per output,
  the HU range before and after.

``<patient>`` is the patient's folder name (or its pseudonym when its files lie loose in the
patients folder), so the output mirrors the input; it stays at the site with the input.

Nothing half-written is ever visible: everything is written into a temporary sibling folder
that replaces ``out`` in one rename. An ``out`` that already holds the same result (same model,
same input bytes) is left as it is; one that holds anything else is refused unless
``overwrite``.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "out").mkdir(); _ = (d / "out" / "notes.txt").write_text("x")
    >>> check_output_folder(d / "out", "0" * 64, overwrite=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medidd.enhance.run.EnhanceError: .../out already holds other files ...
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import medidd
from medidd.atomic import atomic_directory, atomic_write_text
from medidd.enhance.apply import enhance_volume
from medidd.enhance.source import SourceError, SourceGrid, dicom_grid, volume_file_grid
from medidd.enhance.writers import write_derived_dicom, write_nifti
from medidd.io.discover import IngestReport, ingest
from medidd.io.options import IngestOptions
from medidd.io.readers import is_volume_file
from medidd.io.volume import Skipped, Volume
from medidd.model import ModelError, load_model, sha256_bytes

logger = logging.getLogger(__name__)

RECORD = "enhance.json"

#: ``on_volume(done, total, label)`` before each volume; ``on_slices(done, total)`` per batch.
VolumeProgress = Callable[[int, int, str], None]
SliceProgress = Callable[[int, int], None]


class EnhanceError(ValueError):
    """``enhance`` cannot run as asked; the message says what to change."""


@dataclass
class EnhancedSeries:
    """One enhanced volume: the patient folder label and series key, the files written
    (relative to ``out``), slices, and the native-unit range of input and output."""

    patient: str
    series: str
    files: list[str]
    n_slices: int
    input_range: tuple[float, float]
    output_range: tuple[float, float]
    dicom_note: str | None = None


@dataclass
class EnhanceResult:
    """What ``enhance`` did: the outputs, the skipped inputs (local file names: for the site
    operator only), and whether ``out`` already held this result (``unchanged``)."""

    out: Path
    series: list[EnhancedSeries] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unchanged: bool = False


def _input_key(root: Path, model_sha: str, options: IngestOptions) -> str:
    from medidd.preprocess.cohort import content_key

    return content_key(root, model_sha, options.model_dump_json(), medidd.__version__)


def check_output_folder(out: Path, run_key: str, *, overwrite: bool) -> bool:
    """Whether ``out`` already holds the result with ``run_key`` (then nothing is to do).

    Raises:
        EnhanceError: ``out`` is a file, or a folder that holds a different result or other
            files, and ``overwrite`` is false.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EnhanceError(f"{out} is a file: pass a folder for --out")
    if not out.exists() or not any(out.iterdir()):
        return False
    record = out / RECORD
    if record.is_file():
        try:
            held = json.loads(record.read_text(encoding="utf-8")).get("run_key")
        except (ValueError, UnicodeDecodeError):
            held = None
        if held == run_key:
            return True
        if overwrite:
            return False
        raise EnhanceError(f"{out} already holds a different enhance result (another model or "
                           "other input): choose another --out or pass --overwrite to replace it")
    if overwrite:
        return False
    raise EnhanceError(f"{out} already holds other files (no {RECORD}): choose an empty or new "
                       "--out folder; --overwrite would replace the whole folder")


def _patient_label(files: list[str], patient_key: str) -> str:
    parts = Path(files[0]).parts if files else ()
    return parts[0] if len(parts) > 1 else patient_key


def source_grid(volume: Volume, report: IngestReport, root: Path, salt: bytes,
                options: IngestOptions) -> tuple[SourceGrid, list[str]]:
    """The input grid of ``volume`` and the files (relative to ``root``) it was read from.

    Raises:
        SourceError: the files or the series cannot be found again.
    """
    from medidd.io.dicom import build_stacks, plan_stack, read_header

    files = sorted(f for f, s in report.used.items() if s == volume.series_key)
    if not files:
        raise SourceError(f"series {volume.series_key}: no input files recorded")
    if len(files) == 1 and is_volume_file(root / files[0]):
        return volume_file_grid(root / files[0]), files
    headers = [h for h in (read_header(root / f, f).header for f in files) if h is not None]
    stacks, _ = build_stacks(headers, salt=salt)
    stack = next((s for s in stacks if s.series_key == volume.series_key), None)
    if stack is None:
        raise SourceError(f"series {volume.series_key}: its files no longer form the series")
    plan = plan_stack(stack, options)
    first_header, first_frame = plan.frames[0]
    grid = dicom_grid([(h.path, fr.frame) for h, fr in plan.frames], plan.dirs, plan.spacing,
                      first_frame.position, first_header.rows, first_header.cols)
    return grid, files


def _record(result: EnhanceResult, run_key: str, model_path: Path, model_sha: str,
            card: dict[str, Any]) -> str:
    data = {
        "format": "medidd-enhance/1",
        "run_key": run_key,
        "software_version": medidd.__version__,
        "model": {"file": str(model_path), "sha256": model_sha, "card": card},
        "series": [vars(s) for s in result.series],
        "skipped": [{"source": s.source, "reason": s.reason} for s in result.skipped],
    }
    return json.dumps(data, indent=2, default=list) + "\n"


def enhance_patients(model_path: Path, patients: Path, out: Path, *, salt: bytes,
                     options: IngestOptions | None = None, dicom: bool = True,
                     overwrite: bool = False, batch_size: int = 8,
                     on_volume: VolumeProgress | None = None,
                     on_slices: SliceProgress | None = None) -> EnhanceResult:
    """Apply the model at ``model_path`` to every usable patient under ``patients``.

    Args:
        model_path: ``model.safetensors`` (with ``metadata.json`` beside it) or its folder.
        patients: the patients folder (as for ``distill``).
        out: output folder (see the module docstring).
        salt: the site salt (pseudonyms of patients without a folder of their own).
        options: ingestion options; ``modality`` defaults to the model's.
        dicom: also write a derived DICOM series for DICOM input.
        overwrite: replace an ``out`` that holds something else.
        batch_size: slices per forward pass.
        on_volume / on_slices: progress callbacks.

    Raises:
        ModelError: the model is damaged, or trained for another modality than asked.
        EnhanceError: ``out`` holds something else, or no patient could be enhanced.
        FileNotFoundError: ``patients`` is not a folder.
    """
    model_path = Path(model_path)
    opts = options or IngestOptions()
    model, card = load_model(model_path, modality=opts.modality)
    if opts.modality is None and card.modality is not None:
        opts = opts.model_copy(update={"modality": card.modality})
    if opts.modality is None:
        raise ModelError(f"{model_path} does not say which modality it was trained on (a FedAvg "
                         "run with generic noise): pass --modality CT or MR")
    weights = model_path / "model.safetensors" if model_path.is_dir() else model_path
    model_sha = card.weights_sha256 or sha256_bytes(weights.read_bytes())
    root = Path(patients)
    if not root.is_dir():
        raise FileNotFoundError(f"patients folder {root} does not exist or is not a folder")
    run_key = _input_key(root, model_sha, opts)
    out = Path(out)
    if check_output_folder(out, run_key, overwrite=overwrite):
        held = json.loads((out / RECORD).read_text(encoding="utf-8"))
        result = EnhanceResult(out, unchanged=True)
        result.series = [EnhancedSeries(**{**s, "input_range": tuple(s["input_range"]),
                                           "output_range": tuple(s["output_range"])})
                         for s in held["series"]]
        return result
    report = ingest(root, salt, opts)
    result = EnhanceResult(out, skipped=list(report.cohort.skipped))
    volumes = [(p, v) for p in report.cohort.patients for v in p.volumes]
    for p in report.cohort.patients:
        result.skipped.extend(p.skipped)
    if not volumes:
        raise EnhanceError(f"no usable {opts.modality} patient in {root}: run `medidd-node "
                           f"inspect --patients {root}` to see why each input was skipped")
    description = (f"MediDD {card.task} with {card.network.name} (model sha256 "
                   f"{model_sha[:12]}), trained on {card.degradation.get('kind')}")
    with atomic_directory(out) as tmp:
        for i, (patient, volume) in enumerate(volumes):
            try:
                grid, files = source_grid(volume, report, root, salt, opts)
            except (SourceError, ValueError) as exc:
                result.skipped.append(Skipped(patient.key, f"geometry not rebuilt: {exc}"))
                continue
            label = _patient_label(files, patient.key)
            if on_volume is not None:
                on_volume(i, len(volumes), label)
            enhanced = enhance_volume(model, volume, card, batch_size=batch_size,
                                      progress=on_slices)
            raw = grid.to_raw(enhanced)
            folder = tmp / label
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{volume.series_key}.nii.gz"
            write_nifti(raw, grid, folder / name)
            written = [f"{label}/{name}"]
            note = None
            if dicom and grid.frames:
                series_dir = folder / f"{volume.series_key}_dicom"
                series_dir.mkdir()
                try:
                    dcm = write_derived_dicom(np.transpose(raw, (2, 1, 0)), grid, series_dir,
                                              modality=volume.modality, description=description)
                    written += [f"{label}/{series_dir.name}/{p.name}" for p in dcm]
                except ValueError as exc:
                    shutil.rmtree(series_dir)
                    note = str(exc)
            result.series.append(EnhancedSeries(
                label, volume.series_key, written, volume.n_slices,
                (float(volume.data.min()), float(volume.data.max())),
                (float(enhanced.min()), float(enhanced.max())), note))
        if not result.series:
            raise EnhanceError(f"no patient in {root} could be enhanced: "
                               + "; ".join(f"{s.source}: {s.reason}" for s in result.skipped))
        atomic_write_text(tmp / RECORD, _record(result, run_key, model_path, model_sha,
                                                card.model_dump(mode="json")))
    if on_volume is not None:
        on_volume(len(volumes), len(volumes), "")
    logger.info("enhanced %d series into %s", len(result.series), out)
    return result
