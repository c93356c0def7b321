"""A real Flower deployment on 127.0.0.1: dev certificates, a SuperLink with TLS and
SuperNode authentication, registered SuperNode keys, SuperNodes started per test. Every
process is ended by PID (with its descendants) at teardown, also when the test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from aggregator.loopback import Loopback, start_superlink
from aggregator.procs import Procs
from medidd.federation.certs import make_dev_certificates
from medidd.package import write_package
from tests.federation.conftest import SPEC, real_ct_slices

KEYS = ("a", "b", "c", "rogue")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"), supernodes=KEYS)


#: The deployment tests' SuperLink (their SuperNodes import the test ClientApp from tests/).
Link = Loopback


@pytest.fixture()
def superlink(certs: dict[str, Path], tmp_path: Path) -> Iterator[Link]:
    """A SuperLink with TLS + --enable-supernode-auth; keys a, b, c registered, not rogue."""
    procs = Procs(tmp_path / "logs")
    try:
        link = start_superlink(certs, tmp_path, procs, node_env={"PYTHONPATH": str(ROOT)})
        for name in ("a", "b", "c"):
            link.register(name)
        yield link
    finally:
        procs.stop_all()


def _mixed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A 'mean prior' image set: the pixel mean of two different patients' slices."""
    return ((a + b) / 2).contiguous()


@pytest.fixture(scope="module")
def site_data(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per site a patients folder (one real CT patient) and a package of mean-of-two-patients
    images (nothing of it is a copy of a real slice)."""
    root = tmp_path_factory.mktemp("sites")
    ct = real_samples / "ct"
    vols = {"a": ct / "lung1.nrrd", "b": ct / "abdomen_3mm.nii.gz", "c": ct / "lung2.nrrd"}
    slices = {k: real_ct_slices(v, 4) for k, v in vols.items()}
    out: dict[str, Path] = {}
    for site, other in (("a", "b"), ("b", "c"), ("c", "a")):
        patients = root / site / "patients" / "patient1"
        patients.mkdir(parents=True)
        (patients / vols[site].name).symlink_to(vols[site])
        hq = _mixed(slices[site], slices[other])
        lq = hq + 0.05 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(1))
        write_package(root / site / "package", hq, lq, task="denoise", modality="CT",
                      degradation=SPEC, window=(-1000.0, 1000.0),
                      patients=[("p-0123abcd", 2), ("p-4567cdef", 2)], ipc=2,
                      method="prior_only", seed=0, method_config={}, audit={"status": "passed"})
        out[f"{site}/patients"] = root / site / "patients"
        out[f"{site}/package"] = root / site / "package"
    out["salt"] = root / "salt"
    return out


def ncc_max(shipped: np.ndarray, real: np.ndarray) -> float:
    """Highest normalised cross-correlation between any shipped and any real image."""
    def norm(x: np.ndarray) -> np.ndarray:
        x = x.reshape(x.shape[0], -1).astype(np.float64)
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return float((norm(shipped) @ norm(real).T).max())
