"""Patient discovery: layouts A and B, mixed folders, empty folders, selection, no PHI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medidd.io.discover import ingest, load_cohort, summarise_cohort
from medidd.io.options import IngestOptions
from medidd.io.pseudonym import pseudonymise

from .conftest import SALT, ramp_volume, write_patient


def test_empty_folder_gives_an_empty_cohort_with_a_reason(tmp_path: Path) -> None:
    cohort = load_cohort(tmp_path, SALT)
    assert cohort.patients == [] and "empty patients folder" in cohort.skipped[0].reason
    (tmp_path / "p1").mkdir()
    (tmp_path / "p2" / "sub").mkdir(parents=True)
    cohort = load_cohort(tmp_path, SALT)
    assert [s.source for s in cohort.skipped] == ["p1/", "p2/"]
    assert all("empty folder" in s.reason for s in cohort.skipped)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cohort(tmp_path / "nope", SALT)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "p1" / "docs").mkdir(parents=True)
    (tmp_path / "p1" / "docs" / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    (tmp_path / "p1" / "notes.txt").write_text("clinical notes")
    (tmp_path / "p1" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored
    report = ingest(tmp_path, SALT)
    assert len(report.cohort.patients) == 1 and not report.cohort.usable_patients
    assert report.rejected == {
        "p1/docs/report.pdf": "not a DICOM file", "p1/notes.txt": "not a DICOM file"
    }


def test_two_patients_in_one_folder_are_split(tmp_path: Path) -> None:
    write_patient(tmp_path / "mixed" / "a", patient_id="PID-A", seed=1)
    write_patient(tmp_path / "mixed" / "b", patient_id="PID-B", seed=2)
    report = ingest(tmp_path, SALT)
    assert len(report.cohort.usable_patients) == 2
    keys = {p.key for p in report.cohort.patients}
    assert keys == {pseudonymise(f"dir:mixed|id:{pid}", SALT) for pid in ("PID-A", "PID-B")}
    assert report.notes == ["mixed/ holds 2 different PatientIDs: split into 2 patients"]


def test_flat_folder_grouped_by_patient_id(tmp_path: Path) -> None:
    # layout B: every slice file loose in one folder; one NIfTI volume is a patient of its own
    for pid, seed in (("PID-A", 1), ("PID-B", 2)):
        for f in write_patient(tmp_path / "tmp", patient_id=pid, seed=seed):
            f.rename(tmp_path / f"{pid}-{f.name}")
        (tmp_path / "tmp").rmdir()
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(ramp_volume(modality="MR").data.astype(np.int16) + 1000)
    sitk.WriteImage(img, str(tmp_path / "mr.nrrd"))
    report = ingest(tmp_path, SALT)
    assert len(report.cohort.usable_patients) == 3
    assert {p.key for p in report.cohort.patients} == {
        pseudonymise("id:PID-A", SALT), pseudonymise("id:PID-B", SALT),
        pseudonymise("file:mr.nrrd", SALT),
    }
    assert len(report.used) == 13 and not report.rejected


def test_one_bad_patient_never_stops_the_others(tmp_path: Path, dicom_corpus: Path) -> None:
    write_patient(tmp_path / "good", patient_id="G")
    (tmp_path / "bad").mkdir()
    for name in ("rtstruct.dcm", "MR_truncated.dcm", "no_meta.dcm", "SC_rgb.dcm"):
        (tmp_path / "bad" / name).write_bytes((dicom_corpus / name).read_bytes())
    (tmp_path / "bad" / "broken.dcm").write_bytes(b"DICM" + bytes(10))
    seen: list[tuple[int, int]] = []
    report = ingest(tmp_path, SALT, progress=lambda done, total: seen.append((done, total)))
    # the bad folder mixes PatientIDs: it is split, and none of its parts is usable
    assert [p.usable for p in report.cohort.patients][-1] is True
    assert not any(p.usable for p in report.cohort.patients[:-1])
    assert len(report.rejected) == 5 and len(report.used) == 6
    assert [d for d, _ in seen] == list(range(1, len(report.cohort.patients) + 1))
    assert seen[-1] == (len(report.cohort.patients), len(report.cohort.patients))


def test_largest_series_per_modality_or_all(tmp_path: Path) -> None:
    write_patient(tmp_path / "p1" / "thin", volume=ramp_volume(n=8), seed=1)
    write_patient(tmp_path / "p1" / "thick", volume=ramp_volume(n=4), seed=2)
    write_patient(tmp_path / "p1" / "mr", volume=ramp_volume(n=3, modality="MR"), seed=3)
    report = ingest(tmp_path, SALT)
    vols = report.cohort.patients[0].volumes
    assert sorted((v.modality, v.n_slices) for v in vols) == [("CT", 8), ("MR", 3)]
    assert "not selected" in report.rejected["p1/thick/IM0001.dcm"]
    everything = ingest(tmp_path, SALT, IngestOptions(series="all"))
    assert len(everything.cohort.patients[0].volumes) == 3
    ct_only = ingest(tmp_path, SALT, IngestOptions(modality="CT"))
    assert [v.modality for v in ct_only.cohort.patients[0].volumes] == ["CT"]
    assert "not requested" in ct_only.rejected["p1/mr/IM0001.dcm"]


def test_a_failing_largest_series_falls_back_to_the_next(tmp_path: Path) -> None:
    big = write_patient(tmp_path / "p1" / "big", volume=ramp_volume(n=8), seed=1)
    write_patient(tmp_path / "p1" / "small", volume=ramp_volume(n=4), seed=2)
    data = big[4].read_bytes()
    big[4].write_bytes(data[:-100])
    report = ingest(tmp_path, SALT)
    assert report.cohort.patients[0].volumes[0].n_slices == 4
    assert "unreadable pixel data" in report.rejected["p1/big/IM0001.dcm"]


def test_summary_rows(tmp_path: Path) -> None:
    write_patient(tmp_path / "p1")
    (tmp_path / "p1" / "x.txt").write_text("x")
    rows = summarise_cohort(load_cohort(tmp_path, SALT))
    assert [r["kind"] for r in rows] == ["volume", "skipped"]
    vol = rows[0]
    assert vol["slices"] == 6 and vol["shape"] == [6, 16, 16] and vol["modality"] == "CT"
    assert vol["spacing"] == [2.5, 0.7, 0.6] and vol["min"] == -1000.0
    assert rows[1] == {"kind": "skipped", "patient": vol["patient"], "source": "p1/x.txt",
                       "reason": "not a DICOM file"}


def test_no_header_value_leaves_io(tmp_path: Path, dicom_corpus: Path) -> None:
    phi = {"name": "SECRET^PATIENT", "pid": "MRN-9876543"}
    files = write_patient(tmp_path / "p1", patient_id=phi["pid"], name=phi["name"])
    files[2].unlink()  # also produce a rejection for this patient
    write_patient(tmp_path / "p2", patient_id=phi["pid"] + "-2", name=phi["name"], seed=5)
    for name in ("CT_small.dcm", "rtstruct.dcm", "MR_truncated.dcm"):
        (tmp_path / "p2" / name).write_bytes((dicom_corpus / name).read_bytes())
    import pydicom

    secrets = set(phi.values())
    for f in [files[0], tmp_path / "p2" / "CT_small.dcm", tmp_path / "p2" / "rtstruct.dcm"]:
        ds = pydicom.dcmread(f, force=True)
        for kw in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID", "StudyDate", "InstitutionName", "PatientBirthDate"):
            if str(ds.get(kw, "")).strip():
                secrets.add(str(ds.get(kw)))
    report = ingest(tmp_path, SALT, IngestOptions(series="all"))
    texts = [str(report.rejected), str(report.notes), str(summarise_cohort(report.cohort))]
    for patient in report.cohort.patients:
        texts.append(patient.key)
        for vol in patient.volumes:
            fields = [f.name for f in dataclasses.fields(vol) if f.name != "data"]
            texts += [str(getattr(vol, name)) for name in fields]
    blob = "\n".join(texts)
    assert len(secrets) >= 10
    for secret in secrets:
        assert secret not in blob
