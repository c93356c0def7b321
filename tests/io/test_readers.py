"""NIfTI/NRRD volumes: real samples, orientation against SimpleITK, NaN/inf, modality guess."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medidd.io.discover import ingest
from medidd.io.options import IngestOptions
from medidd.io.readers import VolumeFileError, guess_modality, read_volume_file

from .conftest import SALT

# file -> (modality, z spacing mm, HU/intensity bounds that the real data must respect)
REAL = {
    "ct/lung1.nrrd": ("CT", 5.0, (-1025, 3100)),
    "ct/lung2.nrrd": ("CT", 5.0, (-1025, 3100)),
    "ct/abdomen_3mm.nii.gz": ("CT", 3.0, (-1300, 3500)),
    "ct/chest_cta_1p5mm.nii.gz": ("CT", 1.5, (-1300, 3500)),
    "mr/brain1.nrrd": ("MR", 6.5, (0, 5000)),
    "mr/brain2.nrrd": ("MR", 6.5, (0, 5000)),
    "mr/abdomen_mr.nii.gz": ("MR", 3.0, (-100, 5000)),
    # cohort v2
    "ct/ctchest_slicer.nrrd": ("CT", 10.0, (-3100, 3500)),  # -3024 outside the field of view
    "ct/head_ct1.nii.gz": ("CT", 4.0, (-1300, 3500)),
    "ct/head_ct2.nii.gz": ("CT", 2.5, (-1300, 3500)),
    "ct/spine_ct/sub-ct_label-22_ct.nii.gz": ("CT", 1.5, (-1300, 3500)),  # a crop: fat, no air
    "mr/head_t1_d2s.nii.gz": ("MR", 4.0, (0, 5000)),
    "mr/head_t1_itk.nii.gz": ("MR", 2.0, (0, 255)),  # 8-bit
    "mr/head_lowres.nii.gz": ("MR", 5.0, (0, 5000)),
    "mr/spine_t2/sub-mri_label-6_T2w.nii.gz": ("MR", 1.5, (0, 5000)),
}
OBLIQUE = {"mr/head_lowres.nii.gz"}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_volumes_load_with_sane_values(real_samples: Path, name: str) -> None:
    modality, dz, (lo, hi) = REAL[name]
    vol = read_volume_file(real_samples / name, name, patient_key="p-1", series_key="s-1")
    assert vol.modality == modality  # guessed: no hint given
    assert vol.spacing[0] == pytest.approx(dz, rel=1e-3)
    assert lo <= vol.data.min() < vol.data.max() <= hi
    if modality == "CT":
        assert vol.data.min() < -900  # air (or padding) in HU
    ref = sitk.DICOMOrient(sitk.ReadImage(str(real_samples / name)), "LPS")
    if name in OBLIQUE:  # tilted 35 degrees: axes go to the closest anatomical axis
        assert sorted(vol.shape) == sorted(ref.GetSize())
        return
    # canonical axial == SimpleITK's LPS reorientation (identity direction)
    assert np.allclose(ref.GetDirection(), np.eye(3).ravel())
    np.testing.assert_array_equal(vol.data, sitk.GetArrayFromImage(ref).astype(np.float32))
    sx, sy, sz = ref.GetSpacing()
    assert vol.spacing == pytest.approx((sz, sy, sx))


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))
    return path


def test_nan_and_inf_rejected_or_replaced(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(300, 50, (10, 12, 8)).astype(np.float32)
    data[2, 3, 4], data[5, 1, 1] = np.nan, np.inf
    _nifti(tmp_path / "bad.nii.gz", data)
    report = ingest(tmp_path, SALT)
    reason = report.rejected["bad.nii.gz"]
    assert "2 non-finite voxel(s) (NaN/inf)" in reason and "nonfinite='replace'" in reason
    fixed = ingest(tmp_path, SALT, IngestOptions(nonfinite="replace"))
    vol = fixed.cohort.patients[0].volumes[0]
    assert np.isfinite(vol.data).all() and vol.data.min() == np.nanmin(data[np.isfinite(data)])


# stored array shape -> substring of the reason, or "used" (a file made in the test)
SHAPES = {
    (8, 8, 4, 3): "4D image (3 volumes of 8x8x4, a time series such as fMRI or DWI): save the",
    (8, 8, 4, 1): "used",  # a 4D header with one volume is a 3D volume
    (8, 8, 4, 1, 1): "used",
    (8, 8, 4, 1, 3): "5D image (8x8x4x1x3: vector, tensor or multi-component data)",
    (8, 8): "single 2D image, not a volume (pass allow_2d to use it)",
    (8, 8, 1): "single 2D image, not a volume (pass allow_2d to use it)",
}


@pytest.mark.parametrize("shape", list(SHAPES), ids=lambda s: "x".join(map(str, s)))
def test_dimensions_used_or_rejected_with_a_reason(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = np.random.default_rng(0).normal(300, 50, shape).astype(np.float32)
    _nifti(tmp_path / "epi.nii.gz", data)
    report = ingest(tmp_path, SALT)
    if SHAPES[shape] == "used":
        vol = report.cohort.patients[0].volumes[0]
        assert sorted(vol.shape) == sorted(shape[:3]) and vol.modality == "MR"
    else:
        assert SHAPES[shape] in report.rejected["epi.nii.gz"]
        assert not report.cohort.usable_patients


def test_4d_nrrd_and_a_2d_file_with_allow_2d(tmp_path: Path) -> None:
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.full((4, 6, 6), t, np.float32) + 0.5)
                              for t in range(3)])
    sitk.WriteImage(series, str(tmp_path / "dyn.nrrd"))
    report = ingest(tmp_path, SALT)
    assert "4D image (3 volumes of 6x6x4" in report.rejected["dyn.nrrd"]
    (tmp_path / "dyn.nrrd").unlink()
    _nifti(tmp_path / "one.nii", np.arange(64, dtype=np.float32).reshape(8, 8) + 0.5)
    vol = ingest(tmp_path, SALT, IngestOptions(allow_2d=True)).cohort.patients[0].volumes[0]
    assert vol.shape == (1, 8, 8)


def test_label_files_rejected(tmp_path: Path, real_samples: Path) -> None:
    label = real_samples / "labels" / "lung1_label.nrrd"
    (tmp_path / "mask.nrrd").write_bytes(label.read_bytes())
    (tmp_path / "tumour.nrrd").write_bytes(label.read_bytes())  # a neutral name: content decides
    report = ingest(tmp_path, SALT)
    assert report.rejected["mask.nrrd"].startswith("label map or mask by its name ('mask')")
    assert report.rejected["tumour.nrrd"].startswith(
        "label map or mask (2 distinct integer values), not an image"
    )
    assert not report.cohort.usable_patients


def test_damaged_volume_file(tmp_path: Path, real_samples: Path) -> None:
    data = (real_samples / "mr" / "brain1.nrrd").read_bytes()
    (tmp_path / "brain.nrrd").write_bytes(data[: len(data) // 2])
    with pytest.raises(VolumeFileError, match="unreadable volume file"):
        read_volume_file(tmp_path / "brain.nrrd", "brain.nrrd", patient_key="p", series_key="s")


def test_modality_hint_overrides_the_guess(real_samples: Path) -> None:
    path = real_samples / "mr" / "brain1.nrrd"
    vol = read_volume_file(path, "b", patient_key="p", series_key="s",
                           options=IngestOptions(modality="CT"))
    assert vol.modality == "CT"


def test_guess_modality() -> None:
    assert guess_modality(np.array([-1024, -1000, -950, 50, 400], np.float32)) == "CT"
    assert guess_modality(np.array([0, 10, 200, 900], np.float32)) == "MR"
    # negative but no air band (z-scored MR, or CT without the -1024 offset): MR
    assert guess_modality(np.array([-3000, -2000, 5, 10], np.float32)) == "MR"
    # a CT crop inside the body (spine): no air, but fat in HU
    assert guess_modality(np.array([-120, -80, 20, 40, 60, 700], np.float32)) == "CT"
    # MR with a little negative noise around 0 is still MR
    assert guess_modality(np.array([-40, -2, 0, 100, 300, 900], np.float32)) == "MR"
