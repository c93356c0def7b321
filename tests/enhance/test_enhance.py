"""``medidd-node enhance`` on a real DICOM series (pyCERR lung CT, 41 slices) and a real NIfTI.

A small DnCNN trained in the test on the series' own low-dose pairs is saved with its model
card, then applied through the CLI: the NIfTI carries the input's geometry (affine from the
DICOM positions and orientation), the HU range stays sane, the derived DICOM series has new
UIDs, ImageType DERIVED and the input's positions, and bad models and occupied output
folders are refused with nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medidd.degrade import build_degradation
from medidd.enhance import ModelGrid, enhance_volume, from_canonical_axial
from medidd.io.discover import ingest
from medidd.io.geometry import to_canonical_axial
from medidd.model import ModelCard, ModelError, load_model, save_model
from medidd.nets import NetConfig
from medidd.preprocess.pipeline import PreprocessConfig, preprocess_volume
from medidd.train import TrainConfig, train_enhancer

SALT = b"s" * 32
NET = NetConfig(name="dncnn", width=8, depth=3)
PRE = PreprocessConfig(size=64)
SPEC = {"kind": "ct_lowdose", "dose": 0.25, "image_domain": True}


def _node(*args: str, home: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDIDD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hospital_node.cli", *args], env=env,
                          capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module")
def patients(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enhance") / "patients"
    shutil.copytree(real_samples / "ct" / "pycerr_pat2", root / "lung-a")
    return root


@pytest.fixture(scope="module")
def model_dir(patients: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DnCNN trained 60 steps on the patient's own slices at 25% dose, saved with its card."""
    vol = ingest(patients, SALT).cohort.usable_patients[0].volumes[0]
    hq = preprocess_volume(vol, PRE).images
    torch.manual_seed(0)
    cfg = TrainConfig(net=NET, steps=60, batch_size=8, patch_size=32)
    degrade = build_degradation(SPEC, (-1000.0, 1000.0))
    result = train_enhancer(hq, None, cfg, degrade=degrade)
    card = ModelCard.describe(NET, task="denoise", modality="CT", degradation=SPEC,
                              preprocess=PRE, strategy="distill")
    out = tmp_path_factory.mktemp("model")
    save_model(result.model.state_dict(), card, out)
    return out


def test_model_card_round_trip_and_refusals(model_dir: Path, tmp_path: Path) -> None:
    _, card = load_model(model_dir / "model.safetensors", task="denoise", modality="CT")
    assert card.network == NET and card.window == (-1000.0, 1000.0)
    assert card.degradation == SPEC and card.image_size == 64
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["format"] == "medidd-model/1" and len(meta["weights_sha256"]) == 64
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]
    with pytest.raises(ModelError, match="trained for denoise, not sr"):
        load_model(model_dir, task="sr")
    with pytest.raises(ModelError, match="trained on CT, not MR"):
        load_model(model_dir, modality="MR")
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256 differs"):
        load_model(bad)
    (bad / "metadata.json").unlink()
    with pytest.raises(ModelError, match=r"no metadata\.json beside it"):
        load_model(bad)


def test_model_grid_maps_back_onto_the_input() -> None:
    x = torch.zeros(2, 50, 70)
    x[:, 10:40, 5:65] = 0.6
    grid = ModelGrid.fit(x, (0.8, 0.6), PreprocessConfig(size=32))  # anisotropic pixels
    assert grid.square == (67, 70)
    back = grid.from_model(grid.to_model(x))
    assert back.shape == x.shape
    # the body comes back where it was (blurred by the 32 px round trip, nothing shifted)
    assert abs(float(back[:, 20:30, 20:50].mean()) - 0.6) < 0.02
    assert float(back[:, :5].abs().max()) < 0.05


def test_from_canonical_inverts_every_orientation() -> None:
    rng = np.random.default_rng(0)
    raw = rng.random((3, 4, 5)).astype(np.float32)
    for perm in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        for signs in ([1, 1, 1], [-1, 1, -1], [1, -1, -1]):
            dirs = np.eye(3)[perm] * np.array(signs)[:, None]
            canon, _ = to_canonical_axial(raw, dirs, (1.0, 2.0, 3.0))
            np.testing.assert_array_equal(from_canonical_axial(canon, dirs), raw)


def test_enhance_volume_changes_only_what_the_model_changes(patients: Path) -> None:
    vol = ingest(patients, SALT).cohort.usable_patients[0].volumes[0]
    card = ModelCard.describe(NET, task="denoise", modality="CT", degradation=SPEC,
                              preprocess=PRE)
    same = enhance_volume(torch.nn.Identity(), vol, card)
    assert float(np.abs(same - vol.data).max()) < 0.05  # HU: the identity changes nothing
    assert same.max() > 2000  # bone above the window (+1000 HU) is kept, not clipped


def _affine_from_dicom(files: list[Path]) -> np.ndarray:
    """The RAS affine of a series from its headers, computed independently of MediDD."""
    ds = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    ds = [d for d in ds if "ImagePositionPatient" in d]
    row = np.array(ds[0].ImageOrientationPatient[:3], float)
    col = np.array(ds[0].ImageOrientationPatient[3:], float)
    normal = np.cross(row, col)
    ds.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    pos = np.array([np.array(d.ImagePositionPatient, float) for d in ds])
    dz = (pos[-1] - pos[0]) / (len(ds) - 1)
    ps = [float(v) for v in ds[0].PixelSpacing]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * ps[1], col * ps[0], dz, pos[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_enhance_cli_round_trips_a_real_dicom_series(patients: Path, model_dir: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "enhanced"
    salt = ["--salt-file", str(tmp_path / "salt")]
    r = _node("enhance", "--model", str(model_dir / "model.safetensors"), "--patients",
              str(patients), "--out", str(out), "-q", *salt, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "enhanced 1 series" in r.stderr and "lung-a:" in r.stdout
    record = json.loads((out / "enhance.json").read_text())
    series = record["series"][0]
    nii = out / series["files"][0]
    img: Any = nib.load(str(nii))
    src = sorted((patients / "lung-a").glob("DCM_IMG_*.dcm"))
    assert img.shape == (int(pydicom.dcmread(str(src[0])).Columns),
                         int(pydicom.dcmread(str(src[0])).Rows), len(src))
    np.testing.assert_allclose(img.affine, _affine_from_dicom(src), atol=1e-3)
    data = np.asarray(img.dataobj, dtype=np.float32)
    assert -1100 < data.min() < -900 and 1000 < data.max() < 3100  # air and bone in HU
    hu_in = series["input_range"]
    assert abs(data.max() - hu_in[1]) < 300
    # the derived DICOM series: same anatomy and positions, new identity, the model's change
    dcm_files = sorted((nii.parent / f"{series['series']}_dicom").glob("*.dcm"))
    assert len(dcm_files) == len(src)
    first_in = {pydicom.dcmread(str(f)).SOPInstanceUID: pydicom.dcmread(str(f)) for f in src}
    new_series: set[str] = set()
    changed: list[float] = []
    for f in dcm_files:
        d = pydicom.dcmread(str(f))
        ref = d.SourceImageSequence[0].ReferencedSOPInstanceUID
        orig = first_in[ref]
        assert d.SOPInstanceUID != orig.SOPInstanceUID
        assert d.SeriesInstanceUID != orig.SeriesInstanceUID
        assert d.StudyInstanceUID == orig.StudyInstanceUID
        assert d.FrameOfReferenceUID == orig.FrameOfReferenceUID
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert list(d.ImagePositionPatient) == list(orig.ImagePositionPatient)
        hu = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
        hu_orig = orig.pixel_array * float(orig.RescaleSlope) + float(orig.RescaleIntercept)
        assert float(np.median(np.abs(hu - hu_orig))) < 40  # same anatomy, HU close
        changed.append(float(np.abs(hu - hu_orig).max()))
        new_series.add(d.SeriesInstanceUID)
    assert len(new_series) == 1 and max(changed) > 1  # the model did change something
    # the derived series is read back by MediDD's own ingestion as a CT volume
    again = ingest(nii.parent, SALT).cohort.usable_patients
    assert again and again[0].volumes[0].n_slices == len(src)
    # same model, same input: nothing to do; another model: refused, nothing touched
    r = _node("enhance", "-m", str(model_dir), "-p", str(patients), "-o", str(out), "-q", *salt,
              home=tmp_path)
    assert r.returncode == 0 and "unchanged" in r.stdout
    other = tmp_path / "other-model"
    _, card = load_model(model_dir)
    torch.manual_seed(1)
    save_model(NET.build().state_dict(), card, other)
    before = sorted(p.name for p in out.rglob("*"))
    r = _node("enhance", "-m", str(other), "-p", str(patients), "-o", str(out), "-q", *salt,
              home=tmp_path)
    assert r.returncode == 2 and "already holds a different enhance result" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".enhanced")]


@pytest.mark.parametrize("case", ["mr-model", "corrupt", "folder-with-files", "no-card"])
def test_enhance_cli_refuses_with_a_clear_error(case: str, patients: Path, model_dir: Path,
                                                tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    out = tmp_path / "out"
    expected = {
        "mr-model": "trained on MR, not CT",
        "corrupt": "sha256 differs",
        "folder-with-files": "already holds other files",
        "no-card": "no metadata.json beside it",
    }[case]
    if case == "mr-model":
        meta = json.loads((model / "metadata.json").read_text())
        meta.update(modality="MR", window=None, degradation={"kind": "kspace_sr", "scale": 2})
        (model / "metadata.json").write_text(json.dumps(meta))
    elif case == "corrupt":
        (model / "model.safetensors").write_bytes(b"\0" * 100)
    elif case == "folder-with-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        (model / "metadata.json").unlink()
    args = ["enhance", "-m", str(model), "-p", str(patients), "-o", str(out), "-q"]
    if case == "mr-model":
        args += ["--modality", "CT"]
    r = _node(*args, "--salt-file", str(tmp_path / "salt"), home=tmp_path)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr
    if case == "folder-with-files":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()


def test_enhance_applies_to_a_real_nifti_with_its_affine(real_samples: Path, model_dir: Path,
                                                         tmp_path: Path) -> None:
    src = real_samples / "ct" / "abdomen_3mm.nii.gz"
    pts = tmp_path / "nifti-patients"
    pts.mkdir()
    shutil.copy(src, pts / "abdomen.nii.gz")
    r = _node("enhance", "-m", str(model_dir), "-p", str(pts), "-o", str(tmp_path / "o"), "-q",
              "--salt-file", str(tmp_path / "salt"), home=tmp_path)
    assert r.returncode == 0, r.stderr
    written = list((tmp_path / "o").rglob("*.nii.gz"))
    assert len(written) == 1 and not list((tmp_path / "o").rglob("*.dcm"))
    a: Any = nib.load(str(src))
    b: Any = nib.load(str(written[0]))
    assert b.shape == a.shape[:3]
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
    data = np.asarray(b.dataobj)
    assert data.min() > -1200 and data.max() < float(np.asarray(a.dataobj).max()) + 200
