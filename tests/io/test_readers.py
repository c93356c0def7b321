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
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_volumes_load_with_sane_values(real_samples: Path, name: str) -> None:
    modality, dz, (lo, hi) = REAL[name]
    vol = read_volume_file(real_samples / name, name, patient_key="p-1", series_key="s-1")
    assert vol.modality == modality  # guessed: no hint given
    assert vol.spacing[0] == pytest.approx(dz, rel=1e-3)
    assert lo <= vol.data.min() < vol.data.max() <= hi
    if modality == "CT":
        assert vol.data.min() < -900  # air in HU
    # canonical axial == SimpleITK's LPS reorientation (identity direction)
    ref = sitk.DICOMOrient(sitk.ReadImage(str(real_samples / name)), "LPS")
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


def test_4d_2d_and_label_files_rejected(tmp_path: Path, real_samples: Path) -> None:
    _nifti(tmp_path / "fmri.nii", np.zeros((8, 8, 4, 3), np.float32) + np.arange(3))
    _nifti(tmp_path / "slice.nii", np.arange(64, dtype=np.float32).reshape(8, 8, 1))
    label = real_samples / "labels" / "lung1_label.nrrd"
    (tmp_path / "mask.nrrd").write_bytes(label.read_bytes())
    report = ingest(tmp_path, SALT)
    assert "4D image (3 volumes)" in report.rejected["fmri.nii"]
    assert "single 2D image, not a volume" in report.rejected["slice.nii"]
    assert "label map" in report.rejected["mask.nrrd"]


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
