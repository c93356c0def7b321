"""The sample DICOM tree made from the real volumes round-trips through ingestion."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medidd.io.discover import folder_patient_key, ingest
from medidd.io.readers import read_volume_file
from medidd.io.sample_data import (
    COHORT_V1,
    make_sample_patients,
    sample_region,
    sample_regions,
    write_dicom_series,
)

from .conftest import SALT, ramp_volume

FOLDERS = [
    "CT-01-abdomen_3mm", "CT-02-chest_cta_1p5mm", "CT-03-lung1", "CT-04-lung2",
    "CT-05-ctchest_slicer", "CT-06-head_ct1", "CT-07-head_ct2", "CT-08-pycerr_pat1",
    "CT-09-pycerr_pat2", "CT-10-pycerr_pat3", "CT-11-pycerr_pat4", "CT-12-spine_ct",
    "MR-01-abdomen_mr", "MR-02-brain1", "MR-03-brain2", "MR-04-head_lowres", "MR-05-head_t1_d2s",
    "MR-06-head_t1_itk", "MR-07-spine_t2",
]
HEAD = {"CT-06-head_ct1", "CT-07-head_ct2", "MR-02-brain1", "MR-03-brain2", "MR-04-head_lowres",
        "MR-05-head_t1_d2s", "MR-06-head_t1_itk"}


def test_tree_layout_and_fake_identities(sample_tree: Path, real_samples: Path) -> None:
    assert sorted(p.name for p in sample_tree.iterdir()) == FOLDERS
    ds = pydicom.dcmread(sample_tree / "CT-03-lung1" / "IM0001.dcm")
    assert str(ds.PatientName) == "MEDIDD^SAMPLE03" and ds.PatientID == "MEDIDD-SAMPLE-03"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.pixel_array.dtype == np.int16
    assert float(ds.RescaleIntercept) == -1024.0 and ds.RescaleType == "HU"
    ds = pydicom.dcmread(sample_tree / "MR-07-spine_t2" / "IM0001.dcm")
    assert ds.PatientID == "MEDIDD-SAMPLE-19" and ds.SOPClassUID == pydicom.uid.MRImageStorage
    # real DICOM samples are copied byte for byte, RTSTRUCT included
    source = real_samples / "ct" / "pycerr_pat2"
    copied = sample_tree / "CT-09-pycerr_pat2"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in source.iterdir())
    for name in ("DCM_IMG_00000.dcm", "DCM_RS_00041.dcm"):
        assert (copied / name).read_bytes() == (source / name).read_bytes()
    # the masks of a sample lie beside its series
    assert sorted(p.name for p in (sample_tree / "CT-12-spine_ct").glob("*.nii.gz")) == [
        "sub-ct_seg-subreg_label-22_msk.nii.gz", "sub-ct_seg-vert_label-22_msk.nii.gz"]


def _source(real_samples: Path, folder: str) -> Path:
    """The fetched file a patient folder was made from (or the DICOM folder it copies)."""
    mod, _, stem = folder.split("-", 2)
    path = real_samples / mod.lower() / stem
    if path.is_dir():
        images = [p for p in path.iterdir() if "_msk" not in p.name]
        return images[0] if len(images) == 1 else path
    return next(path.parent.glob(f"{stem}.*"))


def test_sample_tree_round_trips(sample_tree: Path, real_samples: Path, tmp_path: Path) -> None:
    report = ingest(sample_tree, SALT)
    assert len(report.cohort.usable_patients) == 19
    assert all(("RT Structure Set" in r or "_msk" in f) for f, r in report.rejected.items())
    assert len(report.rejected) == 4 + 4  # 4 RTSTRUCTs, 2 x 2 masks
    for i in range(1, 5):  # the pycerr series read where they lie
        (tmp_path / f"pycerr_pat{i}").symlink_to(real_samples / "ct" / f"pycerr_pat{i}")
    originals = {p.key: p.volumes[0] for p in ingest(tmp_path, SALT).cohort.patients}
    for patient, folder in zip(report.cohort.patients, FOLDERS, strict=True):
        assert patient.key == folder_patient_key(folder, SALT)
        (vol,) = patient.volumes
        assert vol.modality == folder[:2]
        source = _source(real_samples, folder)
        if source.is_dir():  # a copied DICOM series reads as the original does
            ref = originals[folder_patient_key(source.name, SALT)]
        else:
            ref = read_volume_file(source, source.name, patient_key="p", series_key="s")
        # integer data: exact; float data (head_ct2) within one int16 step of its range
        step = 0.0 if np.all(ref.data == np.round(ref.data)) else np.ptp(ref.data) / 64000
        np.testing.assert_allclose(vol.data, ref.data, rtol=0, atol=step)
        assert vol.spacing == pytest.approx(ref.spacing, abs=1e-4)


def test_regions_of_the_cohort(sample_tree: Path) -> None:
    regions = {p.name: sample_region(p) for p in sample_tree.iterdir()}
    assert {f for f, r in regions.items() if r == "head"} == HEAD
    assert [f[:2] for f, r in regions.items() if r == "body"].count("CT") == 10
    by_key = sample_regions(sample_tree, SALT)
    assert by_key == {folder_patient_key(f, SALT): r for f, r in regions.items()}
    assert sample_region("head_ct1.nii.gz") == "head" and sample_region("pycerr_pat3") == "body"
    with pytest.raises(ValueError, match="did you mean 'brain1'"):
        sample_region("MR-02-brain_1")


def test_modality_and_region_filters(real_samples: Path, tmp_path: Path) -> None:
    head_ct = make_sample_patients(real_samples, tmp_path / "a", modality="CT", region="head")
    assert [p.name for p in head_ct] == ["CT-06-head_ct1", "CT-07-head_ct2"]
    body_mr = make_sample_patients(real_samples, tmp_path / "b", modality="mr", region="body")
    assert [p.name for p in body_mr] == ["MR-01-abdomen_mr", "MR-07-spine_t2"]
    # the same sample gets the same files whatever the filter
    ref = tmp_path / "c"
    make_sample_patients(real_samples, ref, modality="CT", region="all")
    for f in ("IM0001.dcm", "IM0026.dcm"):
        assert (head_ct[0] / f).read_bytes() == (ref / "CT-06-head_ct1" / f).read_bytes()
    assert len(list(ref.iterdir())) == 12
    first = make_sample_patients(real_samples, tmp_path / "d", modality="CT", names=COHORT_V1)
    assert [p.name for p in first] == ["CT-01-abdomen_3mm", "CT-02-chest_cta_1p5mm",
                                       "CT-03-lung1", "CT-04-lung2"]
    with pytest.raises(ValueError, match="did you mean 'lung1'"):
        make_sample_patients(real_samples, tmp_path / "e", names=["lung_1"])
    with pytest.raises(ValueError, match="no sample is CT, region all"):
        make_sample_patients(real_samples, tmp_path / "e", modality="CT", names=["brain1"])


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
    with pytest.raises(ValueError, match="did you mean 'body'"):
        make_sample_patients(real_samples, tmp_path, region="bodies")
    with pytest.raises(FileNotFoundError, match="fetch_real_samples"):
        make_sample_patients(tmp_path / "none", tmp_path / "out", modality="CT")
    out = tmp_path / "tree"
    (out / "MR-07-spine_t2").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="MR-07-spine_t2 already exists"):
        make_sample_patients(real_samples, out, modality="MR", region="body")
    assert sorted(p.name for p in out.iterdir()) == ["MR-07-spine_t2"]  # nothing written
    assert make_sample_patients(real_samples, out, modality="MR", region="body", overwrite=True)


def test_a_sample_folder_of_masks_only_is_refused(tmp_path: Path, real_samples: Path) -> None:
    spine = tmp_path / "samples" / "ct" / "spine_ct"
    spine.mkdir(parents=True)
    for mask in (real_samples / "ct" / "spine_ct").glob("*_msk.nii.gz"):
        shutil.copy(mask, spine / mask.name)
    with pytest.raises(ValueError, match="holds 0 images besides 2 mask"):
        make_sample_patients(tmp_path / "samples", tmp_path / "out", modality="CT")
    assert not (tmp_path / "out" / "CT-12-spine_ct").exists()
