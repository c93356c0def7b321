"""The node-side report: what the consortium's model does to *this* site's held-out patients.

Written by the node at the end of every ``evaluate`` round, into its own report folder; nothing
of it is sent (the aggregator receives only :data:`~medidd.federation.protocol.EVAL_METRICS`).
It shows real patient slices, so it stays at the site, like the audit's HTML:

- the scores the node returned, and the package's audit verdict (from its manifest), with a
  link to the audit report, which holds the package's images beside their nearest real slices
  (which patient, member or held-out);
- before / after crops of a few held-out real slices through the received model: the LQ
  input, the model's output and the reference, whole and zoomed, each with its PSNR.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> hq = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     page = write_node_report(Path(d), node="a", model=torch.nn.Identity(), hq=hq,
    ...                              lq=hq.clone(), metrics={"psnr": 30.0})
    ...     text = page.read_text()
    >>> page.name, "keep it at the site" in text, text.count("data:image/png")
    ('node-report.html', True, 1)
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

import medidd
from medidd.atomic import atomic_write_text
from medidd.package import Manifest
from medidd.report.plots import crops_figure

__all__ = ["write_node_report"]


def _audit_line(manifest: Manifest | None, audit_html: Path | None) -> str:
    if manifest is None:
        return "<p>This node serves no package (FedAvg only): no audit applies.</p>"
    audit = manifest.audit
    if audit is None:
        text = "not audited: run <code>medidd-node audit</code> before serving"
    else:
        text = audit.status
        if audit.override is not None:
            text += f" (override by {audit.override.by}: {audit.override.reason})"
    link = (f' &mdash; <a href="{html.escape(audit_html.resolve().as_uri())}">audit report'
            "</a> (the package's images beside their nearest real slices)"
            if audit_html is not None and audit_html.is_file() else "")
    return f"<p>Package audit: <b>{html.escape(text)}</b>{link}</p>"


def write_node_report(
    out_dir: Path,
    *,
    node: str,
    model: nn.Module,
    hq: torch.Tensor,
    lq: torch.Tensor,
    metrics: Mapping[str, float],
    manifest: Manifest | None = None,
    audit_html: Path | None = None,
    labels: list[str] | None = None,
    what: str = "",
) -> Path:
    """Write ``out_dir/node-report.html`` (atomically) and return its path.

    Args:
        out_dir: the node's report folder (site-local).
        node: the node's name.
        model: the model the aggregator sent (weights loaded).
        hq, lq: the held-out reference slices shown and the LQ inputs the scores were
            computed on (N, 1, H, W).
        metrics: the scores the node returned.
        manifest: the node's package manifest (for the audit verdict), if any.
        audit_html: the site's audit report, linked when it exists.
        labels: what each slice is (e.g. ``held-out slice 12``).
        what: one line on the run (net, degradation), shown under the title.
    """
    model.eval()
    with torch.no_grad():
        out = model(lq.float())
    png = crops_figure(lq.float(), out, hq.float(), labels=labels)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>"
                   for k, v in sorted(metrics.items()))
    page = "\n".join([
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>MediDD node report: {html.escape(node)}</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;font-size:13px}img{max-width:100%}.warn{color:#a50}</style>",
        "</head><body>",
        f"<h1>Node {html.escape(node)}: the consortium's model on this site's held-out "
        "patients</h1>",
        f"<p>{html.escape(what)} (MediDD {medidd.__version__})</p>",
        "<p class='warn'>This page shows real patient slices: keep it at the site. Only the "
        "scores below were sent to the aggregator.</p>",
        _audit_line(manifest, audit_html),
        "<h2>Scores sent to the aggregator</h2>", f"<table>{rows}</table>",
        f"<h2>Before / after on {hq.shape[0]} held-out slices</h2>",
        "<p>Each row: the LQ input, the model's output and the reference, whole and as a "
        "central zoom, with the PSNR against the reference. Look for noise left in flat "
        "tissue and for edges or small structures the model smoothed away.</p>",
        f'<img alt="before and after" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}">',
        "</body></html>",
    ])
    path = Path(out_dir) / "node-report.html"
    atomic_write_text(path, page)
    return path
