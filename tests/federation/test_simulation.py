"""End to end in Flower's simulation runtime (a local ``flower-superlink --simulation`` and
``flwr run``, Ray backend): three hospitals, one of which sends a tampered package; then the
FedAvg baseline on the same nodes. No process of the run outlives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aggregator.run import train_simulation
from medidd.federation import FederationConfig, NodeSettings
from medidd.federation import protocol as P
from medidd.model import load_model
from tests.federation.conftest import SPEC, MakePackage

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _config(nodes: list[NodeSettings], **extra: Any) -> FederationConfig:
    data: dict[str, Any] = {
        "task": "denoise", "degradation": SPEC,
        "preprocess": {"size": 32, "max_slices_per_volume": 6},
        "train": {"net": {"name": "dncnn", "width": 4, "depth": 3}, "steps": 20,
                  "batch_size": 4, "patch_size": 16},
        "fedavg": {"rounds": 2, "local_steps": 5},
        "record_received": True, "timeouts": {"wait_for_nodes_s": 5},
        "nodes": [n.model_dump() for n in nodes],
    }
    data.update(extra)
    return FederationConfig.model_validate(data)


def _nodes(make_package: MakePackage, patients: dict[str, Path], tmp: Path) -> list[NodeSettings]:
    return [NodeSettings(name=f"site-{i}", package=make_package(), patients=patients[site],
                         salt_file=tmp / "salt", cache_dir=tmp / "cache")
            for i, site in enumerate("aba")]


def test_distill_run_uses_good_packages_rejects_the_tampered_one_and_scores_every_node(
    make_package: MakePackage, patients_dirs: dict[str, Path], tmp_path: Path,
) -> None:
    nodes = _nodes(make_package, patients_dirs, tmp_path)
    # partition 2 tampers with its package after the node's own checks
    report = train_simulation(_config(nodes), tmp_path / "out",
                              client_app="tests.federation.sim_evil_client:app",
                              extra_env={"PYTHONPATH": str(ROOT)})
    by_name = {n.name: n for n in report.nodes}
    assert report.status == "ok", report.error
    assert by_name["site-0"].status == by_name["site-1"].status == "used"
    assert by_name["site-2"].status == "rejected"
    assert any("non-finite" in r for r in by_name["site-2"].reasons)
    assert report.n_train_images == 8 and report.lq_source == "redrawn"
    assert all(n.metrics["n_slices"] == 6 for n in report.nodes)
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<tr>") >= 4
    # the gallery of received pairs (accepted packages only) and the training loss are drawn
    gallery = html.split("Distilled pairs received", 1)[1]
    assert "data:image/png" in gallery and "site-2" not in gallery.split("<h2>", 1)[0]
    assert len(report.loss) > 0
    received = {p.parent.name for p in (tmp_path / "out" / "received").rglob("*.npy")}
    assert received == {P.PACKAGE}  # arrays reached the server only inside packages
    # the model is saved with what applying it needs, taken from the packages' manifests
    _, card = load_model(tmp_path / "out", task="denoise", modality="CT")
    assert (card.strategy, card.window, card.degradation) == ("distill", (-1000.0, 1000.0), SPEC)
    assert card.image_size == 32 and card.network.width == 4


def test_fedavg_baseline_reports_rounds_bytes_and_scores(
    make_package: MakePackage, patients_dirs: dict[str, Path], tmp_path: Path,
) -> None:
    nodes = _nodes(make_package, patients_dirs, tmp_path)
    report = train_simulation(_config(nodes, strategy="fedavg"), tmp_path / "out")
    assert report.status == "ok", report.error
    assert report.rounds == 2 and all(n.status == "trained" for n in report.nodes)
    # 2 rounds down and up, plus the evaluate round down: every byte is weights or settings.
    assert report.bytes_down > report.bytes_up > 0
    assert "psnr" in report.metrics
    # PSNR per round: round 1 scored by its own evaluate exchange, round 2 by the final one
    assert [m["round"] for m in report.round_metrics] == [1.0, 2.0]
    assert report.round_metrics[-1]["psnr"] == pytest.approx(report.metrics["psnr"], abs=1e-9)
    assert "PSNR per FedAvg round" in (tmp_path / "out" / "report.html").read_text()
    _, card = load_model(tmp_path / "out")
    assert card.strategy == "fedavg" and card.modality is None  # generic noise: either modality
