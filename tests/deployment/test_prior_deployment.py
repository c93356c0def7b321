"""The shared-prior round on a real deployment (127.0.0.1): SuperLink with TLS and SuperNode
authentication, three SuperNodes with real CT patients, ``flwr run`` of the prior apps.

What the ServerApp receives from a node is masked (not its sums); the released prior is
exactly the sum of the nodes' sums divided (no-noise run, checked against the library on the
same patients); a node lost mid-round is recovered above the reconstruction threshold and
is a clear failure below it; a contribution of the wrong shape (screened at the server) or
with NaN (refused by the node) is rejected with the reason. Run alone with
``pytest -m deployment``; every process is ended by PID.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aggregator.run import prior_deployment
from medidd.federation import FederationConfig
from medidd.federation.local import load_patients
from medidd.federation.node import NodeSettings
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.prior.contribution import site_contribution
from medidd.prior.shared import GroupSums, SharedPriorConfig, read_shared_prior, release
from tests.deployment.conftest import ROOT, Link

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

FILES = {"a": "lung1.nrrd", "b": "lung2.nrrd", "c": "chest_cta_1p5mm.nii.gz"}
PREPROCESS = {"size": 32, "max_slices_per_volume": 8}
PRIOR = {"groups": ["CT:chest", "MR:head"], "bins": 2, "release_size": 8, "clip_norm": 6.0,
         "count_weight": 2.0, "min_patients": 1, "registration_iterations": 20}


@pytest.fixture(scope="module")
def sites(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prior-sites")
    for site, name in FILES.items():
        folder = root / site / "patient1"
        folder.mkdir(parents=True)
        (folder / name).symlink_to(real_samples / "ct" / name)
    return {site: root / site for site in FILES} | {"salt": root / "salt"}


def _node(site: str, sites: dict[str, Path], evil: str | None) -> dict[str, object]:
    cfg: dict[str, object] = {"name": f"site-{site}", "patients": str(sites[site]),
                              "salt-file": str(sites["salt"]), "region": "chest"}
    return cfg | ({"evil": evil} if evil else {})


def _run(link: Link, sites: dict[str, Path], out: Path, evil: dict[str, str] | None = None,
         **extra: Any) -> dict[str, Any]:
    for site in FILES:
        name = link.supernode(site, _node(site, sites, (evil or {}).get(site)))
        assert link.procs.wait_log(name, "SuperNode ID:", 90), link.procs.log(name)
    data: dict[str, Any] = {"preprocess": PREPROCESS, "prior": PRIOR,
                            "prior_round": {"min_sites": 2, "timeout_s": 45},
                            "expected_nodes": [f"site-{s}" for s in FILES],
                            "timeouts": {"wait_for_nodes_s": 60}}
    for key, value in extra.items():
        data[key] = data.get(key, {}) | value if isinstance(value, dict) else value
    os.environ["PYTHONPATH"] = str(ROOT)  # flwr run imports the test ClientApp from tests/
    report = prior_deployment(FederationConfig.model_validate(data), out, link.address,
                              root_certificates=link.certs["ca_cert"], stream=False,
                              timeout_s=540, client_app="tests.deployment.evil_prior_client:app")
    return dict(report)


def _plain(sites: dict[str, Path], site: str) -> list[np.ndarray]:
    """What node ``site`` computes, here, from the same patients (no noise: deterministic)."""
    cfg = SharedPriorConfig.model_validate(PRIOR | {"epsilon": None})
    settings = NodeSettings(salt_file=sites["salt"])
    cohort = load_patients(sites[site], PreprocessConfig.model_validate(PREPROCESS), settings)
    return site_contribution(cohort, cfg, site_region="chest").arrays()


def test_three_supernodes_build_the_prior_and_the_server_sees_only_masked_sums(
    superlink: Link, sites: dict[str, Path], tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    report = _run(superlink, sites, out, prior={"epsilon": None}, record_received=True)
    assert report["status"] == "ok", report.get("error")
    assert report["stages"]["unmask"] == 3 and not report["dropped"]
    plain = {s: _plain(sites, s) for s in FILES}
    # 1. what reached the ServerApp from each node: uniformly masked integers, not its sums
    masked = sorted((out / "received").glob("masked-*"))
    assert len(masked) == 3
    for folder in masked:
        arrays = [np.load(f) for f in sorted(folder.glob("*.npy"))][1:]  # [0]: weight
        vec = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
        assert np.mean(vec > 2**22) > 0.99  # plain values quantise below 2^22; masks fill 2^32
        as_plain = vec * (2 * 4096.0 / 2**22) - 4096.0
        for site in FILES:
            mine = np.concatenate([a.ravel() for a in plain[site]])
            assert abs(np.corrcoef(as_plain, mine)[0, 1]) < 0.2
            assert np.abs(as_plain - mine).max() > 100.0
    # 2. the released prior is the sum over the sites, divided (SecAgg+ quantisation only)
    cfg = SharedPriorConfig.model_validate(PRIOR | {"epsilon": None})
    totals = [np.sum([plain[s][i] for s in FILES], axis=0) for i in range(4)]
    want = release({"CT:chest": GroupSums(totals[0], totals[1])}, cfg, size=32,
                   n_sites={"CT:chest": 3})
    got = read_shared_prior(out / "prior", expected_sha256=report["prior_sha256"])
    assert got.groups["CT:chest"].patients.tolist() == pytest.approx([3.0, 3.0], abs=1e-3)
    assert torch.allclose(got.groups["CT:chest"].images, want.groups["CT:chest"].images,
                          atol=5e-3)
    assert got.statement["dp"] is False and "everything: released without noise" in \
        got.statement["not_covered"]
    assert report["audit"]["status"] in ("passed", "failed", "not_run")
    assert set(report["audit"]["nodes"]) == {f"site-{s}" for s in FILES}


def test_a_node_lost_mid_round_is_recovered_above_the_threshold(
    superlink: Link, sites: dict[str, Path], tmp_path: Path,
) -> None:
    report = _run(superlink, sites, tmp_path / "run", evil={"c": "drop"},
                  prior={"epsilon": 8.0})
    assert report["status"] == "ok", report.get("error")
    assert report["stages"]["collect_masked_vectors"] == 2 and report["stages"]["unmask"] == 2
    assert set(report["nodes"]) == {"site-a", "site-b"} and len(report["dropped"]) == 1
    assert report["groups"]["CT:chest"]["n_sites"] == 2
    assert report["statement"]["sites"] == 2 and report["statement"]["epsilon"] == 8.0


def test_below_the_threshold_the_round_fails_clearly_and_names_the_refusal(
    superlink: Link, sites: dict[str, Path], tmp_path: Path,
) -> None:
    report = _run(superlink, sites, tmp_path / "run", evil={"c": "nan"},
                  prior_round={"reconstruction_threshold": 1.0})  # all three shares needed
    assert report["status"] == "failed"
    assert "SecAgg+ halted: 2 of 3 sites sent masked sums" in report["error"]
    assert "reconstruction threshold 3" in report["error"]
    assert "CT:chest sums: 1 non-finite values" in report["error"]
    assert not (tmp_path / "run" / "prior").exists()


def test_a_contribution_of_the_wrong_shape_is_rejected_with_the_reason(
    superlink: Link, sites: dict[str, Path], tmp_path: Path,
) -> None:
    report = _run(superlink, sites, tmp_path / "run", evil={"b": "shape"})
    assert report["status"] == "ok", report.get("error")
    (reason,) = report["rejected"].values()
    assert "masked vector of shapes [(2, 3, 3), (2,), (2, 8, 8), (2,)]" in reason
    assert "expected [(2, 8, 8), (2,), (2, 8, 8), (2,)]" in reason
    assert set(report["nodes"]) == {"site-a", "site-c"}
