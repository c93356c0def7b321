"""The privacy audit that gates what leaves a hospital: PHI scan, memorisation, membership
inference with a positive control, and a verdict against the site's :class:`AuditPolicy`.

Runs at the site, where the raw data is. Orchestration only: the maths is in
:mod:`medidd.privacy.phi`, :mod:`medidd.privacy.memorisation` and :mod:`medidd.privacy.mia`
(trained models in :mod:`medidd.privacy.membership`).

Verdict (every reason is collected):

- **failed** when the PHI scan finds anything, when a distilled image is a near-copy of a real
  slice (NCC >= ``near_copy_ncc``), above the ideal line with ``require_below_ideal``, or when
  a gate attack reaches an AUC above ``max_mia_auc``;
- otherwise **inconclusive** when membership inference could not run (no held-out patients) or
  the positive control was not detected (AUC below ``min_control_auc``): the attack then proves
  nothing. An inconclusive audit does not pass (``allow_inconclusive`` records it as passed,
  with the reason, for demos);
- otherwise **passed**.

The manifest records ``passed`` or ``failed`` (inconclusive is recorded as failed, with
``summary.inconclusive = 1``) and the sha256 of report.json; the audit gate
(:func:`medidd.package.audit_gate`, the one rule node and aggregator apply) reads it.

Example:
    >>> AuditReport(verdict="passed").summary()
    {'passed': 1.0, 'inconclusive': 0.0, 'phi_findings': 0.0}
"""

from __future__ import annotations

import logging
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import medidd
from medidd.config import config_key
from medidd.degrade import build_degradation
from medidd.package import (
    AuditInfo,
    Manifest,
    Package,
    PackageError,
    read_package,
    update_manifest,
)
from medidd.preprocess.slices import SliceSet
from medidd.prior.region import guess_region
from medidd.privacy.canaries import AuditDataConfig, SitePrep, canary_image_scores, prepare_site
from medidd.privacy.membership import (
    CanaryInputs,
    MembershipResult,
    Progress,
    attack_metrics,
    audit_membership,
)
from medidd.privacy.memorisation import (
    cross_patient_reference,
    memorisation_report,
    ncc_map,
    nearest_real,
    nearest_view,
    normalise_rows,
)
from medidd.privacy.mia.onerun import OneRunResult, one_run_audit
from medidd.privacy.phi import scan_package_dir
from medidd.privacy.policy import AuditPolicy

logger = logging.getLogger(__name__)

VERDICTS = ("passed", "failed", "inconclusive")
REPORT_FORMAT = "medidd-audit/1"

__all__ = ["AuditError", "AuditPolicy", "AuditReport", "attack_metrics", "record_audit",
           "run_audit"]


class AuditError(ValueError):
    """The audit cannot run (wrong salt, image size mismatch...); the message says the fix."""


@dataclass
class AuditReport:
    """Everything the audit found. ``memorisation`` holds the NCC and SSIM reports (JSON-ready),
    ``pairs`` the distilled images and their nearest real slices and ``roles`` each patient's
    part (member, held-out) for the HTML, never JSON."""

    verdict: str
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    policy: AuditPolicy = field(default_factory=AuditPolicy)
    package: dict[str, Any] = field(default_factory=dict)
    phi_findings: list[str] = field(default_factory=list)
    memorisation: dict[str, Any] = field(default_factory=dict)
    membership: MembershipResult | None = None
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    #: pseudonymous patient key -> "member" / "held-out" / "other site patient" (HTML only)
    roles: dict[str, str] = field(default_factory=dict)
    gate: dict[str, float | None] = field(default_factory=dict)
    #: how members and non-members were drawn: kind, matched, a sentence, counts
    matching: dict[str, Any] = field(default_factory=dict)
    #: one-run canary tests on images: "package" and "control" (model ones: ``membership``)
    canaries: dict[str, OneRunResult] = field(default_factory=dict)
    canary_count: int = 0
    seconds: float = 0.0

    def canary_results(self) -> dict[str, OneRunResult]:
        """Every one-run canary test: package/control images and models."""
        out = {f"{k}_images": v for k, v in self.canaries.items()}
        m = self.membership
        if m is not None and m.canary_target is not None:
            out["package_model"] = m.canary_target
        if m is not None and m.canary_control is not None:
            out["control_model"] = m.canary_control
        return out

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def summary(self) -> dict[str, float]:
        """Scalar metrics for the package manifest (finite floats only)."""
        out: dict[str, float] = {"passed": float(self.passed),
                                 "inconclusive": float(self.verdict == "inconclusive" or
                                                       bool(self.gate.get("inconclusive"))),
                                 "phi_findings": float(len(self.phi_findings))}
        for name, metric in (("ncc", "max_nn_ncc"), ("ssim", "max_nn_ssim")):
            rep = self.memorisation.get(name) or {}
            out[metric] = rep.get("max", float("nan"))
            out[f"ideal_{name}"] = rep.get("ideal_line") or float("nan")
        out["n_near_copies"] = float((self.memorisation.get("ncc") or {})
                                     .get("n_above_near_copy", float("nan")))
        m = self.membership
        for who, model in (("", m.target if m else None), ("_control", m.control if m else None)):
            for attack, outcome in (model.attacks.items() if model else []):
                tag = "" if attack == "loss" else f"_{attack}"
                out[f"mia_auc{tag}{who}"] = outcome.result.auc
                out[f"tpr_at_1fpr{tag}{who}"] = outcome.result.tpr_at_1
        tests = self.canary_results()
        for who in ("package", "control"):
            found = [r for k, r in tests.items() if k.startswith(who)]
            if found:
                tag = "" if who == "package" else "_control"
                out[f"eps_lower_bound{tag}"] = max(r.eps_lower_bound for r in found)
                out[f"canary_auc{tag}"] = max(r.auc for r in found)
        for key in ("gate_auc", "control_auc"):
            if self.gate.get(key) is not None:
                out[key] = float(self.gate[key])  # type: ignore[arg-type]
        return {k: float(v) for k, v in out.items() if v == v and abs(v) != float("inf")}

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (report.json): no image, no file name of a patient."""
        return {
            "format": REPORT_FORMAT,
            "software_version": medidd.__version__,
            "verdict": self.verdict,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "package": dict(self.package),
            "policy": self.policy.model_dump(mode="json"),
            "phi": {"findings": list(self.phi_findings)},
            "memorisation": self.memorisation,
            "membership": self.membership.to_dict() if self.membership else None,
            "gate": dict(self.gate),
            "matching": dict(self.matching),
            "canaries": {"count": self.canary_count,
                         "tests": {k: v.to_dict() for k, v in self.canary_results().items()}},
            "summary": self.summary(),
            "seconds": round(self.seconds, 2),
        }


# --------------------------------------------------------------------------- steps


def scan_package(path: Path) -> list[str]:
    """PHI scan of a package folder, or of a .zip's members (extracted to a temporary folder)."""
    path = Path(path)
    if path.is_dir():
        return scan_package_dir(path)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts:
                return [f"{info.filename}: unsafe member path in the zip"]
        zf.extractall(tmp)
        return scan_package_dir(Path(tmp))


def _ncc_shortlist(distilled: torch.Tensor, real: torch.Tensor, k: int, chunk: int = 512
                   ) -> torch.Tensor:
    """(N, k) indices of the ``k`` real slices of highest NCC to each distilled image."""
    d = normalise_rows(distilled)
    best = torch.full((d.shape[0], 0), -2.0)
    index = torch.zeros((d.shape[0], 0), dtype=torch.long)
    patches = distilled.shape[-2:] != real.shape[-2:]
    if patches:
        chunk = min(chunk, 32)
    for start in range(0, real.shape[0], chunk):
        if patches:  # the best window of each slice (patch packages)
            sims = ncc_map(distilled, real[start : start + chunk]).flatten(2).amax(2).T
        else:
            sims = d @ normalise_rows(real[start : start + chunk]).T
        best = torch.cat([best, sims], dim=1)
        index = torch.cat([index, torch.arange(start, start + sims.shape[1]).expand_as(sims)], 1)
        best, order = best.topk(min(k, best.shape[1]), dim=1)
        index = index.gather(1, order)
    return index


def audit_memorisation(distilled: torch.Tensor, real_by_patient: dict[str, torch.Tensor],
                       policy: AuditPolicy) -> tuple[dict[str, Any], torch.Tensor]:
    """NCC report over every real slice, SSIM on an NCC shortlist, both against their ideal
    lines; returns (JSON-ready report, (N, 1, H, W) nearest real slice by NCC of each image)."""
    keys = list(real_by_patient)
    real = torch.cat([real_by_patient[k] for k in keys]).float()
    several = len(keys) >= 2
    ncc_ref = (cross_patient_reference(real_by_patient, "ncc", policy.ideal_quantile)
               if several else float("nan"))
    ncc = memorisation_report(distilled, real_by_patient, policy.near_copy_ncc, "ncc",
                              policy.ideal_quantile, reference=ncc_ref,
                              max_shift=policy.max_shift)
    offsets = dict(zip(keys, torch.tensor([0] + [len(real_by_patient[k]) for k in keys])
                       .cumsum(0).tolist(), strict=False))
    nearest = torch.stack([nearest_view(distilled[j], real[offsets[p] + i])
                           for j, (p, i) in enumerate(zip(ncc["nearest_patient"],
                                                          ncc["nearest_slice"], strict=True))])
    shortlist = _ncc_shortlist(distilled.float(), real, policy.ssim_shortlist)
    ssim_vals = torch.stack([nearest_real(distilled[i : i + 1].float(), real[shortlist[i]],
                                          "ssim", max_shift=policy.max_shift)[0][0]
                             for i in range(distilled.shape[0])])
    ssim_ref = (cross_patient_reference(real_by_patient, "ssim", policy.ideal_quantile,
                                        max_per_patient=policy.reference_slices_per_patient)
                if several else float("nan"))
    ssim = {"metric": "ssim", "n_images": int(ssim_vals.numel()),
            "max": float(ssim_vals.max()), "per_image": [float(v) for v in ssim_vals],
            "shortlist": policy.ssim_shortlist, "ideal_quantile": policy.ideal_quantile,
            "ideal_line": ssim_ref if several else None,
            "n_above_ideal": int((ssim_vals > ssim_ref).sum()) if several else 0}
    if not several:
        ncc["ideal_line"] = None
    return {"ncc": ncc, "ssim": ssim}, nearest


def _gate_value(model: Any, attacks: Sequence[str], statistic: str) -> float | None:
    if model is None:
        return None
    values = []
    for name in attacks:
        if name in model.attacks:
            r = model.attacks[name].result
            values.append(r.auc if statistic == "point" else r.auc_ci[1])
    return max(values) if values else None


def _canary_text(what: str, r: OneRunResult) -> str:
    return (f"{what}: {r.v} of {r.r} inclusion guesses right over {r.m} canaries "
            f"(epsilon lower bound {r.eps_lower_bound:.2f} at {r.confidence:.0%}, "
            f"AUC {r.auc:.2f})")


def decide(report: AuditReport) -> None:
    """Fill ``report.verdict``, ``reasons``, ``notes`` and ``gate`` from the findings.

    With canaries: **failed** when the package's images or its model carry the included
    codes (epsilon lower bound above 0), a near-copy, PHI, or a matched membership attack above
    ``max_mia_auc``; **inconclusive** when the canary control (the member slices as the
    distiller saw them) is not detected; else **passed**. Without canaries (older packages),
    the model-level control decides whether the attacks can say anything."""
    p = report.policy
    failures, inconclusive = list(report.reasons), []
    failures += [f"PHI: {f}" for f in report.phi_findings]
    ncc, ssim = report.memorisation.get("ncc"), report.memorisation.get("ssim")
    if ncc:
        n, total = ncc["n_above_near_copy"], ncc["n_images"]
        if n:
            failures.append(f"memorisation: {n} of {total} distilled images are near-copies of "
                            f"real slices (NCC >= {p.near_copy_ncc:g}; highest {ncc['max']:.3f})")
        for rep in (ncc, ssim):
            if rep and rep["ideal_line"] is not None and rep["n_above_ideal"]:
                text = (f"memorisation: {rep['n_above_ideal']} of {rep['n_images']} images are "
                        f"above the ideal line ({rep['metric'].upper()} {rep['ideal_line']:.3f}, "
                        "closer to a patient than other patients are)")
                (failures if p.require_below_ideal else report.notes).append(text)
    tests = report.canary_results()
    has_canaries = bool(tests)
    for name, what in (("package_images", "canaries in the package's images"),
                       ("package_model", "canaries in the package's downstream model")):
        if name in tests and tests[name].eps_lower_bound > 0:
            failures.append(_canary_text(what, tests[name]) + ": the package carries detail "
                            "of the slices it was distilled from")
    control_eps = max((r.eps_lower_bound for k, r in tests.items() if k.startswith("control")),
                      default=None)
    control_canary_auc = max((r.auc for k, r in tests.items() if k.startswith("control")),
                             default=None)
    if has_canaries and not ((control_eps or 0) >= p.min_control_eps
                             or (control_canary_auc or 0) >= p.min_control_canary_auc):
        inconclusive.append(
            f"canary control not detected (epsilon lower bound {control_eps or 0:.2f}, AUC "
            f"{control_canary_auc or 0:.2f}): the test could not find the codes even in the "
            "slices the distiller saw; raise audit.canaries or audit.canary_amplitude")
    matched = bool(report.matching.get("matched"))
    m = report.membership
    gate_auc = control_auc = None
    if m is None or m.status != "run":
        why = m.reason if m else "membership inference switched off (run_mia: false)"
        (report.notes if has_canaries else inconclusive).append(
            f"membership inference not run: {why}")
    else:
        gate_auc = _gate_value(m.target, p.gate_attacks, p.auc_statistic)
        control_auc = _gate_value(m.control, p.gate_attacks, "point")
        above = gate_auc is not None and gate_auc > p.max_mia_auc
        text = (f"membership inference: AUC {gate_auc:.3f} ({p.auc_statistic}, best of "
                f"{', '.join(p.gate_attacks)}) is above {p.max_mia_auc:g}") if above else ""
        if above and matched:
            failures.append(text)
        elif above:
            report.notes.append(text + ", but members and non-members are not matched (the "
                                "attack may read anatomy, not membership): not a failure")
        if not matched and not has_canaries:
            inconclusive.append("non-members are not matched to the members: re-distil with "
                                "audit.holdout: slabs (the default) or give held-out patients "
                                "of the same body region and protocol")
        shown = "n/a" if control_auc is None else f"{control_auc:.3f}"
        if control_auc is None or control_auc < p.min_control_auc:
            text = (f"model-level control not detected: AUC {shown} on a model trained on the "
                    f"members' raw slices is below {p.min_control_auc:g}")
            if has_canaries:
                report.notes.append(text + " (reported; the canary tests decide)")
            else:
                inconclusive.append(text + ", so the attack cannot show that the package is "
                                    "safe")
    report.gate = {"gate_auc": gate_auc, "control_auc": control_auc,
                   "canary_eps_control": control_eps,
                   "canary_eps_package": max((r.eps_lower_bound for k, r in tests.items()
                                              if k.startswith("package")), default=None),
                   "inconclusive": float(bool(inconclusive))}
    report.reasons = failures + inconclusive
    if failures:
        report.verdict = "failed"
    elif inconclusive and not p.allow_inconclusive:
        report.verdict = "inconclusive"
    else:
        if inconclusive:
            report.notes.append("inconclusive audit accepted by the policy (allow_inconclusive)")
        report.verdict = "passed"


# --------------------------------------------------------------------------- run


def _package_info(pkg: Package) -> dict[str, Any]:
    m = pkg.manifest
    return {"method": m.method, "task": m.task, "modality": m.modality,
            "n_images": m.n_images, "n_patients": len(m.patients), "ipc": m.ipc,
            "image_size": m.image_size, "degradation": dict(m.degradation),
            "dp_enabled": bool(m.dp and m.dp.enabled), "method_config_hash": m.method_config_hash}


def package_patch_size(m: Manifest) -> int | None:
    """The patch side of a patch package (``patches.size`` of its config), else None."""
    cfg = m.method_config or {}
    size = (cfg.get("patches") or {}).get("size") if isinstance(cfg, dict) else None
    return int(size) if size else None


def _check_slices(sets: Sequence[SliceSet], m: Manifest, what: str) -> list[str]:
    if package_patch_size(m) == m.image_size:  # patches of any larger slice
        bad = sorted({s.size for s in sets if s.size < m.image_size})
    else:
        bad = sorted({s.size for s in sets if s.size != m.image_size})
    mods = sorted({s.modality for s in sets if s.modality != m.modality})
    out = []
    if bad:
        out.append(f"{what} slices are {bad} px but the package images are {m.image_size} px; "
                   "preprocess the patients with the package's size (preprocess.size)")
    if mods:
        out.append(f"{what} include {mods} patients but the package is {m.modality}")
    return out


def audit_data_config(m: Manifest) -> AuditDataConfig | None:
    """The ``audit`` section the package was distilled with (None: an older package)."""
    section = (m.method_config or {}).get("audit")
    return None if section is None else AuditDataConfig.model_validate(section)


def _site_split(m: Manifest, members: Sequence[SliceSet], report: AuditReport
                ) -> SitePrep | None:
    """The distillation's split of the members (held-out slabs, canaries), re-derived from
    the manifest; None for an older package or when some package patients are missing."""
    cfg = audit_data_config(m)
    if cfg is None:
        return None
    if len(members) != len(m.patients):
        report.notes.append("held-out slabs and canaries not re-derived: some of the "
                            "package's patients are missing at the site")
        return None
    order = {p.key: i for i, p in enumerate(m.patients)}
    return prepare_site(sorted(members, key=lambda s: order[s.patient_key]), cfg, m.seed)


def _count(n: int, noun: str) -> str:
    """``1 patient``, ``3 patients``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _patient_matching(members: Sequence[SliceSet], nonmembers: Sequence[SliceSet], kind: str
                      ) -> dict[str, Any]:
    """Whether whole non-member patients are of the members' body regions
    (:func:`medidd.prior.region.guess_region`); protocol and scanner are not checked."""
    if not nonmembers:
        return {"kind": "none", "matched": False,
                "text": "no non-members: the package kept no held-out slabs and no held-out "
                        "patient was given"}
    regions = {guess_region(s) for s in members}
    off = sorted({guess_region(s) for s in nonmembers} - regions)
    text = (f"members: {_count(len(members), 'package patient')} "
            f"({', '.join(sorted(regions))}); non-members: {len(nonmembers)} {kind}")
    if off:
        return {"kind": kind, "matched": False,
                "text": text + f", not matched: some are {', '.join(off)} (the attack may read "
                        "anatomy, not membership)"}
    return {"kind": kind, "matched": True,
            "text": text + ", matched by body region (protocol and scanner not checked)"}


def _canary_inputs(prep: SitePrep) -> CanaryInputs:
    index = {s.patient_key: i for i, s in enumerate(prep.members)}
    clean = torch.stack([prep.members[index[c.patient_key]].images[c.index]
                         for c in prep.canaries]).float()
    planted = torch.stack([prep.distill[index[c.patient_key]].images[c.index]
                           for c in prep.canaries]).float()
    return CanaryInputs(prep.canaries, clean, planted)


def run_audit(
    package_path: Path,
    patients: Sequence[SliceSet],
    holdout: Sequence[SliceSet] | None = None,
    policy: AuditPolicy | None = None,
    progress: Progress | None = None,
    holdout_of: Mapping[str, str] | None = None,
) -> AuditReport:
    """Audit the package at ``package_path`` against the site's real slices.

    Args:
        package_path: the package folder (or .zip).
        patients: the site's patients (preprocessed like the package); those whose pseudonymous
            key is in the manifest are the members, the others are held out.
        holdout: held-out patients; when given, they are the non-members (the site's patients
            outside the package are then only used for memorisation).
        policy: thresholds and model settings (default :class:`AuditPolicy`).
        progress: ``(stage, done, total)`` callbacks.
        holdout_of: when ``holdout`` holds held-out *slices of distilled patients* (under their
            own keys): held-out key -> the member patient's key, so LiRA calibrates both sides
            with the same references (:func:`medidd.privacy.membership.attack_model`).

    Raises:
        AuditError: no patient of the package is among ``patients`` (another salt?), or the
            slices do not match the package (size, modality).

    A package that does not read back valid (or holds extra files such as DICOM) is not an
    error: the report is ``failed`` with the PHI findings and every package problem.
    """
    t0 = time.perf_counter()
    policy = policy or AuditPolicy()
    findings = scan_package(Path(package_path)) if policy.phi_scan else []
    try:
        pkg = read_package(Path(package_path))
    except PackageError as exc:
        report = AuditReport(verdict="failed", policy=policy, phi_findings=findings,
                             reasons=[f"package invalid: {p}" for p in exc.problems])
        decide(report)
        report.seconds = time.perf_counter() - t0
        return report
    m = pkg.manifest
    in_package = {p.key for p in m.patients}
    members = [s for s in patients if s.patient_key in in_package]
    others = [s for s in patients if s.patient_key not in in_package]
    holdout = list(holdout or [])
    other_modality = [s for s in holdout if s.modality != m.modality]
    holdout = [s for s in holdout if s.modality == m.modality]
    problems = _check_slices([*patients, *holdout], m, "the site's")
    leaked = sorted({s.patient_key for s in holdout} & in_package)
    if leaked:
        problems.append(f"held-out patients {', '.join(leaked)} are in the package; "
                        f"{config_key('holdout', 'input')} must hold patients that were not "
                        "distilled (remove them from the held-out folder)")
    if not members:
        problems.append(f"none of the package's {len(m.patients)} patients is among the "
                        f"{len(patients)} patients given; were they pseudonymised with the same "
                        f"site salt ({config_key('salt', 'input')}) and is "
                        f"{config_key('patients', 'input')} the folder that was distilled?")
    if problems:
        raise AuditError("cannot audit this package:\n  " + "\n  ".join(problems))
    report = AuditReport(verdict="inconclusive", policy=policy, package=_package_info(pkg))
    if other_modality:
        report.notes.append(f"{len(other_modality)} held-out patients are not "
                            f"{m.modality} ({', '.join(s.modality for s in other_modality)}): "
                            "left out of the audit")
    missing = len(in_package) - len(members)
    if missing:
        report.notes.append(f"{missing} of the package's {len(m.patients)} patients were not "
                            "found at the site; their images are audited for memorisation "
                            "against the slices available")
    report.package["members_found"] = len(members)
    report.phi_findings = findings
    if progress:
        progress("memorisation", 0, 1)
    real = {s.patient_key: s.images for s in [*members, *others, *holdout]}
    report.memorisation, nearest = audit_memorisation(pkg.hq, real, policy)
    report.pairs = (pkg.hq, nearest)
    report.roles = {**{s.patient_key: "other site patient" for s in others},
                    **{s.patient_key: "held-out" for s in holdout},
                    **{s.patient_key: "member" for s in members}}
    if progress:
        progress("memorisation", 1, 1)
    prep = _site_split(m, members, report)
    owner: Mapping[str, str] | None
    if prep is not None and prep.holdout:
        mem_sets, non_sets, owner = prep.members, prep.holdout, prep.holdout_of
        report.matching = {
            "kind": "held-out slabs", "matched": True,
            "text": (f"members: the distilled slabs of {_count(len(prep.members), 'patient')}; "
                     f"non-members: the held-out slabs of {_count(len(prep.holdout), 'patient')}"
                     " (never distilled; a gap between them): same patient, scanner, protocol "
                     "and region, only membership differs")}
    else:
        mem_sets, non_sets, owner = members, holdout or others, holdout_of
        report.matching = _patient_matching(members, non_sets, "held-out patients" if holdout
                                            else "other site patients")
    canaries = None
    if prep is not None and prep.canaries:
        report.canary_count = len(prep.canaries)
        included = [c.included for c in prep.canaries]
        seen = torch.cat([s.images for s in prep.distill])
        for who, images in (("package", pkg.hq), ("control", seen)):
            report.canaries[who] = one_run_audit(
                canary_image_scores(images, prep.canaries,
                                    sliding=images.shape[-1] != seen.shape[-1]), included,
                confidence=policy.canary_confidence)
        canaries = _canary_inputs(prep)
    if policy.run_mia:
        window = tuple(m.window) if m.modality == "CT" else (0.0, 1.0)
        degrade = build_degradation(m.degradation, window,  # type: ignore[arg-type]
                                    fast=policy.fast_degradation)
        ranges = [(p.key, p.start, p.stop) for p in m.patients]
        report.membership = audit_membership(pkg.hq, ranges, mem_sets, non_sets, degrade,
                                             policy, progress, owner, canaries)
        report.notes += report.membership.notes
    decide(report)
    report.seconds = time.perf_counter() - t0
    logger.info("audit %s: %d reasons (%.1f s)", report.verdict, len(report.reasons),
                report.seconds)
    return report


def record_audit(package_path: Path, report: AuditReport, report_sha256: str) -> Manifest:
    """Write the verdict into the package manifest (``audit.status`` passed / failed, the
    sha256 of report.json, the summary metrics). A previous operator override is dropped: it
    was given for an earlier audit, and must be recorded again if still wanted."""
    old = read_package(Path(package_path)).manifest.audit
    if old is not None and old.override is not None:
        logger.warning("a new audit replaces the previous one; its operator override is removed")
    info = AuditInfo(status="passed" if report.passed else "failed",
                     report_sha256=report_sha256, summary=report.summary())
    return update_manifest(Path(package_path), audit=info)
