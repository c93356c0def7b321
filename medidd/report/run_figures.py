"""Figures of the aggregator's run report as PNG bytes (matplotlib object API, Agg canvas).

Every figure says its units: PSNR in dB, bytes in kB. Inputs are plain numbers and tensors, so
the figures are testable without a run.

Example:
    >>> png = node_metrics_figure({"a": {"psnr": 33.0, "psnr_lq": 28.0}})
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from medidd.report.plots import _png

#: Pairs shown per node in the gallery.
GALLERY_PER_NODE = 3


def gallery_figure(pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   per_node: int = GALLERY_PER_NODE) -> bytes:
    """The distilled HQ/LQ pairs received, ``per_node`` per node: one row per pair.

    ``pairs`` maps a node name to its ``(hq, lq)`` tensors, each (N, 1, H, W) in [0, 1].
    """
    rows = [(name, i, hq[i, 0], lq[i, 0]) for name, (hq, lq) in pairs.items()
            for i in range(min(per_node, int(hq.shape[0])))]
    cols = 4
    nrow = max(1, int(np.ceil(len(rows) / 2)))
    fig = Figure(figsize=(2.3 * cols, 2.4 * nrow))
    axes = np.atleast_2d(fig.subplots(nrow, cols))
    for ax in axes.flat:
        ax.axis("off")
    for j, (name, i, hq, lq) in enumerate(rows):
        r, c = divmod(j, 2)
        for ax, img, what in ((axes[r, 2 * c], hq, "HQ"), (axes[r, 2 * c + 1], lq, "LQ")):
            ax.imshow(img.float().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name} #{i} {what}", fontsize=8)
    return _png(fig)


def node_metrics_figure(metrics: Mapping[str, Mapping[str, float]]) -> bytes:
    """Per-node PSNR (dB) of the LQ input and of the trained model, and SSIM, as bars."""
    names = list(metrics)
    x = np.arange(len(names))
    fig = Figure(figsize=(9, 3.2))
    ax, bx = fig.subplots(1, 2)
    for axis, key, unit in ((ax, "psnr", "PSNR (dB)"), (bx, "ssim", "SSIM")):
        lq = [metrics[n].get(f"{key}_lq", np.nan) for n in names]
        model = [metrics[n].get(key, np.nan) for n in names]
        axis.bar(x - 0.2, lq, 0.4, label="LQ input", color="tab:gray")
        bars = axis.bar(x + 0.2, model, 0.4, label="trained model", color="tab:blue")
        for b in (axis.containers[-2], bars):
            axis.bar_label(b, fmt="%.2f" if key == "psnr" else "%.3f", fontsize=7)
        finite = [v for v in [*lq, *model] if np.isfinite(v)]
        if finite:
            axis.set_ylim(min(finite) * 0.95, max(finite) * 1.06)
        axis.set_xticks(x, names)
        axis.set_ylabel(unit)
        axis.set_title(f"held-out {unit} per node", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncols=2,
               bbox_to_anchor=(0.5, 1.06), frameon=False)
    return _png(fig)


def loss_figure(losses: Sequence[float]) -> bytes:
    """Training loss against step (log scale)."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    y = np.asarray(losses, dtype=float)
    ax.plot(np.arange(1, len(y) + 1), y, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step (recorded)")
    ax.set_ylabel("training loss (MSE)")
    ax.set_title("training loss", fontsize=9)
    return _png(fig)


def rounds_figure(per_round: Sequence[Mapping[str, float]]) -> bytes:
    """Pooled held-out PSNR (dB) after each FedAvg round, with the LQ line."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    rounds = [int(m.get("round", i + 1)) for i, m in enumerate(per_round)]
    ax.plot(rounds, [m.get("psnr", np.nan) for m in per_round], "o-", label="model")
    lq = [m["psnr_lq"] for m in per_round if "psnr_lq" in m]
    if lq:
        ax.axhline(lq[0], color="tab:gray", ls=":", label="LQ input")
    ax.set_xticks(rounds)
    ax.set_xlabel("FedAvg round")
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=7)
    return _png(fig)


def comparison_figure(runs: Mapping[str, tuple[float, float, float]]) -> bytes:
    """Pooled PSNR (dB) against bytes on the wire (kB, up + down) per strategy.

    ``runs`` maps a label to ``(bytes_up, bytes_down, psnr)``; the LQ line is not drawn here.
    """
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    for label, (up, down, psnr) in runs.items():
        total = (up + down) / 1e3
        ax.scatter([total], [psnr], s=60)
        ax.annotate(f"{label}\n{up / 1e3:.0f} kB up, {down / 1e3:.0f} kB down",
                    (total, psnr), fontsize=8, xytext=(6, -4), textcoords="offset points")
    ax.set_xlabel("bytes on the wire, up + down (kB)")
    ax.set_ylabel("pooled held-out PSNR (dB)")
    ax.set_title("distillation vs FedAvg", fontsize=9)
    ax.margins(x=0.6, y=0.4)
    return _png(fig)
