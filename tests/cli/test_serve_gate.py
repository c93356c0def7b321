"""`medidd-node serve` refuses a package whose audit did not pass, before starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from medidd.package import write_package


def test_serve_refuses_an_unaudited_package(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(2, 1, 16, 16, generator=g)
    pkg = write_package(
        tmp_path / "pkg",
        hq,
        hq + 0.01,
        task="denoise",
        modality="CT",
        degradation={"kind": "gaussian", "noise_sigma": 0.05},
        window=(-1000.0, 1000.0),
        patients=[("p-0123456789ab", 2)],
        ipc=2,
        method="prior_only",
        seed=0,
        method_config={"ipc": 2},
    )
    env = {**os.environ, "MEDIDD_HOME": str(tmp_path / "home"), "FLWR_TELEMETRY_ENABLED": "0"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hospital_node.cli",
            "serve",
            "--superlink",
            "127.0.0.1:9",
            "--package",
            str(pkg),
            "--insecure",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "audit" in r.stderr.lower()
    assert "Traceback" not in r.stderr
