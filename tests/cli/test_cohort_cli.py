"""The node CLI on the grown real cohort: ``sample-data`` filters, and a patients folder that
holds only masks is a clear error (never a traceback, never a mask read as an image)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _node(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDIDD_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "hospital_node.cli", *args],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )


@pytest.fixture
def masks_only(real_samples: Path, tmp_path: Path) -> Path:
    """Two patients whose every file is a mask (by name, and by content under a plain name)."""
    patients = tmp_path / "patients"
    for sub, name in (("ct", "spine_ct"), ("mr", "spine_t2")):
        (patients / name).mkdir(parents=True)
        for mask in (real_samples / sub / name).glob("*_msk.nii.gz"):
            shutil.copy(mask, patients / name / mask.name)
    shutil.copy(real_samples / "labels" / "lung1_label.nrrd", patients / "spine_ct" / "scan.nrrd")
    return patients


def test_sample_data_filters_by_modality_and_region(real_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "tree"
    r = _node("sample-data", "--out", str(out), "--samples", str(real_samples),
              "--modality", "CT", "--region", "head", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [Path(line).name for line in r.stdout.split()] == ["CT-06-head_ct1", "CT-07-head_ct2"]
    assert "wrote 2 patients" in r.stderr and "2 CT head" in r.stderr
    r = _node("sample-data", "--out", str(out), "--samples", str(real_samples),
              "--region", "heads", home=tmp_path)
    assert r.returncode == 2 and "did you mean 'head'" in r.stderr and "Traceback" not in r.stderr
    r = _node("sample-data", "--out", str(out), "--samples", str(real_samples),
              "--modality", "CT", "--region", "head", home=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_inspect_and_distill_refuse_a_folder_of_masks(masks_only: Path, tmp_path: Path) -> None:
    r = _node("inspect", "-p", str(masks_only), "--quiet", home=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"no usable patient in {masks_only}" in " ".join(r.stderr.split())
    assert r.stdout.count("label map or mask") == 5  # 4 by name, 1 by content
    assert "usable series (0 patients)" in r.stdout
    out = tmp_path / "package"
    r = _node("distill", "-p", str(masks_only), "-o", str(out), "--quiet", home=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no usable patient" in r.stderr and "label map or mask" in r.stderr
    assert not out.exists()
