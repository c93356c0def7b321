"""``medidd-node distill --workers N`` on a real DICOM tree: the same package bytes as one
patient after another; bad worker counts and Ray addresses are clear errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from medidd.io.sample_data import COHORT_V1, make_sample_patients
from tests.cli.test_node_cli import FAST, _node


@pytest.fixture(scope="module")
def mr_tree(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dicom") / "patients"
    make_sample_patients(real_samples, out, modality="MR", names=COHORT_V1)  # 3 MR patients
    return out


def _files(package: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(package.iterdir())}


@pytest.mark.slow  # two CLI runs, ~45 s on 2 busy cores
def test_more_workers_than_cores_warn_and_write_the_sequential_bytes(
    mr_tree: Path, tmp_path: Path,
) -> None:
    # _node runs with OMP_NUM_THREADS=1: one torch thread per patient in both runs
    _node("distill", "-p", str(mr_tree), "-o", str(tmp_path / "one"), "-q", *FAST,
          "--workers", "1", home=tmp_path)
    r = _node("distill", "-p", str(mr_tree), "-o", str(tmp_path / "many"), *FAST,
              "--workers", "99", home=tmp_path)
    assert "workers=99 is more than the" in r.stderr
    assert "wrote" in r.stdout and "3 patients" in r.stdout
    assert _files(tmp_path / "one") == _files(tmp_path / "many")


def test_zero_workers_and_a_silent_ray_address_are_clear_errors(
    mr_tree: Path, tmp_path: Path,
) -> None:
    r = _node("distill", "-p", str(mr_tree), "-o", str(tmp_path / "x"), "--workers", "0",
              home=tmp_path, check=False)
    assert r.returncode == 2 and "--workers" in r.stderr and "x>=1" in r.stderr
    t0 = time.monotonic()
    r = _node("distill", "-p", str(mr_tree), "-o", str(tmp_path / "x"), "-q", *FAST,
              "--ray", "127.0.0.1:1", home=tmp_path, check=False)
    assert r.returncode == 2 and "does not answer" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 120  # CLI start + preprocessing; the check takes < 5 s
    assert not (tmp_path / "x").exists()
