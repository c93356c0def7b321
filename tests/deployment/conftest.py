"""A real Flower deployment on 127.0.0.1: dev certificates, a SuperLink with TLS and
SuperNode authentication, registered SuperNode keys, SuperNodes started per test. Every
process is ended by PID (with its descendants) at teardown, also when the test fails."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from hospital_node.serve import supernode_command
from medidd.federation.certs import make_dev_certificates
from medidd.package import write_package
from tests.deployment.flower_procs import BIN, Procs, flower_env, free_port
from tests.federation.conftest import SPEC, real_ct_slices

KEYS = ("a", "b", "c", "rogue")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"), supernodes=KEYS)


@dataclass
class Link:
    address: str
    procs: Procs
    certs: dict[str, Path]
    cli_home: Path
    root: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "flwr"), *args], env=flower_env(self.cli_home),
                              capture_output=True, text=True, timeout=60, check=False)

    def register(self, name: str) -> None:
        for _ in range(10):
            res = self.cli("supernode", "register", str(self.certs[f"{name}.public"]), "medidd")
            if res.returncode == 0 and "registered" in res.stdout:
                return
        raise AssertionError(f"could not register {name}: {res.stdout}\n{res.stderr}")

    def supernode(self, name: str, node_config: dict[str, object], *, key: str | None = None,
                  ca: bool = True, max_retries: int | None = None) -> str:
        cmd = supernode_command(
            self.address, node_config,
            root_certificates=self.certs["ca_cert"] if ca else None,
            auth_private_key=self.certs[f"{key or name}.private"], port=free_port(),
            max_retries=max_retries)
        env = flower_env(self.root / f"home-{name}")
        env["PYTHONPATH"] = str(ROOT)  # the test ClientApp lives in tests/
        self.procs.start(f"supernode-{name}", cmd, env)
        return f"supernode-{name}"


@pytest.fixture()
def superlink(certs: dict[str, Path], tmp_path: Path) -> Iterator[Link]:
    """A SuperLink with TLS + --enable-supernode-auth; keys a, b, c registered, not rogue."""
    procs = Procs(tmp_path / "logs")
    port = free_port()
    cmd = [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs["ca_cert"]),
           "--ssl-certfile", str(certs["server_cert"]), "--ssl-keyfile", str(certs["server_key"]),
           "--enable-supernode-auth", "--disable-runtime-dependency-installation",
           "--host", "127.0.0.1", "--port", str(port)]
    cli_home = tmp_path / "cli-home"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "medidd"\n\n[superlink.medidd]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs["ca_cert"]}"\n')
    link = Link(f"127.0.0.1:{port}", procs, certs, cli_home, tmp_path)
    try:
        procs.start("superlink", cmd, flower_env(tmp_path / "superlink-home"))
        assert procs.wait_log("superlink", "Uvicorn running on https://", 60), \
            procs.log("superlink")
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
