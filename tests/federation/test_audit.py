"""Federated membership audit: the node attacks a model with its own members (the package's
patients, matched by pseudonymous key) and held-out patients on the real sample volumes, and
replies aggregates only; the aggregator's checks and the report section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, RecordDict

from aggregator.run import train_simulation
from aggregator.wire import refusal
from medidd.federation import NodeSettings, check_audit_metrics
from medidd.federation import protocol as P
from medidd.federation.local import load_patients
from medidd.federation.report import RunLedger, read_report, write_report
from medidd.preprocess.pipeline import PreprocessConfig
from tests.federation.conftest import SPEC, MakePackage
from tests.federation.test_apps import NET, _weights, call
from tests.federation.test_simulation import _config

PREPROCESS = {"size": 32, "max_slices_per_volume": 6}


@pytest.fixture(scope="module")
def site(patients_dirs: dict[str, Path], real_samples: Path,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Node config of a site whose patient (chest CT) is in its package and whose other
    patient (abdomen CT) is held out; ``key``: the pseudonymous key of the member."""
    root = tmp_path_factory.mktemp("audit-site")
    holdout = root / "holdout" / "patient2"
    holdout.mkdir(parents=True)
    (holdout / "abdomen_3mm.nii.gz").symlink_to(real_samples / "ct" / "abdomen_3mm.nii.gz")
    node = {"name": "site-a", "patients": str(patients_dirs["a"]),
            "salt-file": str(root / "salt"), "cache-dir": str(root / "cache")}
    sets = load_patients(patients_dirs["a"], PreprocessConfig.model_validate(PREPROCESS),
                         NodeSettings.from_node_config(node))
    return {"node": node, "key": sets[0].patient_key, "holdout": str(holdout.parent)}


def _content(strategy: str = "distill") -> RecordDict:
    settings = P.AuditSettings(strategy=strategy, net=NET, degradation=SPEC,
                               preprocess=PreprocessConfig.model_validate(PREPROCESS), seed=0,
                               n_boot=50, max_slices_per_patient=6)
    return RecordDict({P.MODEL: _weights(),
                       P.SETTINGS: ConfigRecord({P.SETTINGS_JSON: settings.model_dump_json()})})


def test_audit_replies_only_allowed_in_range_aggregates(
    site: dict[str, Any], make_package: MakePackage,
) -> None:
    pkg = make_package(patients=[(site["key"], 4)], ipc=4, method_config={"ipc": 4})
    node = site["node"] | {"package": str(pkg), "holdout": site["holdout"]}
    reply = call(P.AUDIT, node, _content())
    assert refusal(reply) is None, refusal(reply)
    assert not reply.content.array_records  # no image, no score array back
    metrics: dict[str, Any] = dict(reply.content.metric_records[P.METRICS])
    assert set(metrics) == set(P.AUDIT_METRICS)
    clean, problems = check_audit_metrics(metrics)
    assert problems == [] and clean == metrics
    assert 0 <= metrics["auc_low"] <= metrics["auc"] <= metrics["auc_high"] <= 1
    assert metrics["n_members"] == metrics["n_nonmembers"] == 6
    assert metrics["n_member_patients"] == metrics["n_nonmember_patients"] == 1
    assert metrics["fpr_floor"] == pytest.approx(1 / 6)


def test_a_node_without_held_out_patients_replies_a_reason(
    site: dict[str, Any], make_package: MakePackage,
) -> None:
    # its only patient is a member
    pkg = make_package(patients=[(site["key"], 4)], ipc=4, method_config={"ipc": 4})
    reply = call(P.AUDIT, site["node"] | {"package": str(pkg)}, _content())
    assert "no held-out patients" in (refusal(reply) or "")
    assert P.METRICS not in reply.content.metric_records


def test_a_package_of_other_patients_has_no_members_at_the_node(
    site: dict[str, Any], make_package: MakePackage,
) -> None:
    node = site["node"] | {"package": str(make_package()), "holdout": site["holdout"]}
    assert "none of the package's 2 patients" in (refusal(call(P.AUDIT, node, _content()))
                                                   or "")


def test_the_aggregator_drops_foreign_keys_and_out_of_range_values() -> None:
    good = {"auc": 0.6, "auc_low": 0.5, "auc_high": 0.7, "n_members": 6.0}
    assert check_audit_metrics(good) == (good, [])
    _, problems = check_audit_metrics(good | {"loss_slice_3": 0.01, "auc": 1.5})
    assert problems == ["auc=1.5 out of range [0.0, 1.0]", "unexpected key loss_slice_3"]


def test_the_report_has_a_per_node_audit_section_and_a_pooled_line(tmp_path: Path) -> None:
    ledger = RunLedger("distill", "denoise", ["a", "b", "c"])
    for node_id, name in enumerate("abc"):
        ledger.seen(node_id, name)
        ledger.set_status(node_id, "used")
    ledger.set_audit(0, {"auc": 0.5, "auc_low": 0.4, "auc_high": 0.6, "tpr_at_1fpr": 0.0,
                         "n_members": 10.0, "n_nonmembers": 10.0})
    ledger.set_audit(1, {"auc": 0.8, "auc_low": 0.7, "auc_high": 0.9, "tpr_at_1fpr": 0.2,
                         "n_members": 10.0, "n_nonmembers": 30.0})
    ledger.set_audit(2, note="node c has no held-out patients (non-members) to audit with")
    write_report(ledger.finish(1.0), tmp_path)
    report = read_report(tmp_path)
    by_name = {n.name: n for n in report.nodes}
    assert by_name["a"].audit["auc"] == 0.5 and by_name["c"].audit == {}
    assert "no held-out patients" in (by_name["c"].audit_note or "")
    assert report.audit is not None
    assert report.audit["auc"] == pytest.approx((0.5 * 100 + 0.8 * 300) / 400)
    assert report.audit["auc_max"] == 0.8 and report.audit["n_nodes"] == 2
    page = (tmp_path / "report.html").read_text()
    assert "Membership audit of the trained model" in page and "Pooled: auc 0.725" in page
    assert "no held-out patients" in page


def test_a_run_without_audit_has_no_audit_section(tmp_path: Path) -> None:
    write_report(RunLedger("distill", "denoise", ["a"]).finish(1.0), tmp_path)
    assert read_report(tmp_path).audit is None
    assert "Membership audit" not in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_a_simulated_run_with_audit_reports_each_node_and_the_pooled_line(
    site: dict[str, Any], make_package: MakePackage, tmp_path: Path,
) -> None:
    pkg = make_package(patients=[(site["key"], 4)], ipc=4, method_config={"ipc": 4})
    base = NodeSettings.from_node_config(site["node"] | {"package": str(pkg)})
    nodes = [base.model_copy(update={"name": "site-0", "holdout": Path(site["holdout"])}),
             base.model_copy(update={"name": "site-1"})]  # no held-out patient
    cfg = _config(nodes, audit={"enabled": True, "n_boot": 20, "max_slices_per_patient": 6})
    report = train_simulation(cfg, tmp_path / "out")
    assert report.status == "ok", report.error
    by_name = {n.name: n for n in report.nodes}
    assert set(by_name["site-0"].audit) == set(P.AUDIT_METRICS)
    assert "no held-out patients" in (by_name["site-1"].audit_note or "")
    assert report.audit is not None and report.audit["n_nodes"] == 1
    assert report.audit["auc"] == by_name["site-0"].audit["auc"]
    received = tmp_path / "out" / "received"
    audit_replies = sorted(received.glob("audit-*/metrics.json"))
    assert len(audit_replies) == 1  # the node that could not audit sent no metrics
    assert set(json.loads(audit_replies[0].read_text())) == set(P.AUDIT_METRICS)
    assert not list(received.glob("audit-*/**/*.npy"))
