"""Figures of the audit report as PNG bytes: matplotlib's object API on an Agg canvas (no
pyplot, no global backend switch, safe in threads and without a display).

Example:
    >>> import numpy as np
    >>> png = roc_figure({"loss": (np.array([1.0, 2.0]), np.array([0.0, 1.5]))}, "demo")
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medidd.privacy.mia.scores import roc_auc, roc_curve

Scores = tuple[np.ndarray, np.ndarray]  # (member scores, non-member scores)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def roc_figure(curves: Mapping[str, Scores], title: str) -> bytes:
    """ROC curves (linear and log-log) of named attacks, each with its AUC in the legend."""
    fig = Figure(figsize=(9, 3.8))
    lin, log = fig.subplots(1, 2)
    for name, (pos, neg) in curves.items():
        fpr, tpr, _ = roc_curve(pos, neg)
        label = f"{name} (AUC {roc_auc(pos, neg):.3f})"
        lin.plot(fpr, tpr, label=label)
        floor = 1.0 / max(len(neg), 1)
        log.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, 1.0 / max(len(pos), 1) / 2),
                 label=label)
    for ax, scale in ((lin, "linear"), (log, "log")):
        ax.plot([1e-4, 1], [1e-4, 1], "k--", lw=0.8, label="chance")
        ax.set_xscale(scale)
        ax.set_yscale(scale)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
    lin.set_xlim(0, 1)
    lin.set_ylim(0, 1)
    lin.legend(fontsize=8, loc="lower right")
    log.set_title("log-log (low FPR)", fontsize=9)
    fig.suptitle(title)
    return _png(fig)


def histogram_figure(groups: Mapping[str, Scores], title: str) -> bytes:
    """Member vs non-member score histograms, one panel per named attack."""
    n = max(len(groups), 1)
    fig = Figure(figsize=(4.2 * n, 3.2))
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (name, (pos, neg)) in zip(axes, groups.items(), strict=False):
        both = np.concatenate([pos, neg])
        bins = np.linspace(both.min(), both.max() + 1e-12, 30)
        ax.hist(neg, bins=bins, alpha=0.6, density=True, label=f"non-members ({len(neg)})")
        ax.hist(pos, bins=bins, alpha=0.6, density=True, label=f"members ({len(pos)})")
        ax.set_title(f"{title} (attack: {name})" if n == 1 else f"attack: {name}", fontsize=10)
        ax.set_xlabel("attack score (higher = more likely a member)")
        ax.set_ylabel("density (each group sums to 1)")
        ax.legend(fontsize=8)
    if n > 1:
        fig.suptitle(title)
    return _png(fig)


def memorisation_figure(values: Mapping[str, Sequence[float]],
                        lines: Mapping[str, Mapping[str, float | None]]) -> bytes:
    """Histogram of each distilled image's nearest-real similarity per metric, with the
    near-copy line and the ideal line (cross-patient quantile)."""
    fig = Figure(figsize=(4.2 * len(values), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(values)))
    for ax, (metric, vals) in zip(axes, values.items(), strict=False):
        ax.hist(np.asarray(vals, dtype=float), bins=np.linspace(-0.2, 1.0, 49),
                color="tab:blue", alpha=0.8, label="distilled images")
        styles = {"near_copy": ("tab:red", "near-copy line"), "ideal": ("tab:green", "ideal line")}
        for key, value in lines.get(metric, {}).items():
            if value is not None:
                colour, text = styles[key]
                ax.axvline(value, color=colour, ls="--", label=f"{text} {value:.3f}")
        ax.set_xlabel(f"nearest real slice, {metric.upper()}")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    return _png(fig)


def pairs_figure(distilled: torch.Tensor, nearest: torch.Tensor, sims: Sequence[float],
                 max_pairs: int = 12, labels: Sequence[str] | None = None) -> bytes:
    """Distilled images beside their nearest real slice, most similar first; ``labels[i]``
    says where image ``i``'s nearest slice comes from (patient, member or held-out)."""
    order = np.argsort(-np.asarray(sims, dtype=float))[:max_pairs]
    cols = 4
    rows = max(1, int(np.ceil(len(order) / (cols // 2))))
    fig = Figure(figsize=(2.2 * cols, 2.3 * rows))
    axes = np.atleast_2d(fig.subplots(rows, cols))
    for ax in axes.flat:
        ax.axis("off")
    for j, i in enumerate(order):
        r, c = divmod(j, cols // 2)
        a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
        a.imshow(distilled[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        a.set_title(f"distilled #{i}", fontsize=8)
        b.imshow(nearest[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        where = f"\n{labels[i]}" if labels is not None and i < len(labels) else ""
        b.set_title(f"nearest real, NCC {sims[i]:.3f}{where}", fontsize=7)
    return _png(fig)


def crops_figure(lq: torch.Tensor, output: torch.Tensor, hq: torch.Tensor,
                 labels: Sequence[str] | None = None, crop: int = 64) -> bytes:
    """Before / after on real slices: per row the LQ input, the model's output and the
    reference, whole and as a central ``crop`` x ``crop`` zoom (where noise and detail show),
    each with its PSNR against the reference."""
    from medidd.train.metrics import psnr

    n = lq.shape[0]
    fig = Figure(figsize=(13.2, 2.3 * max(n, 1)))
    axes = np.atleast_2d(fig.subplots(max(n, 1), 6))
    h, w = hq.shape[-2:]
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    for i in range(n):
        for j, (name, img) in enumerate((("LQ input", lq), ("model output", output),
                                          ("reference", hq))):
            x = img[i, 0].clamp(0, 1)
            score = "" if name == "reference" else (
                f", {float(psnr(img[i : i + 1].clamp(0, 1), hq[i : i + 1])):.2f} dB")
            where = f"{labels[i]}: " if labels is not None and j == 0 else ""
            for k, view in enumerate((x, x[y0 : y0 + c, x0 : x0 + c])):
                ax = axes[i, 2 * j + k]
                ax.imshow(view.numpy(), cmap="gray", vmin=0, vmax=1)
                ax.axis("off")
                ax.set_title(f"{where}{name}{score}" if k == 0 else f"{name}, centre {c} px",
                             fontsize=7)
    return _png(fig)
