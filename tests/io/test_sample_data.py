"""The sample DICOM tree made from the real volumes round-trips through ingestion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medidd.io.discover import ingest
from medidd.io.readers import read_volume_file
from medidd.io.sample_data import make_sample_patients, write_dicom_series

from .conftest import SALT, ramp_volume


def test_tree_layout_and_fake_identities(sample_tree: Path) -> None:
    folders = sorted(p.name for p in sample_tree.iterdir())
    assert folders == ["CT-01-abdomen_3mm", "CT-02-chest_cta_1p5mm", "CT-03-lung1",
                       "CT-04-lung2", "MR-01-abdomen_mr", "MR-02-brain1", "MR-03-brain2"]
    ds = pydicom.dcmread(sample_tree / "CT-03-lung1" / "IM0001.dcm")
    assert str(ds.PatientName) == "MEDIDD^SAMPLE03" and ds.PatientID == "MEDIDD-SAMPLE-03"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.pixel_array.dtype == np.int16
    assert float(ds.RescaleIntercept) == -1024.0 and ds.RescaleType == "HU"


def test_sample_tree_round_trips(sample_tree: Path, real_samples: Path) -> None:
    report = ingest(sample_tree, SALT)
    assert not report.rejected and len(report.cohort.usable_patients) == 7
    by_folder = {}
    for patient, folder in zip(report.cohort.patients, sorted(sample_tree.iterdir()), strict=True):
        by_folder[folder.name] = patient.volumes[0]
    for folder, vol in by_folder.items():
        mod, _, stem = folder.split("-", 2)
        source = next((real_samples / mod.lower()).glob(f"{stem}.*"))
        ref = read_volume_file(source, source.name, patient_key="p", series_key="s")
        assert vol.modality == mod
        np.testing.assert_array_equal(vol.data, ref.data)  # integer data: exact
        assert vol.spacing == pytest.approx(ref.spacing, abs=1e-4)


def test_float_volume_round_trips_within_int16_rounding(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vol = ramp_volume(modality="MR")
    vol = type(vol)(vol.data + rng.uniform(0, 1, vol.data.shape).astype(np.float32) * 0.37,
                    vol.spacing, "MR", "p", "s")
    write_dicom_series(vol, tmp_path / "p1", patient_name="A^B", patient_id="X")
    slope = float(pydicom.dcmread(tmp_path / "p1" / "IM0001.dcm").RescaleSlope)
    out = ingest(tmp_path, SALT).cohort.patients[0].volumes[0]
    assert slope < 0.1
    assert np.abs(out.data - vol.data).max() <= slope / 2 + 1e-3


def test_writing_is_deterministic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    vol = ramp_volume(n=2)
    a = write_dicom_series(vol, tmp_path / "a", patient_name="A^B", patient_id="X", seed=3)
    b = write_dicom_series(vol, tmp_path / "b", patient_name="A^B", patient_id="X", seed=3)
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    c = write_dicom_series(vol, tmp_path / "c", patient_name="A^B", patient_id="X", seed=4)
    assert pydicom.dcmread(c[0]).SeriesInstanceUID != pydicom.dcmread(a[0]).SeriesInstanceUID
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dicom_series(vol, tmp_path / "a", patient_name="A^B", patient_id="X")
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_make_sample_patients_errors(tmp_path: Path, real_samples: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'MR'"):
        make_sample_patients(real_samples, tmp_path, modality="MRI")
    with pytest.raises(FileNotFoundError, match="fetch_real_samples"):
        make_sample_patients(tmp_path / "none", tmp_path / "out", modality="CT")
