"""The aggregator's run report: per-node outcome and metrics, what was rejected and why, bytes
on the wire in each direction, rounds and wall time; JSON for machines, HTML for people.

:class:`RunLedger` is filled in while the run goes (node seen, bytes, verdicts, metrics) and
turned into a :class:`RunReport` at the end, also when the run failed, so a report always says
what happened. :func:`write_report` writes ``report.json`` and ``report.html`` atomically; the
HTML embeds its figures (PNG data URIs): a gallery of the distilled pairs received (shareable by
construction; never in the JSON), per-node PSNR/SSIM bars, the training loss, PSNR per FedAvg
round, and a distillation-vs-FedAvg chart when the other strategy's ``report.json`` lies in a
sibling folder (``out/../*/report.json``, as ``make demo`` writes them).

Example:
    >>> ledger = RunLedger(strategy="distill", task="denoise", expected=["a", "b"])
    >>> ledger.seen(1, "a"); ledger.add_bytes(1, down=10, up=1000)
    >>> ledger.set_status(1, "used"); ledger.set_metrics(1, {"psnr": 30.0, "n_slices": 4.0})
    >>> r = ledger.finish(wall_s=1.0)
    >>> [n.name for n in r.nodes], r.missing, r.bytes_up
    (['a', 'b'], ['b'], 1000)
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, PrivateAttr

import medidd
from medidd.atomic import atomic_write_text
from medidd.federation.audit import pooled_audit

logger = logging.getLogger(__name__)

Status = Literal["used", "rejected", "refused", "missing", "evaluated", "trained", "pending"]


class NodeReport(BaseModel):
    """One node: ``status`` (``used``: its package trained the model; ``rejected``: the
    aggregator refused its package, ``reasons`` say why; ``refused``: the node declined to
    send one; ``missing``: it did not reply in time (``missing_in`` names the rounds);
    ``trained``: it took part in FedAvg), its scores on its held-out patients, and its
    membership ``audit`` of the trained model (aggregates; ``audit_note``: why there is none).
    ``package_audit`` is the verdict its package's manifest records (``passed``, ``failed``,
    ``inconclusive``, ``not_run``; ``None`` without a package), ``override`` the operator's
    recorded override (``"by: reason"``) when one opened the gate."""

    name: str
    node_id: int | None = None
    status: Status = "pending"
    reasons: list[str] = Field(default_factory=list)
    package_audit: str | None = None
    override: str | None = None
    n_images: int | None = None
    package_bytes: int | None = None
    missing_in: list[str] = Field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    audit: dict[str, float] = Field(default_factory=dict)
    audit_note: str | None = None


class RunReport(BaseModel):
    """The whole run; ``metrics`` are slice-weighted means over the nodes that scored;
    ``audit`` is the pooled membership audit (:func:`~medidd.federation.audit.pooled_audit`),
    ``None`` when the run did not ask for one."""

    strategy: str
    task: str
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    started: str
    wall_s: float
    train_s: float | None = None
    rounds: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    n_train_images: int | None = None
    lq_source: str | None = None
    nodes: list[NodeReport] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    rejected: dict[str, list[str]] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    audit: dict[str, float] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    software_version: str = Field(default_factory=lambda: medidd.__version__)
    config_sha256: str | None = None
    loss: list[float] = Field(default_factory=list)
    round_metrics: list[dict[str, float]] = Field(default_factory=list)
    #: node name -> (hq, lq) of a few received distilled pairs; for the HTML only, never JSON
    _gallery: dict[str, tuple[torch.Tensor, torch.Tensor]] = PrivateAttr(default_factory=dict)


def pooled_metrics(per_node: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Slice-weighted means of every metric over nodes (weights: ``n_slices``).

    Example:
        >>> pooled_metrics([{"psnr": 30.0, "n_slices": 1.0}, {"psnr": 33.0, "n_slices": 2.0}])
        {'psnr': 32.0, 'n_slices': 3.0}
    """
    total = sum(float(m.get("n_slices", 0.0)) for m in per_node)
    if total <= 0:
        return {}
    keys = [k for k in per_node[0] if k not in ("n_slices", "n_patients", "held_out")]
    out = {k: sum(float(m[k]) * float(m["n_slices"]) for m in per_node if k in m) / total
           for k in keys}
    out["n_slices"] = total
    return out


class RunLedger:
    """Mutable record of a run in progress, keyed by Flower node id."""

    def __init__(self, strategy: str, task: str, expected: list[str] | None = None) -> None:
        self.strategy = strategy
        self.task = task
        self.expected = list(expected or [])
        self.started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.nodes: dict[int, NodeReport] = {}
        self.rounds = 0
        self.train_s: float | None = None
        self.n_train_images: int | None = None
        self.lq_source: str | None = None
        self.audit_requested = False
        self.extra: dict[str, Any] = {}
        self.config_sha256: str | None = None
        self.losses: list[float] = []
        self.round_metrics: list[dict[str, float]] = []
        self.gallery: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def add_gallery(self, name: str, hq: torch.Tensor, lq: torch.Tensor, keep: int = 3) -> None:
        """Keep the first ``keep`` distilled (HQ, LQ) pairs a node sent, for the report's
        gallery (packages are shareable by construction; they stay out of report.json)."""
        have = self.gallery.get(name)
        if have is not None and have[0].shape[0] >= keep:
            return
        hq, lq = hq[:keep].detach().cpu(), lq[:keep].detach().cpu()
        if have is not None:
            hq, lq = torch.cat([have[0], hq])[:keep], torch.cat([have[1], lq])[:keep]
        self.gallery[name] = (hq, lq)

    def set_losses(self, losses: Sequence[float], max_points: int = 500) -> None:
        """The training loss per step, thinned to at most ``max_points`` (non-finite dropped)."""
        step = max(1, math.ceil(len(losses) / max_points))
        self.losses = [float(v) for v in list(losses)[::step] if math.isfinite(float(v))]

    def add_round_metrics(self, metrics: Mapping[str, float]) -> None:
        """Pooled held-out metrics after one FedAvg round (in round order)."""
        self.round_metrics.append({k: float(v) for k, v in metrics.items()
                                   if math.isfinite(float(v))})

    def node(self, node_id: int) -> NodeReport:
        if node_id not in self.nodes:
            self.nodes[node_id] = NodeReport(name=f"node-{node_id}", node_id=node_id)
        return self.nodes[node_id]

    def seen(self, node_id: int, name: str) -> None:
        """Name a node after its reply (names come from the node's own config)."""
        self.node(node_id).name = name

    def add_bytes(self, node_id: int, *, down: int = 0, up: int = 0) -> None:
        """Count payload bytes sent to (``down``) and received from (``up``) a node."""
        n = self.node(node_id)
        n.bytes_down += down
        n.bytes_up += up

    def set_status(self, node_id: int, status: Status, reasons: list[str] | None = None) -> None:
        n = self.node(node_id)
        n.status = status
        if reasons:
            n.reasons = list(reasons)

    def set_metrics(self, node_id: int, metrics: Mapping[str, float]) -> None:
        """Record a node's aggregate scores (non-finite values are dropped)."""
        self.node(node_id).metrics = {k: float(v) for k, v in metrics.items()
                                      if math.isfinite(float(v))}

    def set_audit(self, node_id: int, metrics: Mapping[str, float] | None = None,
                  note: str | None = None) -> None:
        """Record a node's membership audit (aggregates) or why it has none."""
        self.audit_requested = True
        n = self.node(node_id)
        n.audit = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
        n.audit_note = note

    def mark_missing(self, node_id: int, round_name: str) -> None:
        """The node did not reply to ``round_name`` in time (or its reply was an error)."""
        n = self.node(node_id)
        n.missing_in.append(round_name)
        if n.status in ("pending", "trained"):
            n.status = "missing"

    def finish(self, wall_s: float, *, error: str | None = None) -> RunReport:
        """The report; expected nodes never seen are listed as missing."""
        nodes = list(self.nodes.values())
        names = {n.name for n in nodes}
        nodes += [NodeReport(name=name, status="missing", missing_in=["all"])
                  for name in self.expected if name not in names]
        scored = [n.metrics for n in nodes if n.metrics.get("n_slices", 0) > 0]
        missing = [n.name for n in nodes if n.status == "missing" or n.missing_in]
        rejected = {n.name: n.reasons for n in nodes if n.status in ("rejected", "refused")}
        report = RunReport(
            strategy=self.strategy, task=self.task, status="failed" if error else "ok",
            error=error, started=self.started, wall_s=wall_s, train_s=self.train_s,
            rounds=self.rounds, bytes_up=sum(n.bytes_up for n in nodes),
            bytes_down=sum(n.bytes_down for n in nodes), n_train_images=self.n_train_images,
            lq_source=self.lq_source, nodes=sorted(nodes, key=lambda n: n.name),
            missing=sorted(missing), rejected=rejected, metrics=pooled_metrics(scored),
            audit=pooled_audit([n.audit for n in nodes]) if self.audit_requested else None,
            extra=self.extra, config_sha256=self.config_sha256, loss=self.losses,
            round_metrics=self.round_metrics,
        )
        report._gallery = dict(self.gallery)
        return report


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


AUDIT_COLUMNS: tuple[str, ...] = ("auc", "auc_low", "auc_high", "tpr_at_1fpr", "fpr_floor",
                                  "n_member_patients", "n_nonmember_patients", "n_members",
                                  "n_nonmembers")


def audit_html(report: RunReport) -> str:
    """The membership-audit section of the HTML report (empty when no audit was asked)."""
    if report.audit is None:
        return ""
    head = "".join(f"<th>{k}</th>" for k in ("node", *AUDIT_COLUMNS, "note"))
    rows = []
    for n in report.nodes:
        note = n.audit_note or ("" if n.audit else "no reply")
        cells = [n.name, *(n.audit.get(k, "") for k in AUDIT_COLUMNS), note]
        rows.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>")
    pooled = ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in report.audit.items())
    return (
        "<h2>Membership audit of the trained model</h2>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
        f"<p>Pooled: {pooled or 'no node could audit'}.</p>"
        "<p>Each node ran a loss-threshold membership attack on the trained model with its own "
        "members (the patients its package was distilled from) and non-members (its held-out "
        "patients), and sent only these aggregates. AUC 0.5 = the attack cannot tell them "
        "apart; [auc_low, auc_high] is a 95% bootstrap interval; below fpr_floor, TPR is at "
        "FPR 0. Pooled AUC: node AUCs weighted by member x non-member pairs.</p>"
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _kb(n: Any) -> str:
    return f"{n / 1e3:,.1f} kB" if isinstance(n, int | float) else ""


def _kv(spec: Any) -> str | None:
    """``{"name": "dncnn", "width": 16}`` -> ``name dncnn, width 16`` (unset values left out)."""
    if not isinstance(spec, Mapping) or not spec:
        return None
    items = sorted(spec.items(), key=lambda kv: kv[0] not in ("name", "kind"))
    return ", ".join(f"{k} {v}" for k, v in items if v not in (None, {}, []))


def sibling_runs(out: Path) -> dict[str, RunReport]:
    """The ``report.json`` of every sibling folder of ``out`` (and ``out``'s own), by strategy;
    unreadable ones are skipped. How the distillation-vs-FedAvg chart finds the other run."""
    runs: dict[str, RunReport] = {}
    parent = Path(out).resolve().parent
    for path in sorted(parent.glob("*/report.json")):
        try:
            r = read_report(path)
        except (OSError, ValueError):
            continue
        if r.status == "ok" and "psnr" in r.metrics:
            runs.setdefault(r.strategy, r)
    return runs


def figures_html(report: RunReport, others: Mapping[str, RunReport] | None = None) -> str:
    """The report's figures (matplotlib loads here only); a section per available figure."""
    from medidd.report import run_figures as F

    parts = []
    if report._gallery:
        parts += ["<h2>Distilled pairs received (a few per node)</h2>",
                  "<p>What the nodes sent: synthetic HQ images and their LQ partners. They "
                  "passed each site's privacy audit or an override shown in the table above.</p>",
                  _img(F.gallery_figure(report._gallery), "gallery of distilled HQ/LQ pairs")]
    scored = {n.name: n.metrics for n in report.nodes if "psnr" in n.metrics}
    if scored:
        parts += ["<h2>Scores per node (held-out real patients)</h2>",
                  _img(F.node_metrics_figure(scored), "PSNR and SSIM per node")]
    if report.loss:
        parts += ["<h2>Training loss</h2>", _img(F.loss_figure(report.loss), "training loss")]
    if report.round_metrics:
        parts += ["<h2>PSNR per FedAvg round</h2>",
                  _img(F.rounds_figure(report.round_metrics), "PSNR per round")]
    runs = dict(others or {})
    if report.status == "ok" and "psnr" in report.metrics:
        runs[report.strategy] = report
    if len(runs) >= 2:
        points = {k: (float(r.bytes_up), float(r.bytes_down), r.metrics["psnr"])
                  for k, r in sorted(runs.items())}
        lq = next((r.metrics["psnr_lq"] for r in runs.values() if "psnr_lq" in r.metrics), None)
        parts += ["<h2>Distillation vs FedAvg: PSNR against bytes on the wire</h2>",
                  _img(F.comparison_figure(points), "PSNR against bytes on the wire"),
                  "<p>From the runs' report.json files side by side"
                  + (f"; LQ input {lq:.2f} dB" if lq is not None else "") + ".</p>"]
    return "".join(parts)


def _rejected_html(report: RunReport) -> str:
    if not report.rejected:
        return "<h2>Rejected or refused</h2><p>none: every package that arrived was used.</p>"
    items = "".join(f"<li><b>{html.escape(name)}</b>: "
                    f"{html.escape('; '.join(reasons) or 'no reason given')}</li>"
                    for name, reasons in sorted(report.rejected.items()))
    return f"<h2>Rejected or refused</h2><ul>{items}</ul>"


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left;font-size:13px}img{max-width:100%;margin:.5em 0}"
        ".failed{color:#c33;font-weight:bold}.ok{color:#2a7;font-weight:bold}")


def report_html(report: RunReport, others: Mapping[str, RunReport] | None = None) -> str:
    """A self-contained HTML page of ``report`` (every value escaped, figures embedded);
    ``others``: reports of other strategies on the same data, for the comparison chart."""
    metric_cols = [("psnr", "PSNR (dB)"), ("psnr_lq", "LQ PSNR (dB)"), ("ssim", "SSIM"),
                   ("ssim_lq", "LQ SSIM"), ("n_slices", "slices"), ("n_patients", "patients")]
    head = "".join(f"<th>{k}</th>" for k in
                   ["node", "status", "package audit", "images", "package", "up", "down",
                    *(label for _, label in metric_cols), "reasons / missing"])
    rows = []
    for n in report.nodes:
        notes = [*n.reasons, *(f"missing in {r}" for r in n.missing_in)]
        if n.override:
            notes.append(f"audit override: {n.override}")
        verdict = n.package_audit or ""
        if n.override:
            verdict += " (overridden)"
        cells = [_fmt(c) for c in (n.name, n.status, verdict, n.n_images or "")]
        cells += [_kb(n.package_bytes), _kb(n.bytes_up), _kb(n.bytes_down)]
        cells += [_fmt(n.metrics[k]) if k in n.metrics else "" for k, _ in metric_cols]
        cells.append("<br>".join(map(_fmt, notes)))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    pooled = report.metrics
    summary: dict[str, Any] = {
        "strategy": report.strategy, "task": report.task,
        "wall time": f"{report.wall_s:.1f} s",
        "training time": f"{report.train_s:.1f} s" if report.train_s is not None else None,
        "rounds": report.rounds, "bytes up (nodes to server)": _kb(report.bytes_up),
        "bytes down (server to nodes)": _kb(report.bytes_down),
        "training images": report.n_train_images, "LQ for training": report.lq_source,
        "missing nodes": ", ".join(report.missing) or "none",
        "pooled PSNR": (f"{pooled['psnr']:.2f} dB (LQ input "
                        f"{pooled.get('psnr_lq', math.nan):.2f} dB)") if "psnr" in pooled else None,
        "pooled SSIM": f"{pooled['ssim']:.3f} (LQ input {pooled.get('ssim_lq', math.nan):.3f})"
        if "ssim" in pooled else None,
        "held-out slices scored": pooled.get("n_slices"),
        "network": _kv(report.extra.get("net")),
        "degradation": _kv(report.extra.get("degradation")),
        "software version": f"medidd {report.software_version}",
        "config hash (sha256)": report.config_sha256 or "not recorded",
    }
    if report.error:
        summary["error"] = report.error
    srows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                    for k, v in summary.items() if v is not None)
    status = f"<span class='{'ok' if report.status == 'ok' else 'failed'}'>{report.status}</span>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>MediDD run report</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>MediDD federated run: {html.escape(report.strategy)} ({status})</h1>"
        f"<p>started {html.escape(report.started)} UTC</p><table>{srows}</table>"
        f"<h2>Nodes</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
        "<p>Metrics are each node's scores on its own held-out real patients (aggregates "
        "only); nothing else leaves a node. Package audit: the verdict the package's manifest "
        f"records.</p>{_rejected_html(report)}{figures_html(report, others)}"
        f"{audit_html(report)}</body></html>\n"
    )


def write_report(report: RunReport, out: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out`` (atomically, each). The HTML
    compares with the other strategy's run when its report.json is in a sibling folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(out / "report.json", data + "\n")
    others = {k: r for k, r in sibling_runs(out).items() if k != report.strategy}
    atomic_write_text(out / "report.html", report_html(report, others))
    logger.info("run report written to %s", out)
    return out / "report.json", out / "report.html"


def read_report(path: Path) -> RunReport:
    """Read a ``report.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    return RunReport.model_validate_json(path.read_text())
