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
    assert "no privacy audit recorded" in r.stderr
    # the library names the node config key; the CLI says which of its options sets it
    assert "--override-audit-by" in r.stderr and "--override-audit-reason" in r.stderr
    assert "node config" not in r.stderr and "override-audit=true" not in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_names_the_option_of_a_bad_setting(tmp_path: Path) -> None:
    env = {**os.environ, "MEDIDD_HOME": str(tmp_path / "home"), "FLWR_TELEMETRY_ENABLED": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "hospital_node.cli", "serve", "--superlink", "127.0.0.1:9",
         "--package", str(tmp_path / "pkg"), "--name", "site a/b", "--insecure"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "invalid node config: --name:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
