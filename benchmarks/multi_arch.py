"""Where distillation pays: one package set trains several downstream architectures.

The distilled packages are sent once; any architecture can then be trained on them at the
aggregator with no further federated round. FedAvg has to run once per architecture, and each
round moves the model down to and up from every node. This script trains DnCNN, RED-CNN and a
small UNet on ONE package set (the demo's by default), scores each on the held-out real slices
of the sites (patients never in a package), and sets the bytes on the wire side by side:

* distillation: the package bytes (hq + lq + manifest), sent once, whatever the architecture;
* FedAvg: ``state_dict`` bytes x 2 (down and up) x rounds x nodes, per architecture.

It is a thin script over the library (``read_package``, ``build_degradation``,
``train_and_score``, ``prepare_patients``); the demo's held-out patients are the folders of
``<site>/dicom`` that are not in ``<site>/train``.

Run (after ``make demo``)::

    .venv/bin/python -m benchmarks.multi_arch --demo out/demo --steps 300

Measured: 18 min on 2 CPU cores shared with two other jobs (load ~7; the training times in
the table); about a third of that on idle cores. ``--steps 100`` for a quick look;
``--replot`` re-draws the .md and .png from the .json without training.

Writes docs/benchmarks/multi_arch.{md,json,png}.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: The downstream architectures: label -> NetConfig fields (small, CPU-sized).
ARCHS: dict[str, dict[str, Any]] = {
    "DnCNN": {"name": "dncnn", "width": 16, "depth": 5},
    "RED-CNN": {"name": "redcnn", "width": 16, "depth": 3},
    "UNet": {"name": "unet", "width": 8, "depth": 3},
}


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's ``state_dict`` as FedAvg ships it (safetensors-like: raw tensors)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def package_bytes(path: Path) -> int:
    """Bytes of every file in a package folder (what a node sends once)."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def heldout_slices(site: Path, max_slices: int) -> list[torch.Tensor]:
    """The held-out real slices of a demo site: patients under ``dicom/`` not under ``train/``."""
    from medidd.io.discover import folder_patient_key
    from medidd.preprocess.cohort import prepare_patients

    salt = (site / "salt").read_bytes()
    members = {folder_patient_key(d.name, salt) for d in (site / "train").iterdir() if d.is_dir()}
    prep = prepare_patients(site / "dicom", salt=salt, cache_dir=site.parent / "cache-multi-arch")
    out = []
    for s in prep.slices:
        if s.patient_key not in members:
            step = max(1, s.images.shape[0] // max_slices)
            out.append(s.images[::step][:max_slices])
    return out


def run(demo: Path, steps: int, rounds: int, max_slices: int, seed: int) -> dict[str, Any]:
    """Train every architecture on the package union and score it; the bytes comparison."""
    from medidd.degrade import build_degradation
    from medidd.package import read_package
    from medidd.train import TrainConfig, train_and_score
    from medidd.train.score import heldout_lq

    sites = sorted(p for p in demo.glob("hospital-*") if (p / "distilled").is_dir())
    if not sites:
        raise SystemExit(f"no packages under {demo}/hospital-*/distilled: run `make demo` first")
    packages = [read_package(s / "distilled") for s in sites]
    spec = packages[0].manifest.degradation
    window = tuple(packages[0].manifest.window)
    degrade = build_degradation(spec, window)  # type: ignore[arg-type]
    hq = torch.cat([p.hq for p in packages])
    lq = torch.cat([p.lq for p in packages])
    test_hq = torch.cat([x for s in sites for x in heldout_slices(s, max_slices)])
    test_lq = heldout_lq(test_hq, degrade, eval_seed=seed)
    pkg_bytes = sum(package_bytes(s / "distilled") for s in sites)
    rows = []
    for label, net in ARCHS.items():
        cfg = TrainConfig(net=net, steps=steps, batch_size=16, patch_size=48, lr=1e-3, seed=seed,
                          redraw_lq=False)
        t0 = time.perf_counter()
        scored = train_and_score(hq, test_hq, cfg, degrade, train_lq=lq, eval_seed=seed,
                                 test_lq=test_lq)
        mbytes = state_bytes(scored.model)
        rows.append({
            "arch": label, "net": net, "params": sum(p.numel() for p in scored.model.parameters()),
            "model_bytes": mbytes, "psnr": scored.eval.psnr, "ssim": scored.eval.ssim,
            "psnr_lq": scored.eval.psnr_lq, "train_s": time.perf_counter() - t0,
            "fedavg_bytes": mbytes * 2 * rounds * len(sites),
        })
        logger.info("%s: PSNR %.2f dB (LQ %.2f)", label, scored.eval.psnr, scored.eval.psnr_lq)
    return {
        "packages": [str(s / "distilled") for s in sites], "n_nodes": len(sites),
        "n_train_images": int(hq.shape[0]), "n_test_slices": int(test_hq.shape[0]),
        "degradation": dict(spec) if isinstance(spec, dict) else str(spec),
        "steps": steps, "fedavg_rounds": rounds, "package_bytes": pkg_bytes,
        "distill_bytes_all_archs": pkg_bytes,
        "fedavg_bytes_all_archs": sum(r["fedavg_bytes"] for r in rows), "rows": rows,
    }


def figure(result: dict[str, Any]) -> bytes:
    """Bytes on the wire per architecture (log scale) and held-out PSNR (dB)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2)
    for r in rows:
        ax.scatter(r["model_bytes"] / 1e3, r["fedavg_bytes"] / 1e3, s=40)
        ax.annotate(f"FedAvg {r['arch']}", (r["model_bytes"] / 1e3, r["fedavg_bytes"] / 1e3),
                    fontsize=8, xytext=(-10, 7), textcoords="offset points")
    ax.axhline(result["package_bytes"] / 1e3, color="tab:green", ls="--",
               label="distillation: packages, sent once for every architecture")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.25, y=0.2)
    ax.set_xlabel("model size (kB)")
    ax.set_ylabel("bytes on the wire (kB)")
    ax.set_title(f"per architecture ({result['fedavg_rounds']} FedAvg rounds, "
                 f"{result['n_nodes']} nodes)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    names = [r["arch"] for r in rows]
    bars = bx.bar(names, [r["psnr"] for r in rows], color="tab:blue",
                  label="trained on packages")
    bx.bar_label(bars, fmt="%.2f", fontsize=8)
    bx.axhline(rows[0]["psnr_lq"], color="k", ls=":", label="LQ input")
    values = [r["psnr"] for r in rows] + [r["psnr_lq"] for r in rows]
    bx.set_ylim(min(values) - 2, max(values) + 2)
    bx.set_ylabel("held-out PSNR (dB)")
    bx.set_title("one package set, three architectures", fontsize=9)
    bx.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def markdown(result: dict[str, Any]) -> str:
    """The table of docs/benchmarks/multi_arch.md."""
    lines = [
        "# Where distillation pays: one package set, several architectures",
        "",
        "Generated by `python -m benchmarks.multi_arch` (do not edit by hand). "
        f"{result['n_nodes']} nodes' packages ({result['n_train_images']} distilled pairs, "
        f"{result['package_bytes'] / 1e3:.0f} kB, sent once) train each architecture for "
        f"{result['steps']} steps at the aggregator; PSNR on {result['n_test_slices']} held-out "
        "real slices (patients never in a package). FedAvg bytes: state_dict bytes x 2 (down "
        f"and up) x {result['fedavg_rounds']} rounds x {result['n_nodes']} nodes, per "
        "architecture; FedAvg PSNR needs a federated run per architecture and is not measured "
        "here (the demo's DnCNN FedAvg run is in out/demo/report-fedavg).",
        "",
        "| architecture | params | model (kB) | PSNR (dB) | LQ PSNR (dB) | SSIM | train (s) "
        "| FedAvg bytes (kB) | distillation bytes (kB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['arch']} | {r['params']:,} | {r['model_bytes'] / 1e3:.1f} | {r['psnr']:.2f} "
            f"| {r['psnr_lq']:.2f} | {r['ssim']:.3f} | {r['train_s']:.0f} "
            f"| {r['fedavg_bytes'] / 1e3:.0f} | {result['package_bytes'] / 1e3:.0f} (shared) |")
    worse = [r["arch"] for r in result["rows"] if r["psnr"] < r["psnr_lq"]]
    if worse:
        lines += ["", f"Below the LQ input: {', '.join(worse)}: it did not learn the task in "
                  f"{result['steps']} steps on {result['n_train_images']} images at this "
                  "learning rate (not tuned per architecture); read its row as a failed run, "
                  "not as the architecture's ceiling."]
    lines += [
        "",
        f"All three architectures: FedAvg {result['fedavg_bytes_all_archs'] / 1e3:.0f} kB vs "
        f"distillation {result['distill_bytes_all_archs'] / 1e3:.0f} kB.",
        "",
        "![bytes and PSNR](multi_arch.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("out/demo"),
                        help="folder of a `make demo` run (hospital-*/distilled, dicom, train)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds to count bytes for")
    parser.add_argument("--max-slices", type=int, default=16, help="held-out slices per patient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--replot", action="store_true",
                        help="re-draw the .md and .png from the existing multi_arch.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    if args.replot:
        result = json.loads((args.out / "multi_arch.json").read_text())
    else:
        result = run(args.demo, args.steps, args.rounds, args.max_slices, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multi_arch.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "multi_arch.png").write_bytes(figure(result))
    (args.out / "multi_arch.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
