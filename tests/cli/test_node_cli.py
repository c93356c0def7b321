"""The node CLI on a real DICOM tree: inspect, distill (resumable after kill -9), export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medidd.io.sample_data import COHORT_V1, make_sample_patients
from medidd.package import read_package

FAST = [
    "--set",
    "matching.iterations=2",
    "--set",
    "matching.outer_loop=3",
    "--set",
    "matching.patch_size=24",
    "--set",
    "spg.width=8",
    "--set",
    "prior.kind=atlas",
    "--set",
    "preprocess.size=32",
    "--set",
    "matching.lfd_features=16",
]


def _node(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDIDD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hospital_node.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


@pytest.fixture(scope="module")
def mr_tree(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dicom") / "patients"
    make_sample_patients(real_samples, out, modality="MR", names=COHORT_V1)  # 3 MR patients
    return out


def test_inspect_lists_patients_and_skips(
    mr_tree: Path, tmp_path: Path, dicom_corpus: Path
) -> None:
    (mr_tree.parent / "odd").mkdir(exist_ok=True)
    r = _node("inspect", "-p", str(mr_tree), "--json", home=tmp_path)
    data = json.loads(r.stdout)
    assert data["usable_patients"] == 3
    assert all(v["modality"] == "MR" for v in data["volumes"])
    for v in data["volumes"]:  # no identity leaks into what inspect prints
        assert "MEDIDD^" not in json.dumps(v)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _node("inspect", "-p", str(empty), home=tmp_path, check=False)
    assert r.returncode == 1
    r = _node("inspect", "-p", str(tmp_path / "missing"), home=tmp_path, check=False)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_distill_resumes_after_kill_and_gives_the_same_package(
    mr_tree: Path, tmp_path: Path
) -> None:
    ref = tmp_path / "ref"
    _node("distill", "-p", str(mr_tree), "-o", str(ref), "--ipc", "2", "-q", *FAST, home=tmp_path)
    # interrupted run: kill -9 as soon as the first patient is check-pointed
    out = tmp_path / "pkg"
    env = {**os.environ, "MEDIDD_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hospital_node.cli",
            "distill",
            "-p",
            str(mr_tree),
            "-o",
            str(out),
            "--ipc",
            "2",
            "-q",
            *FAST,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = tmp_path / ".pkg.ckpt"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not list(ckpts.rglob("*.pt")):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert list(ckpts.rglob("*.pt")), "no checkpoint appeared before the deadline"
    assert not (out / "manifest.json").exists()  # nothing half-written under --out
    r = _node("distill", "-p", str(mr_tree), "-o", str(out), "--ipc", "2", *FAST, home=tmp_path)
    assert "resumed from checkpoints" in r.stdout
    a, b = read_package(ref), read_package(out)
    # the same computation in another process: equal up to float32 reordering (1e-5 is far
    # below one grey level of a 12-bit image, 2.4e-4), not asserted bit for bit
    torch.testing.assert_close(a.hq, b.hq, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.lq, b.lq, atol=1e-5, rtol=0)
    assert a.manifest.method_config_hash == b.manifest.method_config_hash
    assert not ckpts.exists()  # checkpoints removed once the package is complete
    # a different config at the same --out is refused, the package left intact
    r = _node(
        "distill",
        "-p",
        str(mr_tree),
        "-o",
        str(out),
        "--ipc",
        "1",
        "-q",
        *FAST,
        home=tmp_path,
        check=False,
    )
    assert r.returncode == 2 and "different package" in r.stderr
    assert read_package(out).manifest.ipc == 2
    # export for a viewer
    r = _node("export", "--package", str(out), "--out", str(tmp_path / "nii"), home=tmp_path)
    assert list((tmp_path / "nii").glob("*.nii.gz"))


def test_distill_bad_input_is_a_clear_error(mr_tree: Path, tmp_path: Path) -> None:
    r = _node(
        "distill",
        "-p",
        str(mr_tree),
        "-o",
        str(tmp_path / "x"),
        "--method",
        "spg_mg",
        home=tmp_path,
        check=False,
    )
    assert r.returncode == 2 and "did you mean 'spg_gm'" in r.stderr
    r = _node(
        "distill",
        "-p",
        str(mr_tree),
        "-o",
        str(tmp_path / "x"),
        "--set",
        "matching.iteratons=3",
        home=tmp_path,
        check=False,
    )
    assert r.returncode == 2 and "did you mean 'iterations'" in r.stderr
    r = _node(
        "distill",
        "-p",
        str(mr_tree),
        "-o",
        str(tmp_path / "x"),
        "--method",
        "random",
        "--ipc",
        "500",
        *FAST,
        home=tmp_path,
        check=False,
    )
    assert r.returncode == 2 and "ipc=500 is more than" in r.stderr
    r = _node(
        "distill",
        "-p",
        str(mr_tree),
        "-o",
        str(tmp_path / "x"),
        "--set",
        "min_slices=999",
        *FAST,
        home=tmp_path,
        check=False,
    )
    assert r.returncode == 2 and "fewer than min_slices=999" in r.stderr
    assert not (tmp_path / "x").exists()
    assert "Traceback" not in r.stderr
