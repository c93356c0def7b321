"""The privacy audit on real CT patients: PHI, memorisation, membership inference, verdict,
manifest record, gate and the ``medidd-node audit`` command on a real DICOM tree."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from hospital_node.audit_cli import audit
from medidd.degrade import build_degradation
from medidd.distill.config import DistillConfig
from medidd.distill.run import distill_site
from medidd.io.sample_data import COHORT_V1, make_sample_patients
from medidd.package import Gate, audit_gate, read_package, write_package
from medidd.preprocess.cohort import prepare_patients
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.preprocess.slices import SliceSet
from medidd.privacy.audit import AuditError, record_audit, run_audit
from medidd.privacy.membership import attack_metrics, eval_set
from medidd.privacy.policy import AuditPolicy
from medidd.report.audit import JSON_KEYS, write_report

SIZE = 32
SALT = b"0" * 32
SPEC = {"kind": "ct_lowdose", "dose": 0.25}
#: CPU-sized models: the audit's machinery, not its statistical power, is under test here.
FAST = {
    "target": {"net": {"name": "dncnn", "width": 8, "depth": 3}, "steps": 30, "batch_size": 8,
               "patch_size": 24, "loss": "l2"},
    "control": {"net": {"name": "dncnn", "width": 8, "depth": 3}, "steps": 30, "batch_size": 8,
                "patch_size": None, "loss": "l2", "redraw_lq": False},
    "n_reference_models": 2, "max_eval_slices_per_patient": 12, "control_slices_per_patient": 4,
    "n_boot": 50, "reference_slices_per_patient": 12,
}


@pytest.fixture(scope="module")
def dicom_tree(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "dicom"
    make_sample_patients(real_samples, out, modality="CT", names=COHORT_V1)
    return out


@pytest.fixture(scope="module")
def site(dicom_tree: Path) -> list[SliceSet]:
    """The 4 real CT patients at 32 px (abdomen, chest CTA, lung1, lung2)."""
    return list(prepare_patients(dicom_tree, salt=SALT, cfg=PreprocessConfig(size=SIZE)).slices)


@pytest.fixture(scope="module")
def members(site: list[SliceSet]) -> list[SliceSet]:
    return [site[0], site[2]]


@pytest.fixture(scope="module")
def atlas_pkg(members: list[SliceSet], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prior_only package with the atlas prior: nothing of any local patient."""
    cfg = DistillConfig.model_validate({"method": "prior_only", "prior": {"kind": "atlas"},
                                        "ipc": 2, "device": "cpu", "degradation": SPEC,
                                        "preprocess": {"size": SIZE}})
    out = tmp_path_factory.mktemp("pkgs") / "atlas"
    return distill_site(members, cfg, out).package


@pytest.fixture(scope="module")
def bare_pkg(members: list[SliceSet], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The atlas package distilled without held-out slabs or canaries (as before issue 14)."""
    cfg = DistillConfig.model_validate({"method": "prior_only", "prior": {"kind": "atlas"},
                                        "ipc": 2, "device": "cpu", "degradation": SPEC,
                                        "preprocess": {"size": SIZE},
                                        "audit": {"holdout": "none", "canaries": 0}})
    out = tmp_path_factory.mktemp("pkgs") / "bare"
    return distill_site(members, cfg, out).package


def _planted(atlas_pkg: Path, members: list[SliceSet], out: Path) -> Path:
    """The atlas package with its first image replaced by a real slice of a member."""
    pkg = read_package(atlas_pkg)
    m = pkg.manifest
    hq = pkg.hq.clone()
    hq[0] = members[0].images[len(members[0]) // 2]
    return write_package(out, hq, pkg.lq, task=m.task, modality=m.modality,
                         degradation=m.degradation, window=tuple(m.window),
                         patients=[(p.key, p.n_images) for p in m.patients], ipc=m.ipc,
                         method="random", seed=0, method_config={"planted": True})


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.fixture(scope="module")
def full_audit(atlas_pkg: Path, site: list[SliceSet]):  # type: ignore[no-untyped-def]
    """One complete audit (PHI, memorisation, LiRA with references, positive control)."""
    stages: list[str] = []
    report = run_audit(atlas_pkg, site, None, AuditPolicy.model_validate(FAST),
                       progress=lambda s, d, n: stages.append(s))
    return report, stages


def test_atlas_package_passes_on_its_canaries(atlas_pkg: Path, site: list[SliceSet]) -> None:
    """Without membership inference the canary tests decide: the control (the slices the
    distiller saw) carries the included codes, the atlas package does not."""
    report = run_audit(atlas_pkg, site, None, AuditPolicy(run_mia=False))
    ncc = report.memorisation["ncc"]
    assert ncc["n_above_near_copy"] == 0
    assert ncc["max"] < 0.95
    tests = report.canary_results()
    assert set(tests) == {"package_images", "control_images"}
    assert 32 <= report.canary_count <= 64  # auto: at most half of the member slices
    control, package = tests["control_images"], tests["package_images"]
    assert control.eps_lower_bound >= 1.0 and control.auc > 0.95
    assert package.eps_lower_bound == 0.0
    assert report.verdict == "passed", report.reasons
    assert any("membership inference not run" in n for n in report.notes)
    assert report.matching["kind"] == "held-out slabs" and report.matching["matched"]


def test_package_of_seen_slices_fails_on_its_canaries(atlas_pkg: Path, members: list[SliceSet],
                                                      site: list[SliceSet],
                                                      tmp_path: Path) -> None:
    """A package of real member slices as the distiller saw them (the first 24 of each
    patient: about a third of the canaries) ships the included codes: detected, failed."""
    from medidd.privacy.canaries import prepare_site

    m = read_package(atlas_pkg).manifest
    cfg = DistillConfig.model_validate(m.method_config)
    prep = prepare_site(members, cfg.audit, m.seed)
    hq = torch.cat([s.images[:24] for s in prep.distill])
    pkg = write_package(tmp_path / "seen", hq, hq, task=m.task, modality=m.modality,
                        degradation=m.degradation, window=tuple(m.window),
                        patients=[(s.patient_key, 24) for s in prep.distill], ipc=24,
                        method="random", seed=m.seed, method_config=m.method_config)
    report = run_audit(pkg, site, None, AuditPolicy(run_mia=False))
    assert report.canary_results()["package_images"].eps_lower_bound > 0
    assert report.verdict == "failed"
    assert any(r.startswith("canaries in the package's images") for r in report.reasons)


def test_too_many_canaries_is_refused_before_any_work(members: list[SliceSet],
                                                      tmp_path: Path) -> None:
    from medidd.distill.run import DistillError

    cfg = DistillConfig.model_validate({"method": "prior_only", "device": "cpu",
                                        "degradation": SPEC, "preprocess": {"size": SIZE},
                                        "audit": {"canaries": 10_000}})
    with pytest.raises(DistillError, match=r"audit.canaries=10000 is more than the site allows"):
        distill_site(members, cfg, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_package_without_canaries_or_nonmembers_is_inconclusive(
        bare_pkg: Path, members: list[SliceSet]) -> None:
    report = run_audit(bare_pkg, members, None, AuditPolicy(run_mia=False))
    assert report.verdict == "inconclusive"
    assert any("membership inference not run" in r for r in report.reasons)


def test_planted_real_slice_fails(atlas_pkg: Path, members: list[SliceSet], site: list[SliceSet],
                                  tmp_path: Path) -> None:
    planted = _planted(atlas_pkg, members, tmp_path / "planted")
    report = run_audit(planted, site, None, AuditPolicy(run_mia=False))
    assert report.verdict == "failed"
    ncc = report.memorisation["ncc"]
    assert ncc["n_above_near_copy"] == 1 and ncc["per_image"][0] > 0.999
    assert ncc["nearest_patient"][0] == members[0].patient_key
    assert report.memorisation["ssim"]["per_image"][0] > 0.999
    assert any("near-copies" in r for r in report.reasons)
    assert report.pairs is not None and torch.equal(report.pairs[1][0], report.pairs[0][0])


def test_dicom_in_package_fails_phi(atlas_pkg: Path, site: list[SliceSet], dicom_corpus: Path,
                                    tmp_path: Path) -> None:
    pkg = _copy(atlas_pkg, tmp_path / "pkg")
    dcm = next(p for p in sorted(dicom_corpus.rglob("*")) if p.is_file() and
               p.read_bytes()[128:132] == b"DICM")
    shutil.copy(dcm, pkg / "extra.bin")
    report = run_audit(pkg, site, None, AuditPolicy(run_mia=False))
    assert report.verdict == "failed"
    assert any(r.startswith("PHI: extra.bin") and "DICOM" in r for r in report.reasons)


def test_no_heldout_patient_is_inconclusive(bare_pkg: Path, members: list[SliceSet]) -> None:
    """No canaries, no held-out slabs, no held-out patient: nothing can say yes or no."""
    strict = run_audit(bare_pkg, members, None, AuditPolicy())
    assert strict.verdict == "inconclusive" and not strict.passed
    assert strict.membership is not None and strict.membership.status == "not_run"
    loose = run_audit(bare_pkg, members, None, AuditPolicy(allow_inconclusive=True))
    assert loose.verdict == "passed"
    assert any("allow_inconclusive" in n for n in loose.notes)


def test_wrong_salt_is_a_usage_error(atlas_pkg: Path, site: list[SliceSet]) -> None:
    # another salt gives other pseudonymous keys: nothing matches the manifest
    rekeyed = [SliceSet(s.images, s.z, "p-" + "f" * 7 + str(i), s.modality, s.window)
               for i, s in enumerate(site)]
    with pytest.raises(AuditError, match="same site salt"):
        run_audit(atlas_pkg, rekeyed, None, AuditPolicy(run_mia=False))


def test_full_audit_runs_every_part(full_audit) -> None:  # type: ignore[no-untyped-def]
    report, stages = full_audit
    m = report.membership
    assert m is not None and m.status == "run"
    # non-members: the held-out slabs of the 2 member patients (matched), not other patients
    assert m.counts["member_patients"] == 2 and m.counts["nonmember_patients"] == 2
    assert report.matching["matched"]
    assert set(m.target.attacks) == {"loss", "lira", "rmia", "loss_cal"} == set(
        m.control.attacks)
    assert m.canary_target is not None and m.canary_control is not None
    assert set(report.canary_results()) == {"package_images", "package_model",
                                            "control_images", "control_model"}
    assert m.target.n_references == 2
    assert {"package model", "package references", "control model",
            "control references", "memorisation"} <= set(stages)
    assert report.verdict in ("passed", "failed", "inconclusive")
    assert 0.0 <= report.gate["gate_auc"] <= 1.0


def test_report_and_manifest_record(full_audit, atlas_pkg: Path,  # type: ignore[no-untyped-def]
                                    tmp_path: Path) -> None:
    report, _ = full_audit
    pkg = _copy(atlas_pkg, tmp_path / "pkg")
    files = write_report(report, tmp_path / "report")
    doc = json.loads(files.json.read_text())
    assert set(JSON_KEYS) == set(doc)
    assert doc["verdict"] == report.verdict
    assert hashlib.sha256(files.json.read_bytes()).hexdigest() == files.json_sha256
    html = files.html.read_text()
    assert html.count("data:image/png;base64,") >= 6  # 2 ROC, 2 histograms, memorisation, pairs
    assert "p-" not in json.dumps(doc["package"])  # no patient key in the package summary
    manifest = record_audit(pkg, report, files.json_sha256)
    again = read_package(pkg).manifest
    assert again == manifest
    assert again.audit is not None and again.audit.report_sha256 == files.json_sha256
    assert again.audit.status == ("passed" if report.passed else "failed")
    assert again.audit.summary["mia_auc_control"] == pytest.approx(
        report.membership.control.attacks["loss"].result.auc)
    assert audit_gate(pkg, accept_override=True).ok is report.passed


def test_gate(atlas_pkg: Path, tmp_path: Path) -> None:
    from medidd.federation.node import record_audit_override
    from medidd.package import update_manifest

    pkg = _copy(atlas_pkg, tmp_path / "pkg")
    gate = audit_gate(pkg, accept_override=True)
    assert not gate.ok and "no privacy audit" in gate.reason
    update_manifest(pkg, audit={"status": "failed"})
    assert not audit_gate(pkg, accept_override=True).ok
    record_audit_override(pkg, "privacy officer", "accepted for the demo")
    gate = audit_gate(pkg, accept_override=True)
    assert gate.ok and gate.override == "privacy officer: accepted for the demo"
    assert not audit_gate(pkg, accept_override=False).ok
    update_manifest(pkg, audit={"status": "passed"})
    assert audit_gate(pkg, accept_override=True) == Gate(True, "audit passed")


class NearestNeighbour(nn.Module):
    """A model that memorises its training pairs perfectly: it returns the stored HQ slice
    whose stored LQ input is closest to the input (a 1-nearest-neighbour regressor)."""

    def __init__(self, lq: torch.Tensor, hq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("lq", lq.flatten(1))
        self.register_buffer("hq", hq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hq[torch.cdist(x.flatten(1), self.lq).argmin(dim=1)]


def _interleaved(sets: list[SliceSet], n: int) -> tuple[list[SliceSet], list[SliceSet]]:
    """Members = even slices, non-members = odd slices of the same patients (no patient
    effect: only memorisation can separate them)."""
    def part(s: SliceSet, offset: int) -> SliceSet:
        idx = torch.arange(offset, min(len(s), 2 * n), 2)
        return SliceSet(s.images[idx], s.z[idx], s.patient_key, s.modality, s.window)

    return [part(s, 0) for s in sets], [part(s, 1) for s in sets]


def test_memorising_model_is_detected(site: list[SliceSet]) -> None:
    mem, non = _interleaved(site[2:], 16)
    op = build_degradation(SPEC, site[0].window, fast=True)
    ev = eval_set(mem, seed=5, limit=None, degrade=op)
    metrics = attack_metrics(NearestNeighbour(ev.lq, ev.hq), mem, non, SPEC, seed=5)
    assert metrics["auc"] > 0.95
    assert metrics["tpr_at_1fpr"] > 0.5


def test_untrained_model_is_not_detected(site: list[SliceSet]) -> None:
    mem, non = _interleaved(site[2:], 16)
    torch.manual_seed(0)
    untrained = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3,
                                                                                 padding=1))
    metrics = attack_metrics(untrained, mem, non, SPEC, seed=5, n_boot=100)
    assert abs(metrics["auc"] - 0.5) < 0.2
    assert metrics["auc_low"] < 0.5 < metrics["auc_high"]


def test_cli_fails_on_planted_copy(dicom_tree: Path, atlas_pkg: Path, members: list[SliceSet],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIDD_HOME", str(tmp_path / "home"))
    salt = tmp_path / "salt"
    salt.write_bytes(SALT)
    planted = _planted(atlas_pkg, members, tmp_path / "planted")
    config = tmp_path / "audit.yaml"
    config.write_text(json.dumps(FAST))  # JSON is YAML
    app = typer.Typer()
    app.command()(audit)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    args = ["audit", "--package", str(planted), "--patients", str(dicom_tree), "--config",
            str(config), "--salt-file", str(salt), "--json", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    assert out["verdict"] == "failed" and out["audit_gate"]["ok"] is False
    # the gate's refusal, as medidd-node serve will give it, with the CLI's own options
    assert "audit status 'failed'" in out["audit_gate"]["reason"]
    assert "--override-audit-by" in out["audit_gate"]["reason"]
    report = tmp_path / "planted.audit" / "report.json"
    assert json.loads(report.read_text())["summary"]["n_near_copies"] == 1.0
    assert read_package(planted).manifest.audit.status == "failed"
    bad = CliRunner().invoke(app, [*args[:4], str(tmp_path / "nowhere"), *args[5:]])
    assert bad.exit_code == 2


def test_memorising_preset_runs_end_to_end(atlas_pkg: Path, site: list[SliceSet]) -> None:
    """configs/audit_memorising.yaml through run_audit, its budget shrunk to test size: the
    package model and the control share the recipe, only the loss attack runs and gates."""
    from medidd.config import load_config

    preset = load_config(AuditPolicy, Path(__file__).resolve().parents[2]
                         / "configs" / "audit_memorising.yaml")
    small = {"steps": 20, "device": "cpu",
             "net": preset.control.net.model_copy(update={"width": 8, "depth": 2})}
    policy = preset.model_copy(update={
        "target": preset.target.model_copy(update=small),
        "control": preset.control.model_copy(update=small),
        "max_eval_slices_per_patient": 8, "control_slices_per_patient": 4, "n_boot": 20,
        "reference_slices_per_patient": 8})
    stages: list[str] = []
    report = run_audit(atlas_pkg, site, None, policy, progress=lambda s, d, n: stages.append(s))
    m = report.membership
    assert m is not None and m.status == "run" and m.target is not None and m.control is not None
    assert set(m.target.attacks) == {"loss"} == set(m.control.attacks)
    assert "package references" not in stages and "control references" not in stages
    assert report.gate["control_auc"] == m.control.attacks["loss"].result.auc


def test_holdout_inside_the_package_is_refused_by_name(atlas_pkg: Path, site: list[SliceSet],
                                                       members: list[SliceSet]) -> None:
    with pytest.raises(AuditError, match=members[0].patient_key):
        run_audit(atlas_pkg, site, [members[0]], AuditPolicy(run_mia=False))


def test_non_members_of_another_region_are_not_matched(site: list[SliceSet],
                                                       tmp_path: Path) -> None:
    """A chest package (lung1, no held-out slabs) against an abdomen: reported as not matched,
    and without canaries the verdict cannot rest on it; a chest non-member is matched."""
    cfg = DistillConfig.model_validate({"method": "prior_only", "prior": {"kind": "atlas"},
                                        "ipc": 2, "device": "cpu", "degradation": SPEC,
                                        "preprocess": {"size": SIZE},
                                        "audit": {"holdout": "none", "canaries": 0}})
    pkg = distill_site([site[2]], cfg, tmp_path / "chest").package
    policy = AuditPolicy.model_validate({**FAST, "n_reference_models": 0,
                                         "gate_attacks": ["loss"]})
    abdomen = run_audit(pkg, [site[2]], [site[0]], policy)
    assert abdomen.matching["kind"] == "held-out patients" and not abdomen.matching["matched"]
    assert "abdomen" in abdomen.matching["text"]
    assert abdomen.verdict != "passed"
    assert any("not matched" in r for r in abdomen.reasons)
    chest = run_audit(pkg, [site[2]], [site[3]], AuditPolicy(run_mia=False))
    assert chest.matching["matched"], chest.matching
