"""Preprocessing on the real CT/MR samples and the cache of prepare_patients."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from medidd.io.sample_data import COHORT_V1, make_sample_patients
from medidd.preprocess.cohort import prepare_patients
from medidd.preprocess.pipeline import PreprocessConfig, preprocess_volume
from tests.helpers_real import real_volume

CASES = [
    ("ct/lung1.nrrd", "CT"),
    ("ct/abdomen_3mm.nii.gz", "CT"),
    ("mr/brain1.nrrd", "MR"),
    ("mr/abdomen_mr.nii.gz", "MR"),
]


@pytest.mark.parametrize(("rel", "modality"), CASES)
def test_real_volume_becomes_normalised_square_slices(
    real_samples: Path, rel: str, modality: str
) -> None:
    vol = real_volume(real_samples / rel, modality)
    s = preprocess_volume(vol, PreprocessConfig(size=64))
    assert type(s.images) is torch.Tensor  # no MONAI MetaTensor leaks out
    assert s.images.shape[1:] == (1, 64, 64)
    assert 0 < len(s) <= vol.n_slices
    assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
    assert bool(torch.all(s.z[1:] > s.z[:-1]))  # positions increase with the slice index
    # the body fills the frame after the foreground crop: little empty margin
    assert float((s.images > 0.25).float().mean()) > 0.2


def test_ct_window_maps_hu_linearly(real_samples: Path) -> None:
    vol = real_volume(real_samples / "ct/lung1.nrrd", "CT")
    s = preprocess_volume(
        vol, PreprocessConfig(size=64, ct_window=(-1000.0, 1000.0), foreground_crop=False)
    )
    # air outside the body (about -1000 HU) maps to about 0; the window is recorded
    assert float(s.images[:, :, 0, 0].max()) < 0.01
    assert s.window == (-1000.0, 1000.0)
    # a uniform block of 200 HU maps to exactly (200 + 1000) / 2000
    data = vol.data.copy()
    data[:] = 200.0
    flat = preprocess_volume(
        type(vol)(data, vol.spacing, "CT", "p-0000000000bb", "s-1"),
        PreprocessConfig(size=16, foreground_crop=False),
    )
    assert torch.allclose(flat.images, torch.full_like(flat.images, 0.6), atol=1e-5)


def test_bad_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="ct_window"):
        PreprocessConfig(ct_window=(100.0, -100.0))


def test_prepare_patients_uses_the_cache_on_rerun(real_samples: Path, tmp_path: Path) -> None:
    make_sample_patients(real_samples, tmp_path / "dicom", modality="MR", names=COHORT_V1)
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    first = prepare_patients(
        tmp_path / "dicom", salt=b"1" * 32, cfg=PreprocessConfig(size=32), cache_dir=cache
    )
    t_first = time.perf_counter() - t0
    second = prepare_patients(
        tmp_path / "dicom", salt=b"1" * 32, cfg=PreprocessConfig(size=32), cache_dir=cache
    )
    assert not first.cache_hit and second.cache_hit
    assert [s.patient_key for s in first.slices] == [s.patient_key for s in second.slices]
    for a, b in zip(first.slices, second.slices, strict=True):
        assert torch.equal(a.images, b.images)
    assert len(first.slices) == 3
    # a different setting is a different cache entry
    third = prepare_patients(
        tmp_path / "dicom", salt=b"1" * 32, cfg=PreprocessConfig(size=16), cache_dir=cache
    )
    assert not third.cache_hit and third.slices[0].size == 16
    assert t_first > 0


def test_prepare_patients_reports_unusable_patients(dicom_corpus: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "p1").mkdir(parents=True)
    (site / "p1" / "CT_small.dcm").write_bytes((dicom_corpus / "CT_small.dcm").read_bytes())
    (site / "p2").mkdir()
    prep = prepare_patients(site, salt=b"2" * 32)
    assert prep.slices == []
    reasons = " | ".join(s.reason for s in prep.skipped)
    assert "single 2D image" in reasons
    assert "empty folder" in reasons
