"""The aggregator's run report: per-node outcome and metrics, what was rejected and why, bytes
on the wire in each direction, rounds and wall time; JSON for machines, HTML for people.

:class:`RunLedger` is filled in while the run goes (node seen, bytes, verdicts, metrics) and
turned into a :class:`RunReport` at the end, also when the run failed, so a report always says
what happened. :func:`write_report` writes ``report.json`` and ``report.html`` atomically.

Example:
    >>> ledger = RunLedger(strategy="distill", task="denoise", expected=["a", "b"])
    >>> ledger.seen(1, "a"); ledger.add_bytes(1, down=10, up=1000)
    >>> ledger.set_status(1, "used"); ledger.set_metrics(1, {"psnr": 30.0, "n_slices": 4.0})
    >>> r = ledger.finish(wall_s=1.0)
    >>> [n.name for n in r.nodes], r.missing, r.bytes_up
    (['a', 'b'], ['b'], 1000)
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from medidd._atomic import atomic_write_text
from medidd.federation.audit import pooled_audit

logger = logging.getLogger(__name__)

Status = Literal["used", "rejected", "refused", "missing", "evaluated", "trained", "pending"]


class NodeReport(BaseModel):
    """One node: ``status`` (``used``: its package trained the model; ``rejected``: the
    aggregator refused its package, ``reasons`` say why; ``refused``: the node declined to
    send one; ``missing``: it did not reply in time (``missing_in`` names the rounds);
    ``trained``: it took part in FedAvg), its scores on its held-out patients, and its
    membership ``audit`` of the trained model (aggregates; ``audit_note``: why there is none)."""

    name: str
    node_id: int | None = None
    status: Status = "pending"
    reasons: list[str] = Field(default_factory=list)
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
        return RunReport(
            strategy=self.strategy, task=self.task, status="failed" if error else "ok",
            error=error, started=self.started, wall_s=wall_s, train_s=self.train_s,
            rounds=self.rounds, bytes_up=sum(n.bytes_up for n in nodes),
            bytes_down=sum(n.bytes_down for n in nodes), n_train_images=self.n_train_images,
            lq_source=self.lq_source, nodes=sorted(nodes, key=lambda n: n.name),
            missing=sorted(missing), rejected=rejected, metrics=pooled_metrics(scored),
            audit=pooled_audit([n.audit for n in nodes]) if self.audit_requested else None,
            extra=self.extra,
        )


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


def report_html(report: RunReport) -> str:
    """A self-contained HTML page of ``report`` (every value escaped)."""
    metric_keys = ["psnr", "ssim", "psnr_lq", "ssim_lq", "n_slices", "held_out"]
    head = "".join(f"<th>{k}</th>" for k in
                   ["node", "status", "images", "bytes up", "bytes down", *metric_keys,
                    "reasons / missing"])
    rows = []
    for n in report.nodes:
        notes = [*n.reasons, *(f"missing in {r}" for r in n.missing_in)]
        if n.override:
            notes.append(f"audit override: {n.override}")
        cells = [n.name, n.status, n.n_images or "", n.bytes_up, n.bytes_down,
                 *(n.metrics.get(k, "") for k in metric_keys), "<br>".join(map(_fmt, notes))]
        rows.append("<tr>" + "".join(
            f"<td>{c if i == len(cells) - 1 else _fmt(c)}</td>" for i, c in enumerate(cells))
            + "</tr>")
    summary = {
        "strategy": report.strategy, "task": report.task, "status": report.status,
        "wall time (s)": report.wall_s, "training time (s)": report.train_s,
        "rounds": report.rounds, "bytes up (nodes to server)": report.bytes_up,
        "bytes down (server to nodes)": report.bytes_down,
        "training images": report.n_train_images, "LQ for training": report.lq_source,
        "missing nodes": ", ".join(report.missing) or "none",
        **{f"pooled {k}": v for k, v in report.metrics.items()},
    }
    if report.error:
        summary["error"] = report.error
    srows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                    for k, v in summary.items() if v is not None)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>MediDD run report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>MediDD federated run: {html.escape(report.strategy)}</h1>"
        f"<p>started {html.escape(report.started)} UTC</p><table>{srows}</table>"
        f"<h2>Nodes</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
        "<p>Metrics are each node's scores on its own held-out real patients (aggregates "
        f"only); nothing else leaves a node.</p>{audit_html(report)}</body></html>\n"
    )


def write_report(report: RunReport, out: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out`` (atomically, each)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(out / "report.json", data + "\n")
    atomic_write_text(out / "report.html", report_html(report))
    logger.info("run report written to %s", out)
    return out / "report.json", out / "report.html"


def read_report(path: Path) -> RunReport:
    """Read a ``report.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    return RunReport.model_validate_json(path.read_text())
