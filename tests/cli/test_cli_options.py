"""One name per option across the node's commands, choices shown, and library messages mapped
to the options that fix them (--allow-2d), on real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer

from hospital_node.cli import DISTILL_METHODS
from hospital_node.cli import app as node_app


def _node(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDIDD_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "hospital_node.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_method_choices_are_the_registered_methods() -> None:
    from medidd.distill import available_methods

    assert sorted(DISTILL_METHODS) == available_methods()


def test_one_name_per_option_across_commands() -> None:
    group = typer.main.get_command(node_app)
    names: dict[str, set[str]] = {}
    for sub in group.commands.values():  # type: ignore[attr-defined]
        for p in sub.params:
            names.setdefault(p.name, set()).update(o for o in p.opts if o.startswith("--"))
    for param, flags in names.items():
        assert len(flags) == 1, f"{param} is spelt {sorted(flags)} across commands"
    assert "--cache" in names["cache"]
    assert "--allow-2d" in names["allow_2d"]
    serve = group.commands["serve"]  # type: ignore[attr-defined]
    assert "--cache-dir" not in {o for p in serve.params for o in p.opts}


@pytest.mark.parametrize("command", ["distill", "enhance", "inspect"])
def test_choices_are_shown(command: str, tmp_path: Path) -> None:
    r = _node(command, "--help", home=tmp_path)
    assert r.returncode == 0
    assert "[CT|MR]" in r.stdout
    if command == "distill":
        assert "[denoise|sr]" in r.stdout and "spg_gm|" in r.stdout
        r = _node(command, "-p", str(tmp_path), "-o", str(tmp_path / "x"), "--task", "denoize",
                  home=tmp_path)
        assert r.returncode == 2 and "did you mean 'denoise'?" in r.stderr
        assert "\x1b[" not in r.stderr and "╭" not in r.stderr  # plain text in a pipe


def test_inspect_names_the_allow_2d_option_and_the_source_folder(real_samples: Path,
                                                                 tmp_path: Path) -> None:
    ct = nib.load(str(real_samples / "ct" / "abdomen_3mm.nii.gz"))
    data = np.asarray(ct.dataobj)[:, :, 10:11]  # one real axial slice
    pts = tmp_path / "patients"
    (pts / "site-folder-7").mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, ct.affine), str(pts / "site-folder-7" / "slice.nii.gz"))
    r = _node("inspect", "-p", str(pts), "--json", home=tmp_path)
    assert r.returncode == 1
    assert "pass --allow-2d to use it" in r.stdout and "allow_2d" not in r.stdout
    r = _node("inspect", "-p", str(pts), "--json", "--allow-2d", home=tmp_path)
    assert r.returncode == 0, r.stderr
    volume = json.loads(r.stdout)["volumes"][0]
    assert volume["source"] == "site-folder-7/slice.nii.gz" and volume["slices"] == 1


def test_export_writes_hu_with_the_patients_real_pixel_size(real_samples: Path,
                                                            tmp_path: Path) -> None:
    """A package of real slices of a real DICOM patient, exported with --patients: HU values
    and the pixel size the patient's slices have on the preprocessing grid."""
    import shutil

    from medidd.enhance.apply import model_pixel_mm
    from medidd.io.discover import ingest
    from medidd.io.pseudonym import load_or_create_salt
    from medidd.package import write_package
    from medidd.preprocess.pipeline import PreprocessConfig, preprocess_volume

    pts = tmp_path / "patients"
    shutil.copytree(real_samples / "ct" / "pycerr_pat2", pts / "lung-a")
    salt = load_or_create_salt(tmp_path / "salt")
    volume = ingest(pts, salt).cohort.usable_patients[0].volumes[0]
    pre = PreprocessConfig(size=64)
    hq = preprocess_volume(volume, pre).images[10:12]
    pkg = write_package(tmp_path / "pkg", hq, hq, task="denoise", modality="CT",
                        degradation={"kind": "gaussian", "noise_sigma": 0.05},
                        window=(-1000.0, 1000.0), patients=[(volume.patient_key, 2)], ipc=2,
                        method="random", seed=0, method_config={"preprocess": pre.model_dump()})
    r = _node("export", "--package", str(pkg), "--out", str(tmp_path / "nii"), "-p", str(pts),
              "--salt-file", str(tmp_path / "salt"), home=tmp_path)
    assert r.returncode == 0, r.stderr
    img = nib.load(str(tmp_path / "nii" / f"{volume.patient_key}_hq.nii.gz"))
    mm = model_pixel_mm(volume, pre)
    assert 1.5 < mm < 3.0  # a 141 px, 0.98 mm chest slice cropped to the body, on 64 px
    np.testing.assert_allclose(img.header.get_zooms(), (mm, mm, 1.0), rtol=1e-5)
    data = np.asarray(img.dataobj)
    assert data.min() >= -1000.0 and data.max() <= 1000.0 and data.min() < -900  # HU, air
