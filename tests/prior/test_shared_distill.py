"""``medidd-node distill --set prior.kind=shared --set prior.path=...`` on real CT patients: the
package starts from the consortium's prior and its manifest says which one (sha256) and that
it is DP at the stated epsilon; a prior that does not match is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medidd.package import read_package
from medidd.prior.contribution import site_contribution
from medidd.prior.shared import SharedPriorConfig, release, write_shared_prior
from tests.helpers_real import real_slices


@pytest.fixture(scope="module")
def shared(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A CT:chest prior of three real chest CTs at 32 px, epsilon 4 (one 'site' for speed)."""
    ct = real_samples / "ct"
    site = [real_slices(ct / f, "CT", f"p-{i:012x}", size=32)
            for i, f in enumerate(["lung1.nrrd", "lung2.nrrd", "chest_cta_1p5mm.nii.gz"])]
    cfg = SharedPriorConfig(groups=["CT:chest"], bins=2, release_size=8, epsilon=4.0,
                            count_weight=8.0, min_patients=1)
    # seed 1: both bins reach one (noisy) patient; the noise on a count is 2 patients here
    c = site_contribution(site, cfg, site_region="chest", rng=np.random.default_rng(1))
    prior = release(c.sums, cfg, size=32, n_sites={"CT:chest": 1})
    folder = tmp_path_factory.mktemp("prior") / "prior"
    return folder, write_shared_prior(prior, folder)


@pytest.fixture(scope="module")
def patients(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site") / "patients"
    (root / "patient1").mkdir(parents=True)
    (root / "patient1" / "lung1.nrrd").symlink_to(real_samples / "ct" / "lung1.nrrd")
    return root


def _distill(patients: Path, out: Path, home: Path, *sets: str
             ) -> subprocess.CompletedProcess[str]:
    args = ["distill", "-p", str(patients), "-o", str(out), "--method", "prior_only",
            "--ipc", "2", "--quiet", "--set", "preprocess.size=32",
            "--set", "audit.canaries=0"]  # one patient: no room for the audit's canaries
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "MEDIDD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hospital_node.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_package_from_the_shared_prior_records_its_hash_and_dp(
    shared: tuple[Path, str], patients: Path, tmp_path: Path,
) -> None:
    folder, sha = shared
    r = _distill(patients, tmp_path / "pkg", tmp_path, "prior.kind=shared",
                 f"prior.path={folder}", f"prior.sha256={sha}", "prior.region=chest")
    assert r.returncode == 0, r.stderr
    pkg = read_package(tmp_path / "pkg")
    info = pkg.manifest.prior
    assert info is not None and info.sha256 == sha and info.kind == "shared"
    assert info.dp and info.epsilon == 4.0 and info.group == "CT:chest"
    assert "path" not in (pkg.manifest.method_config or {}).get("prior", {})  # site-local


@pytest.mark.parametrize(("sets", "message"), [
    (["prior.sha256=" + "ab" * 32], "does not match the expected"),
    (["prior.region=abdomen"], "no CT:abdomen group"),
    (["prior.region=pelvis"], "unknown CT region 'pelvis'"),
])
def test_a_prior_that_does_not_match_is_a_clear_error(
    shared: tuple[Path, str], patients: Path, tmp_path: Path, sets: list[str], message: str,
) -> None:
    folder, _ = shared
    r = _distill(patients, tmp_path / "pkg", tmp_path, "prior.kind=shared",
                 f"prior.path={folder}", *sets)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "pkg").exists()
