"""Real Flower deployment on 127.0.0.1: SuperLink with TLS + SuperNode authentication,
SuperNodes started as separate processes, runs submitted with ``flwr run``.

Run alone with ``pytest -m deployment``. Every process is ended by PID (fixture finalizers).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.run import train_deployment
from medidd.federation import FederationConfig, RunReport
from medidd.federation import protocol as P
from medidd.federation.local import load_patients
from medidd.federation.node import NodeSettings
from medidd.package._codec import decode_array
from medidd.preprocess.pipeline import PreprocessConfig
from tests.deployment.conftest import ROOT, Link, ncc_max
from tests.federation.conftest import SPEC

pytestmark = [pytest.mark.deployment]

PREPROCESS = {"size": 32, "max_slices_per_volume": 6}


def _config(names: list[str], **extra: Any) -> FederationConfig:
    data: dict[str, Any] = {
        "task": "denoise", "degradation": SPEC, "preprocess": PREPROCESS,
        "train": {"net": {"name": "dncnn", "width": 4, "depth": 3}, "steps": 30,
                  "batch_size": 4, "patch_size": 16},
        "expected_nodes": names, "record_received": True,
        "timeouts": {"wait_for_nodes_s": 60, "collect_s": 180, "evaluate_s": 180},
    }
    data.update(extra)
    return FederationConfig.model_validate(data)


def _node(site: str, site_data: dict[str, Path], **extra: object) -> dict[str, object]:
    return {"name": f"site-{site}", "package": str(site_data[f"{site}/package"]),
            "patients": str(site_data[f"{site}/patients"]), "salt-file": str(site_data["salt"]),
            **extra}


def _start(link: Link, sites: list[str], site_data: dict[str, Path],
           evil: dict[str, str] | None = None) -> None:
    for site in sites:
        extra = {"evil": evil[site]} if evil and site in evil else {}
        name = link.supernode(site, _node(site, site_data, **extra))
        assert link.procs.wait_log(name, "SuperNode ID:", 90), link.procs.log(name)


def _run(link: Link, cfg: FederationConfig, out: Path) -> RunReport:
    """Submit with ``flwr run`` (which imports the test ClientApp from tests/, hence the path)."""
    os.environ["PYTHONPATH"] = str(ROOT)
    return train_deployment(cfg, out, link.address, root_certificates=link.certs["ca_cert"],
                            stream=False, timeout_s=540,
                            client_app="tests.deployment.evil_client:app")


def _received_images(out: Path) -> dict[str, np.ndarray]:
    """Every image array the ServerApp received, decoded, keyed by where it was found."""
    images = {}
    for folder in sorted((out / "received").iterdir()):
        pkg = folder / P.PACKAGE
        if pkg.is_dir():
            for f in sorted(pkg.glob("*.npy")):
                name = f.name.removesuffix(".npy")
                raw = np.load(f).tobytes()
                images[f"{folder.name}/{name}"] = np.array(
                    decode_array(raw, name.split(".")[0], name.split(".")[1]), np.float32)
        for f in folder.rglob("*.npy"):
            assert f.parent.name == P.PACKAGE, f"unexpected array received: {f}"
    return images


@pytest.mark.slow
def test_full_run_tls_auth_rejects_a_malicious_package_and_ships_no_real_slice(
    superlink: Link, site_data: dict[str, Path], tmp_path: Path,
) -> None:
    _start(superlink, ["a", "b", "c"], site_data, evil={"c": "nan"})
    out = tmp_path / "run"
    report = _run(superlink, _config(["site-a", "site-b", "site-c"]), out)

    nodes = {n.name: n for n in report.nodes}
    assert report.status == "ok", report.error
    assert nodes["site-a"].status == nodes["site-b"].status == "used"
    assert nodes["site-c"].status == "rejected"
    assert any("non-finite" in r for r in nodes["site-c"].reasons), nodes["site-c"].reasons
    assert report.n_train_images == 8  # a and b, not c
    for name in nodes:
        assert 0 < nodes[name].metrics["n_slices"] <= 6
        assert nodes[name].metrics["held_out"] == 1.0
    assert report.bytes_up > 2 * 30_000 and report.bytes_down > 0 and not report.missing
    assert (out / "report.html").exists() and (out / "model.safetensors").exists()
    assert json.loads((out / "report.json").read_text())["rejected"]["site-c"]

    # What reached the server: packages (checked against every real slice of the site) and
    # aggregate metrics; nothing else.
    images = _received_images(out)
    assert len(images) == 6  # hq + lq of three packages
    for folder in (out / "received").iterdir():
        if folder.name.startswith("evaluate"):
            metrics = json.loads((folder / f"{P.METRICS}.json").read_text())
            assert set(metrics) <= set(P.EVAL_METRICS)
    real = []
    for site in "abc":
        settings = NodeSettings(salt_file=site_data["salt"])
        for s in load_patients(site_data[f"{site}/patients"],
                               PreprocessConfig.model_validate({"size": 32}), settings):
            real.append(s.images.numpy())
    real_all = np.concatenate(real)
    for where, arr in images.items():
        finite = np.nan_to_num(arr)
        assert ncc_max(finite, real_all) < 0.95, f"{where} nearly equals a real slice"


@pytest.mark.slow
def test_a_node_killed_mid_run_is_named_missing_and_the_run_finishes(
    superlink: Link, site_data: dict[str, Path], tmp_path: Path,
) -> None:
    _start(superlink, ["a", "b"], site_data)
    cfg = _config(["site-a", "site-b"], timeouts={"wait_for_nodes_s": 60, "collect_s": 180,
                                                  "evaluate_s": 60})
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = _run(superlink, cfg, tmp_path / "run")
        except Exception as exc:  # surfaced below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert superlink.procs.wait_log("supernode-b", "Sent successfully", 240), \
            superlink.procs.log("supernode-b")
        superlink.procs.track()
        superlink.procs.stop("supernode-b", grace=2.0, sig=9)  # killed after its package left
    finally:
        thread.join(timeout=540)
    assert "error" not in result, result.get("error")
    report: RunReport = result["report"]
    nodes = {n.name: n for n in report.nodes}
    assert report.status == "ok", report.error
    assert nodes["site-b"].status == "used" and nodes["site-b"].missing_in == ["evaluate"]
    assert report.missing == ["site-b"]
    assert nodes["site-a"].metrics["n_slices"] > 0 and "psnr" not in nodes["site-b"].metrics


@pytest.mark.slow
def test_an_unregistered_key_and_a_missing_ca_certificate_are_refused(
    superlink: Link, site_data: dict[str, Path],
) -> None:
    rogue = superlink.supernode("rogue", _node("a", site_data), max_retries=1)
    no_ca = superlink.supernode("no-ca", _node("b", site_data), key="b", ca=False,
                                max_retries=1)
    for name in (rogue, no_ca):
        proc = superlink.procs.popen[name]
        proc.wait(timeout=120)
        assert proc.returncode != 0
    assert "Failed to activate SuperNode" in superlink.procs.log(rogue)
    assert "CERTIFICATE_VERIFY_FAILED" in superlink.procs.log(no_ca)
    listed = superlink.cli("supernode", "list", "medidd", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    nodes = next(v for v in json.loads(listed.stdout).values() if isinstance(v, list))
    assert len(nodes) == 3 and {n["status"] for n in nodes} == {"registered"}  # none online
