"""Every file of the real DICOM corpus is used or rejected with a one-line reason, never a crash.

Two sweeps: each file alone (with ``allow_2d`` so single slices exercise the pixel decoders),
and the whole corpus as one flat patients folder (layout B, grouped by PatientID).
"""

from __future__ import annotations

import collections
import re
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from medidd.io.discover import IngestReport, ingest
from medidd.io.options import IngestOptions
from medidd.io.volume import Volume

from ..conftest import _samples_dir
from .conftest import SALT

CORPUS = _samples_dir() / "dicom_corpus"  # parametrisation needs the list at collection time
CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*")) if CORPUS.is_dir() else []

# A table of real files and what must happen to each (substring of the reason, or "used").
EXPECTED = {
    "CT_small.dcm": "used",
    "693_UNCR.dcm": "used",
    "693_J2KR.dcm": "used",  # JPEG 2000 lossless
    "693_J2KI.dcm": "used",  # JPEG 2000 lossy
    "bad_sequence.dcm": "used",  # JPEG lossless process 14
    "J2K_pixelrep_mismatch.dcm": "used",
    "explicit_VR-UN.dcm": "used",
    "MR_small.dcm": "used",
    "MR_small_RLE.dcm": "used",
    "MR_small_jpeg_ls_lossless.dcm": "used",
    "MR_small_jp2klossless.dcm": "used",
    "MR_small_bigendian.dcm": "used",
    "MR_small_implicit.dcm": "used",
    "eCT_Supplemental.dcm": "used",  # enhanced multi-frame CT, per-frame positions
    "MR_truncated.dcm": "unreadable pixel data",
    "rtstruct.dcm": "non-image object (RT Structure Set Storage)",
    "rtdose.dcm": "non-image object (RT Dose Storage)",
    "rtplan.dcm": "non-image object (RT Plan Storage)",
    "liver.dcm": "non-image object (Segmentation Storage)",
    "test-SR.dcm": "non-image object (Comprehensive SR Storage)",
    "waveform_ecg.dcm": "non-image object (12-lead ECG Waveform Storage)",
    "SC_rgb.dcm": "secondary capture",
    "US1_UNCR.dcm": "Ultrasound Image Storage is not a CT or MR image",
    "RG1_UNCR.dcm": "Computed Radiography Image Storage is not a CT or MR image",
    "emri_small.dcm": "missing geometry",
    "MR2_UNCR.dcm": "single 2D image that is not axial",
    "DICOMDIR-empty.dcm": "DICOMDIR",
    "no_meta.dcm": "not a DICOM file",
}


def test_corpus_is_there(dicom_corpus: Path) -> None:
    assert dicom_corpus == CORPUS
    assert len(CORPUS_FILES) >= 140
    assert set(EXPECTED) <= set(CORPUS_FILES)


@cache
def _alone(name: str, tmp: str) -> tuple[IngestReport, Volume | None]:
    folder = Path(tmp) / name.replace(".", "_")
    folder.mkdir()
    shutil.copy(CORPUS / name, folder / name)
    report = ingest(folder, SALT, IngestOptions(allow_2d=True, min_slices=1))
    volumes = [v for p in report.cohort.patients for v in p.volumes]
    return report, (volumes[0] if volumes else None)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("corpus_one_by_one"))


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_each_file_is_used_or_rejected_with_a_reason(name: str, scratch: str) -> None:
    report, volume = _alone(name, scratch)
    assert set(report.used) | set(report.rejected) == {name}
    skipped = [s for p in report.cohort.patients for s in p.skipped] + report.cohort.skipped
    if name in report.used:
        assert volume is not None and not skipped
        assert volume.data.dtype == np.float32 and np.isfinite(volume.data).all()
        assert all(s > 0 for s in volume.spacing)
    else:
        reason = report.rejected[name]
        assert reason and "\n" not in reason and "unexpected error" not in reason
        assert [s.source for s in skipped] == [name]  # the skipped item names the file
    expected = EXPECTED.get(name)
    if expected == "used":
        assert name in report.used, report.rejected.get(name)
    elif expected is not None:
        assert expected in report.rejected[name]


@pytest.mark.parametrize(
    ("copy", "original"),
    [(f"MR_small_{s}.dcm", "MR_small.dcm") for s in
     ("RLE", "jpeg_ls_lossless", "jp2klossless", "bigendian", "implicit", "expb", "padded")]
    + [("693_J2KR.dcm", "693_UNCR.dcm"), ("693_J2KI.dcm", "693_UNCI.dcm")],
)
def test_codecs_decode_to_the_uncompressed_voxels(copy: str, original: str, scratch: str) -> None:
    a, b = _alone(copy, scratch)[1], _alone(original, scratch)[1]
    assert a is not None and b is not None
    np.testing.assert_array_equal(a.data, b.data)


def test_real_ct_values_are_hounsfield_units(scratch: str) -> None:
    vol = _alone("CT_small.dcm", scratch)[1]
    assert vol is not None and vol.modality == "CT"
    assert -1100 < vol.data.min() < -800 and 500 < vol.data.max() < 3000  # air ... bone, HU


def test_enhanced_ct_frames_sorted_by_position_with_per_frame_rescale(scratch: str) -> None:
    import pydicom

    vol = _alone("eCT_Supplemental.dcm", scratch)[1]
    assert vol is not None and vol.shape == (2, 512, 512)
    assert vol.spacing[0] == pytest.approx(10.0)  # from the positions -159 and -149 mm
    raw = pydicom.dcmread(CORPUS / "eCT_Supplemental.dcm").pixel_array.astype(np.float32)
    # frame 0 lies at z=-159 (inferior) -> first; rescale intercept -1024 from the shared group;
    # rows run to patient right (orientation [-1,0,0, 0,1,0]) -> flipped to run to the left
    np.testing.assert_array_equal(vol.data[0], raw[0, :, ::-1] - 1024)
    np.testing.assert_array_equal(vol.data[1], raw[1, :, ::-1] - 1024)


def test_flipped_orientation_is_made_canonical(scratch: str) -> None:
    import pydicom

    vol = _alone("explicit_VR-UN.dcm", scratch)[1]  # ImageOrientationPatient [1,0,0, 0,-1,0]
    ds = pydicom.dcmread(CORPUS / "explicit_VR-UN.dcm")
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol is not None
    np.testing.assert_array_equal(vol.data[0], hu[::-1])  # rows now run anterior -> posterior


def test_whole_corpus_as_a_flat_folder(dicom_corpus: Path, capsys: pytest.CaptureFixture[str],
                                       record_property: object) -> None:
    report = ingest(dicom_corpus, SALT)
    assert set(report.used) | set(report.rejected) == set(CORPUS_FILES)
    assert not set(report.used) & set(report.rejected)
    reasons = list(report.rejected.values())
    assert all(r and "\n" not in r and "unexpected error" not in r for r in reasons)
    sources = [s.source for p in report.cohort.patients for s in p.skipped]
    sources += [s.source for s in report.cohort.skipped]
    for file in report.rejected:  # every rejected file is named by a skipped item
        assert any(src == file or src.startswith(str(Path(file).parent)) for src in sources)
    summary = collections.Counter(
        re.sub(r"\s+", " ", re.sub(r"series s-[0-9a-f]+:?|\s*\([^)]*\)", "", r)).strip()
        for r in reasons
    )
    with capsys.disabled():
        print(f"\ncorpus sweep: {len(CORPUS_FILES)} files, used {len(report.used)}, "
              f"rejected {len(report.rejected)}, tracebacks 0")
        for reason, n in summary.most_common():
            print(f"  {n:4d}  {reason}")
    assert callable(record_property)
    record_property("corpus_used", len(report.used))
    record_property("corpus_rejected", len(report.rejected))
