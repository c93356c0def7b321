"""Turn benchmark rows (``rows-*.jsonl``) into ``distill.md``, ``distill.json`` and plots.

Rows of the current cohort come from the run stage; rows of earlier cohorts are kept in
``distill.json`` as they were measured (a row without ``cohort`` is a ``"v1"`` row: 4 CT and 3
MR patients, the benchmark's own copy of distillation), but the tables show one cohort only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from medidd.atomic import atomic_write_text
from medidd.train import gain_retained

ORDER = [
    "full", "random", "herding", "kcenter", "tripled", "dc_real", "dc_noise", "dm", "idc",
    "prior_only", "pixel_gm", "spg_gm", "spg_gm_scale005", "spg_gm_scale01_lfd",
    "spg_gm_scale01_lr001", "spg_gm_scale03", "spg_gm_noclip", "spg_gm_lr001", "spg_gm_gm",
    "spg_gm_lfd", "spg_gm_lfd10", "spg_gm_gradient", "spg_gm_uncentred", "spg_gm_long",
    "prior_only_nofit", "spg_gm_nofit",
    "prior_only_mean", "prior_only_medoid", "spg_gm_mean", "spg_gm_medoid", "spg_gm_highpass",
    "spg_gm_fullres", "spg_gm_gm_only", "spg_gm_lfd_only",
]
REAL_SLICES = {"full", "random", "herding", "kcenter", "tripled", "dc_real"}
#: the cohort the tables show
CURRENT = "v2"
#: columns of a summary (lists over folds; a missing value is NaN)
FIELDS = ("psnr", "ssim", "psnr_lq", "psnr_full", "gain_retained", "max_nn_ncc",
          "nn_ncc_p99_ref", "distill_s_per_patient", "bytes_ratio", "train_s", "ood_psnr",
          "ood_psnr_lq", "ood_psnr_full")


def _ordered(methods: set[str]) -> list[str]:
    """Known methods in table order, then any other (a new variant) alphabetically."""
    return [m for m in ORDER if m in methods] + sorted(methods - set(ORDER))


def load_rows(work: Path, previous: Path | None = None) -> list[dict[str, Any]]:
    """Every row of ``work/rows-*.jsonl`` plus the rows of earlier cohorts in ``previous``
    (an earlier ``distill.json``); ``gain_retained`` recomputed from the PSNRs each holds."""
    rows = []
    for f in sorted(work.glob("rows-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if rows and previous is not None and previous.is_file():
        current = {r.get("cohort", "v1") for r in rows}
        rows = [r for r in json.loads(previous.read_text())
                if r.get("cohort", "v1") not in current] + rows
    for r in rows:
        r.setdefault("cohort", "v1")
        r["gain_retained"] = gain_retained(r["psnr"], r["psnr_lq"], r["psnr_full"])
    return rows


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _ms(values: list[float], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v == v]  # drop NaN (undefined ratios, missing values)
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
    """Rows grouped by (setting, method, ipc): every :data:`FIELDS` as a list over folds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["setting_id"], r["method"], r["ipc"])].append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {k: [_num(r.get(k)) for r in rs] for k in FIELDS}
        out[key]["folds"] = len(rs)
        out[key]["machines"] = sorted({machine_label(r.get("machine", {})) for r in rs})
        out[key]["setting"] = rs[0]["setting"]
        out[key]["task"] = rs[0]["task"]
        out[key]["below_ref"] = sum(int(r.get("n_below_ref", 0)) for r in rs)
        out[key]["n_images"] = sum(int(r.get("n_images", 0)) for r in rs)
    return out


def paired(rows: list[dict[str, Any]], setting: str, a: str, b: str, ipc: int,
           field: str = "psnr") -> list[float]:
    """Per-fold differences ``a - b`` of ``field`` (dB) on the folds where both ran.

    Example:
        >>> rs = [{"setting_id": "s", "method": m, "ipc": 2, "fold": f, "psnr": p}
        ...       for m, f, p in [("a", 0, 31.0), ("b", 0, 30.0), ("a", 1, 30.0)]]
        >>> paired(rs, "s", "a", "b", 2)
        [1.0]
    """
    by = {(r["method"], r["fold"]): r.get(field) for r in rows
          if r["setting_id"] == setting and r["ipc"] == ipc and r.get(field) is not None}
    folds = sorted({f for m, f in by if m == a} & {f for m, f in by if m == b})
    return [by[(a, f)] - by[(b, f)] for f in folds]


def counterpart(label: str) -> str:
    """The row a lever is compared with: the default ``spg_gm`` for a distillation variant,
    the same package without the training variant for ``x@variant``.

    Example:
        >>> counterpart("spg_gm_tm"), counterpart("full@range"), counterpart("prior_only")
        ('spg_gm', 'full', 'spg_gm')
    """
    base, _, variant = label.partition("@")
    return base if variant else "spg_gm"


def lever_table(rows: list[dict[str, Any]], setting: str) -> list[str]:
    """Per-fold paired differences of every variant against its counterpart (PSNR on the
    held-out patients and on the head CTs), with the folds they share."""
    keys = sorted({(r["method"], r["ipc"]) for r in rows if r["setting_id"] == setting
                   and r["method"] not in ("full", "random", "spg_gm")})
    out = []
    for label, ipc in keys:
        base = counterpart(label)
        d = paired(rows, setting, label, base, ipc if base != "full" else 0)
        if not d:
            continue
        ood = paired(rows, setting, label, base, ipc if base != "full" else 0, "ood_psnr")
        folds = sorted({r["fold"] for r in rows if r["setting_id"] == setting
                        and r["method"] == label and r["ipc"] == ipc})
        out.append(f"| {label} | {base} | {ipc or 'all'} | "
                   + ", ".join(f"{x:+.2f}" for x in d) + f" | {statistics.mean(d):+.2f} | "
                   + (", ".join(f"{x:+.2f}" for x in ood) if ood else "–") + " | "
                   + ",".join(str(f) for f in folds) + " |")
    if not out:
        return []
    return ["| variant | against | IPC | ΔPSNR per fold (dB) | mean | Δ head-CT PSNR per fold "
            "| folds |", "|---|---|---|---|---|---|---|", *out]


def _plot(summary: dict[tuple[str, str, int], dict[str, Any]], setting: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in _ordered({k[1] for k in summary if k[0] == setting}):
        pts = sorted((k[2], statistics.mean(v["psnr"])) for k, v in summary.items()
                     if k[0] == setting and k[1] == m and k[2] > 0)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m,
                    linestyle="--" if m in REAL_SLICES else "-")
    full = [v for k, v in summary.items() if k[0] == setting and k[1] == "full"]
    if full:
        ax.axhline(statistics.mean(full[0]["psnr"]), color="k", lw=1, label="full data")
        ax.axhline(statistics.mean(full[0]["psnr_lq"]), color="gray", lw=1, ls=":",
                   label="LQ input")
    ax.set_xlabel("images per patient (IPC)")
    ax.set_ylabel("PSNR on held-out patients (dB)")
    ax.set_title(f"{setting}: PSNR vs IPC (dashed = ships real slices)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


#: columns of the image grid, left to right (when their fold-0 package exists)
GRID_METHODS = ("random", "prior_only", "spg_gm", "pixel_gm", "dc_real", "dc_noise", "dm",
                "idc", "tripled")


def image_grid(work: Path, setting: str, out: Path) -> int:
    """The first shipped HQ image of every site patient of fold 0 (rows) for every method of
    :data:`GRID_METHODS` whose fold-0 package the run wrote (columns), at IPC 2 when the
    default's package exists there (else 1, then 5); returns that IPC (0: nothing to show).
    The images come from the packages themselves (``read_package``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medidd.package import read_package

    root = work / "packages" / setting

    def package(method: str, ipc: int) -> Path | None:
        path = root / f"{method}-ipc{ipc}-fold0"
        return path if (path / "manifest.json").is_file() else None

    ipc = next((k for k in (2, 1, 5) if package("spg_gm", k)), 0) or next(
        (k for k in (2, 1, 5) if any(package(m, k) for m in GRID_METHODS)), 0)
    columns = [m for m in GRID_METHODS if ipc and package(m, ipc)]
    if not columns:
        return 0
    pkgs = {m: read_package(package(m, ipc)) for m in columns}  # type: ignore[arg-type]
    patients = [p.key for p in pkgs[columns[0]].manifest.patients]
    fig, axes = plt.subplots(len(patients), len(columns),
                             figsize=(1.8 * len(columns), 1.9 * len(patients)), squeeze=False)
    lo, hi = (0.35, 0.65) if not setting.startswith("mr") else (0.0, 1.0)
    for col, name in enumerate(columns):
        pkg = pkgs[name]
        starts = {p.key: p.start for p in pkg.manifest.patients}
        for row, key in enumerate(patients):
            ax = axes[row][col]
            ax.axis("off")
            if key in starts:
                ax.imshow(pkg.hq[starts[key], 0].numpy(), cmap="gray", vmin=lo, vmax=hi)
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.text(-0.1, 0.5, key, fontsize=6, rotation=90, va="center", ha="right",
                        transform=ax.transAxes)
    fig.suptitle(f"{setting}: first shipped HQ image per patient (rows), IPC {ipc}, fold 0",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return ipc


def default_grid(work: Path, setting: str, out: Path, samples: Path,
                 default: str = "spg_gm") -> bool:
    """What the default ships (fold 0, IPC 2: the first image of each site patient) beside
    its prior (the ``prior_only`` package: the same prior fitted the same way) and the nearest
    real slice of the site (NCC over every slice); False when a package is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.distill_bench import SETTINGS, cohort, folds
    from medidd.package import read_package
    from medidd.privacy.memorisation import nearest_real, nearest_view
    from medidd.train import stack_images

    root = work / "packages" / setting
    paths = [root / f"{m}-ipc2-fold0" for m in ("prior_only", default)]
    if not all((p / "manifest.json").is_file() for p in paths):
        return False
    prior, shipped = (read_package(p) for p in paths)
    modality = SETTINGS[setting]["modality"]
    fold = folds(cohort(samples, work, modality), modality)[0]
    real = stack_images([p.slices for p in fold.site])
    starts = {p.key: p.start for p in shipped.manifest.patients}
    pstarts = {p.key: p.start for p in prior.manifest.patients}
    keys = [k for k in starts if k in pstarts]
    first = torch.stack([shipped.hq[starts[k]] for k in keys])
    sims, idx = nearest_real(first, real)
    lo, hi = (0.35, 0.65) if modality == "CT" else (0.0, 1.0)
    fig, axes = plt.subplots(len(keys), 3, figsize=(5.4, 1.9 * len(keys)), squeeze=False)
    for row, k in enumerate(keys):
        near = real[int(idx[row])]
        near = nearest_view(first[row], near)  # patch packages: the nearest window
        images = (prior.hq[pstarts[k]], first[row], near)
        titles = ("prior", default, f"nearest real (NCC {float(sims[row]):.2f})")
        for col, (img, title) in enumerate(zip(images, titles, strict=True)):
            ax = axes[row][col]
            ax.axis("off")
            ax.imshow(img[0].numpy(), cmap="gray", vmin=lo, vmax=hi)
            if row == 0 or col == 2:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"{setting}: what {default} ships (fold 0, IPC 2) beside its prior and the "
                 "nearest real slice", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return True


def _table(summary: dict[tuple[str, str, int], dict[str, Any]], keys: list[tuple[str, str, int]],
           ood: bool) -> list[str]:
    head = ("| method | IPC | PSNR | SSIM | gain | NN-NCC max | below ref | ref | s/patient | "
            "bytes | folds | machine |")
    if ood:
        head = head.replace("| folds |", "| head CT PSNR | folds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    setting = keys[0][0]
    for m in _ordered({k[1] for k in keys}):
        for ipc in sorted({k[2] for k in keys if k[1] == m}):
            v = summary[(setting, m, ipc)]
            below = (f"{v['below_ref']}/{v['n_images']}" if m.partition("@")[0] != "full"
                     else "–")
            cells = [m, str(ipc or "all"), _ms(v["psnr"]), _ms(v["ssim"], "{:.3f}"),
                     f"{_ms([100 * g for g in v['gain_retained']], '{:.0f}')}%",
                     _ms(v["max_nn_ncc"], "{:.3f}"), below, _ms(v["nn_ncc_p99_ref"], "{:.3f}"),
                     _ms(v["distill_s_per_patient"], "{:.1f}"),
                     f"{_ms([100 * b for b in v['bytes_ratio']], '{:.2f}')}%"]
            if ood:
                cells.append(_ms(v["ood_psnr"]))
            cells += [str(v["folds"]), ", ".join(v["machines"])]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(work: Path, out: Path, samples: Path = Path("data/samples")) -> Path:
    """Write ``distill.md``/``distill.json``/plots under ``out`` from the rows under ``work``
    (rows of earlier cohorts already in ``out/distill.json`` are kept in the JSON)."""
    rows = load_rows(work, out / "distill.json")
    shown = [r for r in rows if r["cohort"] == CURRENT]
    if not shown:
        raise SystemExit(f"no benchmark rows of cohort {CURRENT} under {work}: run the `run` "
                         "stage first")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "distill.json", json.dumps(rows, indent=1))
    summary = summarise(shown)
    machines: dict[str, int] = defaultdict(int)
    for r in shown:
        m = r.get("machine", {})
        machines[f"{machine_label(m)}, torch {m.get('torch')}"] += 1
    older = sorted({r["cohort"] for r in rows} - {CURRENT})
    lines = [
        "# Distillation benchmark",
        "",
        f"Cohort {CURRENT}, through the product's code path (`code_path: product`): the real "
        "samples as a hospital DICOM tree, the site's ingestion and preprocessing, "
        "`distill_site` (what `medidd-node distill` runs) writing a real package, and "
        "`train_and_score` (the one measurement path: downstream DnCNN trained on the "
        "package's HQ with LQ re-drawn every epoch, scored on every slice of the held-out "
        "patients with LQ from `heldout_lq`). Patient-level folds: CT = the 10 body CTs in 5 "
        "folds of 2 held out (site of 8); MR = the 7 MR subjects in 4 folds. Mean ± std over "
        "folds. `gain` = share of the full-data PSNR gain over the LQ input kept; `NN-NCC "
        "max` = highest NCC between any shipped image and any real slice of the site "
        "(near-copy line 0.95); `ref` = the fold's ideal line (99th percentile of "
        "nearest-other-patient NCC); `below ref` = shipped images under it / all; `bytes` = "
        "package arrays / raw int16 voxels of the site; `head CT PSNR` = the same model on the "
        "2 head CTs, never at any site (out of distribution; their LQ input and full-data "
        "scores are in the text below each table).",
        "",
        "Machines: " + "; ".join(f"{label} ({n} rows)" for label, n in sorted(machines.items()))
        + f". Downstream: DnCNN, {shown[-1].get('steps')} steps. Reproduce: `make bench` (or "
        "`python -m benchmarks.distill_bench all`; `--settings/--methods/--ipc` for a part).",
        "",
    ]
    if older:
        lines += [f"Rows of earlier cohorts ({', '.join(older)}: 4 CT / 3 MR patients, "
                  "leave-one-out, measured with the benchmark's own copy of distillation) stay "
                  "in distill.json with their `cohort`; they are not comparable with these.", ""]
    for setting in sorted({r["setting_id"] for r in shown}):
        keys = [k for k in summary if k[0] == setting]
        s0 = summary[keys[0]]
        ood = any(v == v for k in keys for v in summary[k]["ood_psnr"])
        lines += [f"## {s0['task']} {s0['setting']} ({setting})", ""]
        folds = sorted({r["fold"] for r in shown if r["setting_id"] == setting})
        lines += ["Folds measured: " + ", ".join(map(str, folds)) + " (a row's `folds` "
                  "column says how many of them it has; the design above is the full plan).",
                  ""]
        lines += _table(summary, keys, ood)
        lq = summary[keys[0]]["psnr_lq"]
        lines += ["", f"LQ input PSNR: {_ms(lq)} dB."]
        full = summary.get((setting, "full", 0))
        if ood and full is not None:
            lines.append(f"Head CTs (out of distribution): LQ input {_ms(full['ood_psnr_lq'])} "
                         f"dB, full-data model {_ms(full['ood_psnr'])} dB.")
        for ipc in sorted({k[2] for k in keys if k[1] == "spg_gm"}):
            for other in ("prior_only", "random"):
                d = paired(shown, setting, "spg_gm", other, ipc)
                if d:
                    lines.append(f"Paired per fold, spg_gm − {other} at IPC {ipc}: "
                                 + ", ".join(f"{x:+.2f}" for x in d) + " dB.")
        levers = lever_table(shown, setting)
        if levers:
            lines += ["", "Each variant against its counterpart, paired per fold (the same "
                      "held-out patients; positive = the variant is better):", "", *levers]
        lines += ["", f"![PSNR vs IPC]({setting}_psnr_vs_ipc.png)", ""]
        _plot(summary, setting, out / f"{setting}_psnr_vs_ipc.png")
        grid = out / f"{setting}_images.png"
        ipc_shown = image_grid(work, setting, grid)
        if ipc_shown:
            lines += [f"Shipped HQ images at IPC {ipc_shown} (fold 0's packages; the first per "
                      "patient; rows: patients, columns: methods):", "",
                      f"![distilled images]({grid.name})", ""]
        beside = out / f"{setting}_default_vs_prior.png"
        if default_grid(work, setting, beside, samples):
            lines += ["The default's shipped image beside its prior and the nearest real slice "
                      "of the site:", "", f"![default beside prior]({beside.name})", ""]
    path = out / "distill.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
