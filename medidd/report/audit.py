"""The audit report: ``report.json`` for machines and a self-contained ``report.html`` for the
privacy officer (every figure embedded as a base64 PNG; it shows real slices, so it stays at
the site). The JSON holds no image and no file name of a patient; its sha256 goes into the
package manifest (:func:`medidd.privacy.audit.record_audit`).

Example:
    >>> import tempfile, pathlib
    >>> from medidd.privacy.audit import AuditReport
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> files = write_report(AuditReport(verdict="inconclusive", reasons=["no holdout"]), d)
    >>> sorted(p.name for p in (files.html, files.json)), len(files.json_sha256)
    (['report.html', 'report.json'], 64)
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medidd.atomic import atomic_write_bytes, atomic_write_text
from medidd.privacy.audit import AuditReport
from medidd.report.plots import histogram_figure, memorisation_figure, pairs_figure, roc_figure

#: Keys every report.json has at the top level (documented in docs/privacy.md).
JSON_KEYS = ("format", "software_version", "verdict", "passed", "reasons", "notes", "package",
             "policy", "phi", "memorisation", "membership", "gate", "matching", "canaries",
             "summary", "seconds")


@dataclass(frozen=True)
class ReportFiles:
    """Paths of the written report and the sha256 (hex) of report.json's bytes."""

    html: Path
    json: Path
    json_sha256: str


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def report_json(report: AuditReport) -> str:
    """report.json's text: sorted keys, strict JSON (no NaN)."""
    return json.dumps(_finite(report.to_json()), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, float) for x in v):
        if v[0] == v[1]:  # a bootstrap over one patient per side cannot move: no interval
            return "n/a"
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return html.escape(str(v))


#: What to do about a reason, by a phrase it contains (first match wins).
ADVICE: tuple[tuple[str, str], ...] = (
    ("canary control not detected",
     "re-distil with more canaries (audit.canaries) or stronger ones (audit.canary_amplitude): "
     "the test could not find them even in the slices the distiller saw"),
    ("canaries in the package",
     "re-distil with DP (--dp) or fewer images per patient: the package carries detail of "
     "individual slices"),
    ("not matched",
     "re-distil with audit.holdout: slabs (the default) so members and non-members are the "
     "same patients, or give held-out patients of the same region and protocol"),
    ("positive control not detected",
     "add patients (members and held-out): with few patients the attack is underpowered and "
     "cannot show the package is safe; re-run the audit"),
    ("membership inference",
     "distil with fewer images per patient or with DP (--dp), or add patients, then re-audit"),
    ("near-cop", "re-distil: an image is almost a copy of a real slice; lower ipc or add DP"),
    ("ideal line", "re-distil with more patients or DP so images are no closer to a patient "
     "than other patients are"),
    ("phi", "remove the burned-in text / header values the scan found and re-export"),
    ("holdout", "pass held-out patients (--holdout) that were not distilled"),
)


def advice(reason: str) -> str:
    """The one-line "what to do" for an audit reason.

    Example:
        >>> advice("membership inference: AUC 0.7 is above 0.6").startswith("distil")
        True
    """
    low = reason.lower()
    for phrase, text in ADVICE:
        if phrase in low:
            return text
    return "read the reason above; fix the input or the policy and re-run the audit"


def _why(report: AuditReport) -> str:
    if report.reasons:
        more = len(report.reasons) - 1
        tail = f" (and {more} more reason{'s' if more > 1 else ''} below)" if more else ""
        return f"{report.reasons[0]}{tail}."
    if report.verdict == "passed":
        tests = report.canary_results()
        if "control_images" in tests:
            return (f"the {report.canary_count} codes planted in the site's slices are found "
                    "in the slices the distiller saw (the control) but not in the package or a "
                    "model trained on it, and no shipped image is a copy of a real slice.")
        return "every check passed under the policy below."
    return "see the notes below."


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _reasons(items: list[str]) -> str:
    if not items:
        return "<p>none</p>"
    return "<ul>" + "".join(f"<li>{html.escape(i)}<br><b>what to do:</b> "
                            f"{html.escape(advice(i))}</li>" for i in items) + "</ul>"


def _n(count: int | None, noun: str) -> str:
    """``1 patient``, ``32 slices``, ``n/a patients``."""
    if count is None:
        return f"n/a {noun}s"
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _cohort(report: AuditReport) -> str:
    m = report.membership
    c = m.counts if m is not None else {}
    if not c:
        return "<p>Membership inference was not run, so no patients were compared.</p>"
    rows = [("members (patients distilled into the package)",
             f"{_n(c.get('member_patients'), 'patient')}, {_n(c.get('member_slices'), 'slice')}"),
            ("non-members (held-out slabs or patients)",
             f"{_n(c.get('nonmember_patients'), 'patient')}, "
             f"{_n(c.get('nonmember_slices'), 'slice')}"),
            ("positive control training slices", _n(c.get("control_slices"), "slice"))]
    return _table(rows)


def _list(items: list[str]) -> str:
    if not items:
        return "<p>none</p>"
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _canary_rows(report: AuditReport) -> str:
    tests = report.canary_results()
    if not tests:
        return ("<p>No canaries: the package was distilled without them (audit.canaries: 0, or "
                "an older package).</p>")
    names = {"package_images": "package images", "package_model": "model trained on the package",
             "control_images": "control: slices the distiller saw",
             "control_model": "control: model trained on those slices"}
    head = ("<tr><th>test</th><th>canaries</th><th>included</th><th>guesses</th><th>right</th>"
            "<th>epsilon lower bound</th><th>AUC</th><th>TPR@1%FPR</th></tr>")
    rows = [f"<tr><td>{names.get(k, k)}</td><td>{r.m}</td><td>{r.n_included}</td><td>{r.r}</td>"
            f"<td>{r.v}</td><td>{r.eps_lower_bound:.2f} ({r.confidence:.0%})</td>"
            f"<td>{r.auc:.3f}</td><td>{r.tpr_at_1fpr:.3f}</td></tr>" for k, r in tests.items()]
    return f"<table>{head}{''.join(rows)}</table>"


def _attack_rows(report: AuditReport) -> str:
    m = report.membership
    if m is None or m.status != "run":
        return "<p>Membership inference was not run.</p>"
    head = ("<tr><th>model</th><th>attack</th><th>AUC</th><th>95% CI</th><th>TPR@1%FPR</th>"
            "<th>TPR@0.1%FPR</th><th>members</th><th>non-members</th><th>FPR floor</th></tr>")
    rows = []
    for who, model in (("package model", m.target), ("positive control", m.control)):
        for name, out in (model.attacks.items() if model else []):
            r = out.result
            rows.append(f"<tr><td>{who}</td><td>{name}</td><td>{r.auc:.3f}</td>"
                        f"<td>{_fmt(list(r.auc_ci))}</td><td>{r.tpr_at_1:.3f}</td>"
                        f"<td>{r.tpr_at_0_1:.3f}</td><td>{r.n_members}</td>"
                        f"<td>{r.n_nonmembers}</td><td>{r.fpr_floor:.4f}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _nearest_labels(report: AuditReport) -> list[str] | None:
    """``patient p-..., member`` / ``held-out`` per distilled image, where the report has it."""
    ncc = report.memorisation.get("ncc", {})
    keys, idx = ncc.get("nearest_patient"), ncc.get("nearest_slice")
    if not keys:
        return None
    out = []
    for i, key in enumerate(keys):
        role = f"\n{report.roles[key]}" if key in report.roles else ""
        where = f" slice {idx[i]}" if idx and i < len(idx) else ""
        out.append(f"{key}{where}{role}")
    return out


def _figures(report: AuditReport) -> list[str]:
    parts = []
    m = report.membership
    if m is not None and m.status == "run":
        for who, model in (("package model", m.target), ("positive control (raw slices)",
                                                          m.control)):
            if model is None:
                continue
            scores = {k: (v.member_scores, v.nonmember_scores) for k, v in model.attacks.items()}
            parts.append(f"<h3>{who}</h3>")
            parts.append(_img(roc_figure(scores, f"ROC, {who}"), f"ROC {who}"))
            parts.append(_img(histogram_figure(scores, f"attack scores, {who}"),
                              f"scores {who}"))
    mem = report.memorisation
    if mem:
        values: dict[str, list[float]] = {k: mem[k]["per_image"] for k in ("ncc", "ssim")
                                         if k in mem}
        lines = {"ncc": {"near_copy": mem["ncc"].get("near_copy_line"),
                         "ideal": mem["ncc"].get("ideal_line")},
                 "ssim": {"ideal": mem.get("ssim", {}).get("ideal_line")}}
        parts.append("<h3>memorisation</h3>")
        parts.append(_img(memorisation_figure(values, lines), "memorisation histogram"))
    if report.pairs is not None and mem:
        distilled, nearest = report.pairs
        parts.append("<h3>distilled images beside their nearest real slice</h3>")
        parts.append(_img(pairs_figure(distilled, nearest, mem["ncc"]["per_image"],
                                       labels=_nearest_labels(report)), "nearest pairs"))
    return parts


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;font-size:13px}.v{display:inline-block;padding:4px 14px;border-radius:4px;
color:#fff;font-weight:bold}.passed{background:#2a7}.failed{background:#c33}
.inconclusive{background:#d90}img{max-width:100%;margin:.5em 0}.warn{color:#a50}"""


def report_html(report: AuditReport) -> str:
    """The self-contained HTML page of ``report``."""
    p = report.policy
    s = report.summary()
    lines = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>MediDD privacy audit: {report.verdict}</title><style>{_CSS}</style></head><body>",
        "<h1>MediDD privacy audit</h1>",
        f"<p><span class='v {report.verdict}'>{report.verdict.upper()}</span> "
        f"{html.escape(_why(report))}</p>",
        "<p class='warn'>This page shows real patient slices: keep it at the site. "
        "report.json holds the same numbers without images.</p>",
        "<h2>Reasons and what to do</h2>", _reasons(report.reasons),
        "<h2>How members and non-members were drawn</h2>",
        f"<p>{html.escape(report.matching.get('text', 'n/a'))}</p>",
        "<h2>Patients and slices compared</h2>", _cohort(report),
        "<h2>Canary tests (one training run)</h2>", _canary_rows(report),
        "<p>Before distillation, some slices got a faint unique chequerboard code, each by a "
        "coin flip. If the package (or a model trained on it) carries the included codes more "
        "than the excluded ones, it keeps detail of individual slices; the number of right "
        "inclusion guesses gives a lower bound on its epsilon (0 = no evidence of leakage). "
        "The control runs the same test on the slices the distiller saw: it must find them, "
        "or the test proves nothing.</p>",
        "<h2>Notes</h2>", _list(report.notes),
        "<h2>Package</h2>", _table(list(report.package.items())),
        "<h2>Summary</h2>", _table(sorted(s.items())),
        "<h2>Policy</h2>",
        _table([("near-copy line (NCC)", p.near_copy_ncc),
                ("ideal line quantile", p.ideal_quantile),
                ("fail above the ideal line", p.require_below_ideal),
                ("max membership AUC", f"{p.max_mia_auc} ({p.auc_statistic})"),
                ("gate attacks", ", ".join(p.gate_attacks)),
                ("min control AUC (model level)", p.min_control_auc),
                ("canary control: min epsilon bound / AUC",
                 f"{p.min_control_eps} / {p.min_control_canary_auc}"),
                ("reference models (LiRA, RMIA)", p.n_reference_models),
                ("LQ draws per scored slice", p.lq_draws),
                ("inconclusive passes", p.allow_inconclusive)]),
        "<h2>PHI scan</h2>", _list(report.phi_findings),
        "<h2>Membership inference</h2>", _attack_rows(report),
        "<p>AUC 0.5 = the attacker cannot tell members from non-members; TPR at a low FPR is "
        "what a careful attacker achieves. Intervals resample patients (slices of one patient "
        "are correlated); with one patient per side nothing can move, so they read n/a. "
        "members / non-members count slices; the table above gives patients. The positive "
        "control is "
        "the same attack on a model trained on the members' raw slices; with canaries it is "
        "reported, without them it decides whether the audit is conclusive.</p>",
        *_figures(report),
        "</body></html>",
    ]
    return "\n".join(lines)


def write_report(report: AuditReport, out_dir: Path) -> ReportFiles:
    """Write ``report.json`` then ``report.html`` into ``out_dir`` (each atomically).

    Keep ``out_dir`` outside the package folder: the HTML shows real slices and must not leave.
    """
    out_dir = Path(out_dir)
    text = report_json(report)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    atomic_write_text(json_path, text)
    atomic_write_bytes(html_path, report_html(report).encode("utf-8"))
    return ReportFiles(html=html_path, json=json_path,
                       json_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
