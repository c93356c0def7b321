"""DICOM series assembly: sorting, spacing, rescale, and every way a series can be unusable."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from medidd.io.discover import IngestReport, ingest
from medidd.io.options import IngestOptions

from .conftest import SALT, ramp_volume, write_patient


def _one(report: IngestReport) -> np.ndarray:
    volumes = [v for p in report.cohort.patients for v in p.volumes]
    assert len(volumes) == 1, report.rejected
    return volumes[0].data


def _edit(path: Path, **values: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_round_trip_exact_voxels_and_spacing(tmp_path: Path) -> None:
    vol = ramp_volume()
    write_patient(tmp_path / "p1", volume=vol)
    report = ingest(tmp_path, SALT)
    out = next(v for p in report.cohort.patients for v in p.volumes)
    np.testing.assert_array_equal(out.data, vol.data)
    assert out.spacing == pytest.approx(vol.spacing)
    assert out.modality == "CT" and len(report.used) == vol.n_slices


@pytest.mark.parametrize("codec", ["j2k", "rle"])
def test_compressed_series_round_trip(tmp_path: Path, codec: str) -> None:
    vol = ramp_volume(n=3, size=32, modality="MR")
    files = write_patient(tmp_path / "p1", volume=vol, compress=True, codec=codec)
    syntax = pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID
    assert syntax.is_compressed
    np.testing.assert_array_equal(_one(ingest(tmp_path, SALT)), vol.data)


def test_slices_sorted_by_position_not_by_file_name(tmp_path: Path) -> None:
    vol = ramp_volume()
    files = write_patient(tmp_path / "p1", volume=vol)
    names = [f.name for f in files]
    random.Random(0).shuffle(names)
    for f in files:
        f.rename(f.with_name("x" + f.name))
    for f, new in zip(sorted((tmp_path / "p1").iterdir()), names, strict=True):
        f.rename(f.with_name(new))  # file names no longer follow z
    np.testing.assert_array_equal(_one(ingest(tmp_path, SALT)), vol.data)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path: Path) -> None:
    files = write_patient(tmp_path / "p1")
    for f in files:
        _edit(f, SliceThickness=1.0)  # thin reconstruction, 2.5 mm apart
    report = ingest(tmp_path, SALT)
    assert report.cohort.patients[0].volumes[0].spacing[0] == pytest.approx(2.5)


def test_missing_slice_is_rejected(tmp_path: Path) -> None:
    files = write_patient(tmp_path / "p1")
    files[3].unlink()
    report = ingest(tmp_path, SALT)
    assert not report.cohort.usable_patients
    reason = report.rejected["p1/IM0001.dcm"]
    assert "missing slices: 1 slice(s) absent in 1 gap(s)" in reason
    assert "re-export" in reason


def test_irregular_spacing_is_rejected_with_the_fix(tmp_path: Path) -> None:
    files = write_patient(tmp_path / "p1")
    ds = pydicom.dcmread(files[2])
    _edit(files[2], ImagePositionPatient=[*ds.ImagePositionPatient[:2], 6.1])  # 5.0 expected
    report = ingest(tmp_path, SALT)
    reason = report.rejected["p1/IM0003.dcm"]
    assert "irregular slice spacing" in reason and "spacing_tolerance" in reason
    loose = ingest(tmp_path, SALT, IngestOptions(spacing_tolerance=0.5))
    assert loose.cohort.usable_patients  # the suggested fix works


def test_inconsistent_geometry_rejects_the_odd_file(tmp_path: Path) -> None:
    files = write_patient(tmp_path / "p1", volume=ramp_volume(n=6))
    _edit(files[5], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    report = ingest(tmp_path, SALT)
    assert "inconsistent geometry" in report.rejected["p1/IM0006.dcm"]
    assert report.cohort.patients[0].volumes[0].n_slices == 5


def test_localiser_and_colour_and_other_modality(tmp_path: Path) -> None:
    for name, edits in {
        "loc": {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
        "rgb": {"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3},
        "pet": {"Modality": "PT"},
    }.items():
        for f in write_patient(tmp_path / name, patient_id=name):
            _edit(f, **edits)
    report = ingest(tmp_path, SALT)
    assert "localiser" in report.rejected["loc/IM0001.dcm"]
    assert "colour image (RGB)" in report.rejected["rgb/IM0001.dcm"]
    assert "modality PT is not supported" in report.rejected["pet/IM0001.dcm"]


def test_single_slice_and_too_few_slices(tmp_path: Path) -> None:
    write_patient(tmp_path / "one", volume=ramp_volume(n=1))
    write_patient(tmp_path / "two", volume=ramp_volume(n=2), patient_id="two")
    report = ingest(tmp_path, SALT)
    assert "single 2D image, not a volume" in report.rejected["one/IM0001.dcm"]
    assert "too few slices (2 < min_slices=3)" in report.rejected["two/IM0001.dcm"]
    assert len(ingest(tmp_path, SALT, IngestOptions(allow_2d=True, min_slices=2)).used) == 3


def test_monochrome1_mr_is_inverted_but_ct_keeps_hu(tmp_path: Path) -> None:
    mr = ramp_volume(modality="MR")
    for f in write_patient(tmp_path / "mr", volume=mr, patient_id="mr"):
        _edit(f, PhotometricInterpretation="MONOCHROME1")
    ct = ramp_volume()
    for f in write_patient(tmp_path / "ct", volume=ct, patient_id="ct"):
        _edit(f, PhotometricInterpretation="MONOCHROME1")
    patients = ingest(tmp_path, SALT).cohort.patients
    vols = {p.volumes[0].modality: p.volumes[0].data for p in patients}
    np.testing.assert_array_equal(vols["MR"], mr.data.max() + mr.data.min() - mr.data)
    np.testing.assert_array_equal(vols["CT"], ct.data)


def test_truncated_pixel_data_in_a_series(tmp_path: Path) -> None:
    files = write_patient(tmp_path / "p1")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 200])
    report = ingest(tmp_path, SALT)
    assert not report.cohort.usable_patients
    reason = report.rejected["p1/IM0001.dcm"]
    assert "unreadable pixel data in p1/IM0003.dcm" in reason


def test_truncated_real_file(dicom_corpus: Path, tmp_path: Path) -> None:
    data = (dicom_corpus / "CT_small.dcm").read_bytes()
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "ct.dcm").write_bytes(data[: len(data) * 2 // 3])
    report = ingest(tmp_path, SALT, IngestOptions(allow_2d=True))
    assert "unreadable pixel data in p1/ct.dcm" in report.rejected["p1/ct.dcm"]


@pytest.mark.parametrize("name", ["693_J2KR.dcm", "MR_small_RLE.dcm", "JPEG-LL.dcm"])
def test_corrupt_compressed_pixels(dicom_corpus: Path, tmp_path: Path, name: str) -> None:
    ds = pydicom.dcmread(dicom_corpus / name)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:20] + bytes(len(frame) - 40) + frame[-20:]])
    if name == "JPEG-LL.dcm":  # a real JPEG lossless stream, relabelled as a CT slice
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.Modality = "CT"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    (tmp_path / "p1").mkdir()
    ds.save_as(tmp_path / "p1" / name)
    report = ingest(tmp_path, SALT, IngestOptions(allow_2d=True))
    assert "unreadable pixel data" in report.rejected[f"p1/{name}"]
