"""Turn benchmark rows (``rows-*.jsonl``) into ``distill.md``, ``distill.json`` and plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from medidd._atomic import atomic_write_text

ORDER = [
    "full", "random", "herding", "kcenter", "tripled", "dc_real", "dc_noise", "dm", "idc",
    "prior_only", "pixel_gm", "spg_gm", "spg_gm_scale005", "spg_gm_scale01_lfd",
    "spg_gm_scale01_lr001", "spg_gm_scale03", "spg_gm_noclip", "spg_gm_lr001", "spg_gm_gm",
    "spg_gm_lfd", "spg_gm_lfd10", "spg_gm_gradient", "spg_gm_uncentred", "spg_gm_long",
    "prior_only_nofit", "spg_gm_nofit",
    "prior_only_mean", "prior_only_medoid", "spg_gm_mean", "spg_gm_medoid", "spg_gm_highpass",
    "spg_gm_fullres", "spg_gm_gm_only", "spg_gm_lfd_only",
]


def _ordered(methods: set[str]) -> list[str]:
    """Known methods in table order, then any other (a new variant) alphabetically."""
    return [m for m in ORDER if m in methods] + sorted(methods - set(ORDER))
REAL_SLICES = {"full", "random", "herding", "kcenter", "tripled", "dc_real"}


def gain_retained(psnr: float, psnr_lq: float, psnr_full: float) -> float:
    """Share of the full-data PSNR gain over the input; NaN when full data gains nothing."""
    denom = psnr_full - psnr_lq
    return (psnr - psnr_lq) / denom if abs(denom) > 1e-6 else float("nan")


def load_rows(work: Path) -> list[dict[str, Any]]:
    """Every row of ``rows-*.jsonl``; ``gain_retained`` recomputed from the PSNRs it holds."""
    rows = []
    for f in sorted(work.glob("rows-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    for r in rows:
        r["gain_retained"] = gain_retained(r["psnr"], r["psnr_lq"], r["psnr_full"])
    return rows


def _ms(values: list[float], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v == v]  # drop NaN (undefined ratios)
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def machine_label(machine: dict[str, Any]) -> str:
    """``GPU name`` or ``N-core CPU`` for the table's machine column.

    Example:
        >>> machine_label({"cpu_cores": 2, "gpu": None}), machine_label({"gpu": "NVIDIA H100"})
        ('2-core CPU', 'NVIDIA H100')
    """
    return str(machine.get("gpu") or f"{machine.get('cpu_cores', '?')}-core CPU")


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["setting_id"], r["method"], r["ipc"])].append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {
            k: [float(r[k]) for r in rs]
            for k in (
                "psnr",
                "ssim",
                "psnr_lq",
                "psnr_full",
                "gain_retained",
                "max_nn_ncc",
                "nn_ncc_p99_ref",
                "distill_s_per_patient",
                "bytes_ratio",
                "train_s",
            )
        }
        out[key]["folds"] = len(rs)
        out[key]["machines"] = sorted({machine_label(r.get("machine", {})) for r in rs})
        out[key]["setting"] = rs[0]["setting"]
        out[key]["task"] = rs[0]["task"]
    return out


def _plot(summary: dict[tuple[str, str, int], dict[str, Any]], setting: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = _ordered({k[1] for k in summary if k[0] == setting})
    for m in methods:
        pts = sorted(
            (k[2], statistics.mean(v["psnr"]))
            for k, v in summary.items()
            if k[0] == setting and k[1] == m and k[2] > 0
        )
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                label=m,
                linestyle="--" if m in REAL_SLICES else "-",
            )
    full = [v for k, v in summary.items() if k[0] == setting and k[1] == "full"]
    if full:
        ax.axhline(statistics.mean(full[0]["psnr"]), color="k", lw=1, label="full data")
        ax.axhline(
            statistics.mean(full[0]["psnr_lq"]), color="gray", lw=1, ls=":", label="LQ input"
        )
    ax.set_xlabel("images per patient (IPC)")
    ax.set_ylabel("PSNR on held-out patients (dB)")
    ax.set_title(f"{setting}: PSNR vs IPC (dashed = ships real slices)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


#: rows of the image grid, top to bottom (when their images are cached)
GRID_METHODS = ("random", "prior_only_nofit", "prior_only", "spg_gm", "pixel_gm", "dc_real",
                "dc_noise", "dm", "idc", "tripled")


def image_grid(work: Path, setting: str, out: Path) -> int:
    """The distilled HQ images of every training patient (rows) for every method in
    :data:`GRID_METHODS` whose images the run stage cached for their current config (columns),
    atlas prior first, at an IPC where the default ``spg_gm`` is cached (IPC 2 first), else the
    one with the most methods (the first image per patient); returns that IPC (0 when there
    is nothing to show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from benchmarks.distill_bench import cache_file

    cache = work / "cache" / setting
    files = sorted(cache.glob("*-ipc*-p-*.pt")) if cache.is_dir() else []
    if not files:
        return 0
    everyone = sorted({f.name.split("-ipc")[1].split("-", 1)[1][:14] for f in files})

    def image_file(method: str, ipc: int, patient: str) -> Path | None:
        # the file of the label's *current* config (fold 0: grid methods use no local prior)
        f = cache_file(work, setting, method, ipc, patient, 0)
        return f if f.is_file() else None

    def cached(ipc: int) -> int:
        return sum(any(image_file(m, ipc, p) for p in everyone) for m in GRID_METHODS)

    # the default method's IPC first (the grid is there to show what it ships)
    ipc = max((2, 1, 5), key=lambda k: (any(image_file("spg_gm", k, p) for p in everyone),
                                        cached(k)))
    patients = [p for p in everyone if any(image_file(m, ipc, p) for m in GRID_METHODS)]
    prior = None
    bundle = work / "bundle.pt"
    if bundle.is_file():
        b = torch.load(bundle, weights_only=False)
        modality = "MR" if setting.startswith("mr") else "CT"
        entry = b["cohorts"][modality]["folds"][0]["priors"].get(f"atlas:{ipc}")
        prior = entry["images"].float() if entry is not None else None
    columns = [m for m in GRID_METHODS if any(image_file(m, ipc, p) for p in patients)]
    if not columns:
        return 0
    names = (["atlas prior"] if prior is not None else []) + columns
    fig, axes = plt.subplots(len(patients), len(names),
                             figsize=(1.8 * len(names), 1.9 * len(patients)), squeeze=False)
    lo, hi = (0.35, 0.65) if not setting.startswith("mr") else (0.0, 1.0)
    for row, patient in enumerate(patients):
        for col, name in enumerate(names):
            ax = axes[row][col]
            ax.axis("off")
            picture = prior
            if name != "atlas prior":
                hit = image_file(name, ipc, patient)
                picture = torch.load(hit, weights_only=True)["hq"].float() if hit else None
            if picture is not None:
                ax.imshow(picture[0, 0].numpy(), cmap="gray", vmin=lo, vmax=hi)
            if row == 0:
                ax.set_title(name, fontsize=8)
        axes[row][0].text(-0.1, 0.5, patient, fontsize=6, rotation=90, va="center",
                          ha="right", transform=axes[row][0].transAxes)
    fig.suptitle(f"{setting}: first shipped HQ image per patient (rows), IPC {ipc}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return ipc


def write_report(work: Path, out: Path) -> Path:
    """Write ``distill.md``/``distill.json``/plots under ``out`` from the rows under ``work``."""
    rows = load_rows(work)
    if not rows:
        raise SystemExit(f"no benchmark rows under {work}: run the `run` stage first")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "distill.json", json.dumps(rows, indent=1))
    summary = summarise(rows)
    machines: dict[str, int] = defaultdict(int)
    for r in rows:
        m = r.get("machine", {})
        machines[f"{machine_label(m)}, torch {m.get('torch')}"] += 1
    lines = [
        "# Distillation benchmark",
        "",
        "Leave-one-patient-out on the real sample patients (distil the others, train the "
        "downstream net on the distilled pairs with LQ re-drawn every epoch, evaluate on every "
        "slice of the held-out patient). Mean ± std over folds. `gain` = share of the full-data "
        "PSNR gain over the LQ input kept; `NN-NCC` = highest NCC between any shipped image and "
        "any real slice of the site (near-copy line 0.95; `ref` = 99th percentile of "
        "nearest-other-patient NCC, the ideal line); `bytes` = package arrays / raw int16 "
        "voxels of the site's patients.",
        "",
        "Machines: " + "; ".join(
            f"{label} ({n} rows)" for label, n in sorted(machines.items())
        ) + "; each row's machine is in the `machine` column "
        "and in distill.json: compare timings only within one machine (quality does not depend "
        f"on it beyond run-to-run noise). Downstream: DnCNN, {rows[-1].get('steps')} steps. "
        "Reproduce: `make bench` (or the three stages of `python -m benchmarks.distill_bench`).",
        "",
    ]
    for setting in sorted({r["setting_id"] for r in rows}):
        srows = [k for k in summary if k[0] == setting]
        s0 = summary[srows[0]]
        lines += [
            f"## {s0['task']} {s0['setting']} ({setting})",
            "",
            "| method | IPC | PSNR | SSIM | gain | NN-NCC | ref | s/patient | bytes | "
            "train s | folds | machine |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lq = summary[srows[0]]["psnr_lq"]
        for m in _ordered({k[1] for k in srows}):
            for ipc in sorted({k[2] for k in srows if k[1] == m}):
                v = summary[(setting, m, ipc)]
                lines.append(
                    f"| {m} | {ipc or 'all'} | {_ms(v['psnr'])} | {_ms(v['ssim'], '{:.3f}')} | "
                    f"{_ms([100 * g for g in v['gain_retained']], '{:.0f}')}% | "
                    f"{_ms(v['max_nn_ncc'], '{:.3f}')} | {_ms(v['nn_ncc_p99_ref'], '{:.3f}')} | "
                    f"{_ms(v['distill_s_per_patient'], '{:.1f}')} | "
                    f"{_ms([100 * b for b in v['bytes_ratio']], '{:.2f}')}% | "
                    f"{_ms(v['train_s'], '{:.0f}')} | {v['folds']} | "
                    f"{', '.join(v['machines'])} |"
                )
        lines += [
            "",
            f"LQ input PSNR: {_ms(lq)} dB.",
            "",
            f"![PSNR vs IPC]({setting}_psnr_vs_ipc.png)",
            "",
        ]
        _plot(summary, setting, out / f"{setting}_psnr_vs_ipc.png")
        grid = out / f"{setting}_images.png"
        shown = image_grid(work, setting, grid)
        if shown:
            lines += [
                f"Shipped HQ images at IPC {shown} (the first per patient; rows: patients, "
                "columns: the atlas prior and every method this machine's run cached):",
                "",
                f"![distilled images]({grid.name})",
                "",
            ]
    path = out / "distill.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
