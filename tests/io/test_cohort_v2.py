"""The grown real cohort (issue 11), one folder per sample as fetched: every one of the 19 items
gives one image of the right modality, and no mask ever becomes a patient's image."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medidd.io.discover import IngestReport, folder_patient_key, ingest
from medidd.io.readers import read_volume_file

from .conftest import SALT

# sample (file stem or folder under ct/ or mr/) -> modality
COHORT = {
    "abdomen_3mm": "CT", "chest_cta_1p5mm": "CT", "lung1": "CT", "lung2": "CT",
    "ctchest_slicer": "CT", "head_ct1": "CT", "head_ct2": "CT", "pycerr_pat1": "CT",
    "pycerr_pat2": "CT", "pycerr_pat3": "CT", "pycerr_pat4": "CT", "spine_ct": "CT",
    "abdomen_mr": "MR", "brain1": "MR", "brain2": "MR", "head_lowres": "MR", "head_t1_d2s": "MR",
    "head_t1_itk": "MR", "spine_t2": "MR",
}
SPINE = {
    "spine_ct": ("ct", "sub-ct_label-22_ct.nii.gz", "CT",
                 ("sub-ct_seg-subreg_label-22_msk.nii.gz", "sub-ct_seg-vert_label-22_msk.nii.gz")),
    "spine_t2": ("mr", "sub-mri_label-6_T2w.nii.gz", "MR",
                 ("sub-mri_seg-subreg_label-6_msk.nii.gz", "sub-mri_seg-vert_label-6_msk.nii.gz")),
}


def _link_tree(real_samples: Path, out: Path, names: list[str]) -> Path:
    """One folder per sample, its files linked (no copy of the 50 MB of images)."""
    for name in names:
        folder = real_samples / COHORT[name].lower()
        source = folder / name
        files = (sorted(source.iterdir()) if source.is_dir()
                 else [p for p in folder.iterdir() if p.name.split(".")[0] == name])
        (out / name).mkdir(parents=True)
        for f in files:
            os.symlink(f, out / name / f.name)
    return out


@pytest.fixture(scope="module")
def cohort_report(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> IngestReport:
    tree = _link_tree(real_samples, tmp_path_factory.mktemp("v2") / "patients", list(COHORT))
    return ingest(tree, SALT)


def test_every_item_is_one_usable_patient_of_the_right_modality(
    cohort_report: IngestReport,
) -> None:
    by_key = {p.key: p for p in cohort_report.cohort.patients}
    assert len(by_key) == 19 and not cohort_report.cohort.skipped
    for name, modality in COHORT.items():
        patient = by_key[folder_patient_key(name, SALT)]
        assert [v.modality for v in patient.volumes] == [modality], name
        assert patient.volumes[0].n_slices >= 20, name
    modalities = [p.volumes[0].modality for p in cohort_report.cohort.patients]
    assert (modalities.count("CT"), modalities.count("MR")) == (12, 7)


def test_only_rtstructs_and_masks_are_skipped(cohort_report: IngestReport) -> None:
    reasons = cohort_report.rejected
    assert len(reasons) == 8
    for i, n in zip((1, 2, 3, 4), (60, 41, 46, 56), strict=True):
        assert reasons[f"pycerr_pat{i}/DCM_RS_{n:05d}.dcm"] == (
            "non-image object (RT Structure Set Storage): holds no CT/MR slices"
        )
    for name, (_, _, _, masks) in SPINE.items():
        for mask in masks:
            assert reasons[f"{name}/{mask}"].startswith("label map or mask by its name ('msk')")


@pytest.mark.parametrize("name", list(SPINE))
def test_spine_folder_yields_its_image_not_a_mask(
    real_samples: Path, tmp_path: Path, name: str
) -> None:
    sub, image, modality, masks = SPINE[name]
    # the masks renamed to neutral names: their content alone must keep them out
    (tmp_path / "p" / name).mkdir(parents=True)
    shutil.copy(real_samples / sub / name / image, tmp_path / "p" / name / image)
    for k, mask in enumerate(masks):
        shutil.copy(real_samples / sub / name / mask, tmp_path / "p" / name / f"extra{k}.nii.gz")
    for tree in (_link_tree(real_samples, tmp_path / "linked", [name]), tmp_path / "p"):
        report = ingest(tree, SALT)
        patient = report.cohort.patients[0]
        ref = read_volume_file(real_samples / sub / name / image, image,
                               patient_key="p", series_key="s")
        assert [v.modality for v in patient.volumes] == [modality]
        np.testing.assert_array_equal(patient.volumes[0].data, ref.data)
        assert len(patient.skipped) == 2
        for item in patient.skipped:
            assert item.source.startswith(f"{name}/") and "label map or mask" in item.reason
            assert "not selected" not in item.reason  # never ranked against the image
    contents = sorted(s.reason for s in report.cohort.patients[0].skipped)
    assert all(r.startswith("label map or mask (") for r in contents)


def test_a_folder_of_masks_only_has_no_usable_patient(real_samples: Path, tmp_path: Path) -> None:
    (tmp_path / "p1").mkdir()
    for mask in SPINE["spine_ct"][3]:
        shutil.copy(real_samples / "ct" / "spine_ct" / mask, tmp_path / "p1" / mask)
    shutil.copy(real_samples / "labels" / "lung1_label.nrrd", tmp_path / "p1" / "tumour.nrrd")
    report = ingest(tmp_path, SALT)
    assert not report.cohort.usable_patients and len(report.rejected) == 3
    assert all("label map or mask" in r for r in report.rejected.values())
