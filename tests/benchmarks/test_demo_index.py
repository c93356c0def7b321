"""The demo's closing page and override text: every report linked, each verdict and override
shown as the audit gave it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.demo import audit_verdict, override_text, write_index
from medidd.package.manifest import AuditInfo


def test_index_links_every_report_with_verdicts(tmp_path: Path) -> None:
    for run in ("distill", "fedavg"):
        (tmp_path / f"report-{run}").mkdir()
        for name in ("report.html", "model.safetensors", "metadata.json"):
            (tmp_path / f"report-{run}" / name).write_text("x")
    (tmp_path / "hospital-a" / "audit").mkdir(parents=True)
    (tmp_path / "hospital-a" / "audit" / "report.html").write_text("x")
    (tmp_path / "hospital-a" / "audit" / "report.json").write_text(json.dumps(
        {"verdict": "failed", "reasons": ["gate AUC 0.73 >= 0.65 (membership detected)"]}))
    verdict, reason = audit_verdict(tmp_path / "hospital-a" / "audit")
    text = override_text(verdict, reason)
    assert text == "demo override of audit failed: gate AUC 0.73 >= 0.65 (membership detected)"
    audits = {"hospital-a": AuditInfo.model_validate(
        {"status": "failed", "override": {"by": "make-demo", "reason": text}}),
        "hospital-b": AuditInfo.model_validate({"status": "passed"})}
    results = {run: {"metrics": {"psnr": 33.4, "psnr_lq": 28.3}, "rounds": 1,
                     "bytes_up": 535_000, "bytes_down": 1000} for run in ("distill", "fedavg")}
    page = write_index(tmp_path, results, audits).read_text()
    for href in ("report-distill/report.html", "report-fedavg/report.html",
                 "report-distill/model.safetensors", "report-distill/metadata.json",
                 "hospital-a/audit/report.html"):
        assert f"href='{href}'" in page
    assert "gate AUC 0.73 &gt;= 0.65" in page and "passed" in page and "33.40 dB" in page
    assert "hospital-b/audit/report.html" not in page  # not written: not linked
    assert len(override_text("failed", "x" * 300)) == 120
