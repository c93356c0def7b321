"""The shared-prior benchmark on cohort v2, through the product's code path.

One fold of :mod:`benchmarks.distill_bench` (fold 0: its site patients, its held-out
patients) per setting (``ct25``: CT 25% dose; ``mr_x2``: MR x2 SR). The site's patients are
split over 3 simulated hospitals (every third patient by pseudonym). For each prior:

- ``shared`` at epsilon 1, 4, 8 and without noise (``none``): every hospital computes its
  contribution with :func:`medidd.prior.contribution.site_contribution` (the function the
  node's ClientApp calls: region grouping, z-binning, affine registration, clipping, noise),
  the contributions are summed (what SecAgg+ computes, without its quantisation) and
  divided by :func:`medidd.prior.shared.release`, written with
  :func:`~medidd.prior.shared.write_shared_prior`; the site distils with
  ``prior.kind=shared`` and ``prior.path`` (the region most of its patients show);
- ``shared_hires``: the same without noise at 64 px and without smoothing (not DP: what a
  pixel-space shared prior can give at best on this cohort);
- ``atlas``: the procedural phantom; ``mean_site``: the registered mean of one hospital's
  own patients (hospital 0);

the package is written by :func:`medidd.distill.run.distill_site` (method ``prior_only``,
IPC 2: the prior's own utility, no optimisation) and scored by
:func:`medidd.train.train_and_score` on the held-out patients (``steps`` training steps,
fewer than distill_bench's 800 on this 2-core machine). ``prior_max_nn_ncc`` is the highest
NCC of the prior's released images to any real slice of the three hospitals;
``nn_ncc_p99_ref`` the ideal line of the fold's site.

``round`` runs the real Flower prior round (simulation runtime, SecAgg+, audit) once per
modality at epsilon 4 on the same hospitals and records its bytes and wall time.

    python -m benchmarks.prior_bench run --work out/prior-bench --steps 150
    python -m benchmarks.prior_bench round --work out/prior-bench
    python -m benchmarks.prior_bench report --work out/prior-bench --out docs/benchmarks

Rows are appended to ``work/prior-rows.jsonl`` as they finish (a rerun skips them).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.distill_bench import (
    SETTINGS,
    Fold,
    Patient,
    _machine,
    cohort,
    folds,
    method_config,
    reference_line,
)

EPSILONS: tuple[float | None, ...] = (1.0, 4.0, 8.0, None)
PRIORS = ("shared", "atlas", "mean_site", "shared_hires")
N_HOSPITALS = 3
IPC = 2
#: the round's settings in the benchmark (bins = IPC: one bin per prior position)
PRIOR_SETTINGS: dict[str, Any] = {"bins": IPC, "release_size": 16, "clip_norm": 8.0,
                                  "count_weight": 4.0, "min_patients": 3,
                                  "smooth_sigma": 1.0, "registration_iterations": 50}


def hospitals(fold: Fold) -> list[list[Patient]]:
    """The fold's site patients split over the simulated hospitals."""
    return [fold.site[i::N_HOSPITALS] for i in range(N_HOSPITALS)]


def _eps_tag(epsilon: float | None) -> str:
    return "none" if epsilon is None else f"{epsilon:g}"


#: ``shared_hires``: the no-noise prior at 64 px without smoothing (not DP: the utility
#: ceiling of a pixel-space shared prior at this cohort size)
HIRES: dict[str, Any] = {"release_size": 64, "smooth_sigma": 0.0, "clip_norm": 64.0}


def shared_prior_folder(work: Path, setting: str, fold: Fold, epsilon: float | None,
                        hires: bool = False) -> Path:
    """Build (once) the shared prior of the fold's hospitals at ``epsilon``; its folder."""
    from medidd.prior.contribution import site_contribution
    from medidd.prior.region import REGIONS
    from medidd.prior.shared import GroupSums, SharedPriorConfig, release, write_shared_prior
    from medidd.seeds import derive

    modality = SETTINGS[setting]["modality"]
    folder = work / "priors" / f"{modality}-eps{_eps_tag(epsilon)}{'-hires' if hires else ''}"
    if (folder / "prior.json").is_file():
        return folder
    cfg = SharedPriorConfig.model_validate(
        PRIOR_SETTINGS | (HIRES if hires else {}) | {
            "epsilon": epsilon, "groups": [f"{modality}:{r}" for r in REGIONS[modality]]})
    totals: dict[str, GroupSums] = {}
    n_sites: Counter[str] = Counter()
    for i, h in enumerate(hospitals(fold)):
        rng = np.random.default_rng(derive(0, "prior-bench", modality, _eps_tag(epsilon), i))
        c = site_contribution([p.slices for p in h], cfg, rng=rng)
        for name, g in c.sums.items():
            n_sites[name] += name not in c.empty
            t = totals.setdefault(name, GroupSums.zeros(cfg.bins, cfg.release_size))
            t.sums += g.sums
            t.counts += g.counts
    window = fold.site[0].slices.window
    prior = release(totals, cfg, size=fold.site[0].slices.size, n_sites=dict(n_sites),
                    window=window if modality == "CT" else (-1000.0, 1000.0),
                    extra_statement={"sites": N_HOSPITALS, "benchmark": True})
    write_shared_prior(prior, folder)
    return folder


def _region(fold: Fold) -> str:
    from medidd.prior.region import guess_region

    return Counter(guess_region(p.slices) for p in fold.site).most_common(1)[0][0]


def prior_images(label: str, setting: str, fold: Fold, work: Path, epsilon: float | None
                 ) -> tuple[Any, dict[str, Any]]:
    """The Prior the site distils from (None: distill_site builds it from the config), and
    the config overrides; raises SharedPriorError when the needed bins were not released."""
    from medidd.prior import build_prior, shared_prior

    modality = SETTINGS[setting]["modality"]
    if label == "atlas":
        return None, {"prior": {"kind": "atlas"}}
    if label == "mean_site":
        first = [p.slices for p in hospitals(fold)[0]]
        window = first[0].window if modality == "CT" else (0.0, 1.0)
        return build_prior("mean", first, IPC, modality=modality, size=first[0].size,
                           window=window), {"prior": {"kind": "mean"}}
    folder = shared_prior_folder(work, setting, fold, epsilon, hires=label == "shared_hires")
    region = _region(fold)
    p = shared_prior(folder, [x.slices for x in fold.site], IPC, modality=modality,
                     size=fold.site[0].slices.size, region=region)
    return p, {"prior": {"kind": "shared", "path": str(folder), "region": region}}


def run(work: Path, settings: list[str], steps: int, epsilons: tuple[float | None, ...]
        ) -> None:
    """Every (setting, prior, epsilon) row not yet in ``work/prior-rows.jsonl``."""
    import medidd.distill  # noqa: F401  (registers the methods)
    from medidd.degrade import DegradationSpec, build_degradation
    from medidd.distill.config import DistillConfig
    from medidd.distill.run import distill_site
    from medidd.package import read_package
    from medidd.prior.shared import SharedPriorError
    from medidd.privacy.memorisation import nearest_real
    from medidd.train import TrainConfig, gain_retained, heldout_lq, stack_images, train_and_score

    rows_file = work / "prior-rows.jsonl"
    rows = [json.loads(x) for x in rows_file.read_text().splitlines()] \
        if rows_file.is_file() else []
    done = {(r["setting_id"], r["prior"], r["epsilon"]) for r in rows}
    for setting in settings:
        st = SETTINGS[setting]
        modality = st["modality"]
        fold = folds(cohort(Path("data/samples"), work, modality), modality)[0]
        window = fold.site[0].slices.window if modality == "CT" else (0.0, 1.0)
        degrade = build_degradation(DegradationSpec.model_validate(st["degradation"]), window)
        held = stack_images([p.slices for p in fold.held])
        held_lq = heldout_lq(held, degrade)
        site_real = stack_images([p.slices for p in fold.site])
        ref = reference_line(work, setting, fold)
        tcfg = TrainConfig.model_validate({"steps": steps, "seed": 0})
        full = next((r for r in rows if r["setting_id"] == setting and r["prior"] == "full"),
                    None)
        todo: list[tuple[str, float | None]] = [("full", None)]
        todo += [("shared", e) for e in epsilons] + [("atlas", None), ("mean_site", None),
                                                     ("shared_hires", None)]
        for label, eps in todo:
            if (setting, label, _eps_tag(eps)) in done:
                continue
            t0 = time.perf_counter()
            row: dict[str, Any] = {"setting_id": setting, "modality": modality,
                                   "prior": label, "epsilon": _eps_tag(eps), "ipc": IPC,
                                   "steps": steps, "fold": 0,
                                   "n_site_patients": len(fold.site),
                                   "nn_ncc_p99_ref": ref, "method": "prior_only"}
            if label == "full":
                hq = site_real
            else:
                try:
                    prior, changes = prior_images(label, setting, fold, work, eps)
                except SharedPriorError as exc:
                    row |= {"released": False, "note": str(exc)[:200], "psnr": None,
                            "psnr_lq": None, "gain_retained": None, "prior_max_nn_ncc": None}
                    _append(rows_file, row)
                    print(f"  {setting} {label} eps {_eps_tag(eps)}: not released", flush=True)
                    continue
                base = method_config("prior_only", setting, IPC).model_dump(mode="json")
                for section, values in changes.items():
                    base[section] = {**base[section], **values}
                if "audit" in base:  # the site audit's canaries are not what is measured
                    base["audit"] = {**base["audit"], "canaries": 0}
                cfg = DistillConfig.model_validate(base)
                out = work / "packages" / setting / f"{label}-eps{_eps_tag(eps)}"
                distill_site([p.slices for p in fold.site], cfg, out, overwrite=True,
                             prior=prior if label == "mean_site" else None)
                pkg = read_package(out)
                hq = pkg.hq
                if prior is not None:
                    row["prior_max_nn_ncc"] = float(nearest_real(prior.images, site_real)[0].max())
                if pkg.manifest.prior is not None:
                    row["prior_sha256"] = pkg.manifest.prior.sha256
                row["released"] = True
            scored = train_and_score(hq, held, tcfg, degrade, test_lq=held_lq)
            ev = scored.eval
            if label == "full":
                full = {"psnr": ev.psnr}
            assert full is not None
            row |= {"psnr": ev.psnr, "psnr_lq": ev.psnr_lq, "ssim": ev.ssim,
                    "psnr_full": full["psnr"],
                    "gain_retained": gain_retained(ev.psnr, ev.psnr_lq, full["psnr"]),
                    "wall_s": time.perf_counter() - t0, "machine": _machine()}
            _append(rows_file, row)
            rows.append(row)
            print(f"  {setting} {label} eps {_eps_tag(eps)}: {ev.psnr:.2f} dB (LQ "
                  f"{ev.psnr_lq:.2f}), {time.perf_counter() - t0:.0f} s", flush=True)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def flower_round(work: Path, setting: str, epsilon: float = 4.0) -> dict[str, Any]:
    """The real prior round (simulation runtime) on the fold's hospitals: bytes and time."""
    from aggregator.run import prior_simulation
    from medidd.federation.config import FederationConfig
    from medidd.prior.region import REGIONS

    modality = SETTINGS[setting]["modality"]
    fold = folds(cohort(Path("data/samples"), work, modality), modality)[0]
    tree = work / f"dicom_{modality.lower()}"
    names = {p.key: p.name for p in fold.site}
    nodes = []
    for i, h in enumerate(hospitals(fold)):
        folder = work / "hospitals" / modality / f"h{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for p in h:
            link = folder / names[p.key]
            if not link.exists():
                link.symlink_to((tree / names[p.key]).resolve())
        nodes.append({"name": f"hospital-{i}", "patients": str(folder),
                      "salt_file": str(work / "salt"), "cache_dir": str(work / "cache" / "h")})
    from benchmarks.distill_bench import SALT

    (work / "salt").write_bytes(SALT)
    cfg = FederationConfig.model_validate({
        "prior": PRIOR_SETTINGS | {"epsilon": epsilon,
                                   "groups": [f"{modality}:{r}" for r in REGIONS[modality]]},
        "prior_round": {"min_sites": 3}, "nodes": nodes,
        "timeouts": {"wait_for_nodes_s": 30}})
    out = work / "round" / modality
    t0 = time.perf_counter()
    report = dict(prior_simulation(cfg, out, cpus=2))
    keep = {k: report.get(k) for k in ("status", "error", "bytes_up", "bytes_down", "stages",
                                       "groups", "prior_sha256", "wall_s")}
    keep |= {"modality": modality, "epsilon": epsilon, "total_s": time.perf_counter() - t0,
             "audit_status": (report.get("audit") or {}).get("status")}
    path = work / "prior-round.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[modality] = keep
    path.write_text(json.dumps(data, indent=1, default=str))
    return keep


def noise_table(epsilons: tuple[float, ...] = (1.0, 4.0, 8.0),
                patients: tuple[int, ...] = (3, 10, 100, 1000, 10000)) -> list[dict[str, Any]]:
    """Standard deviation of the DP noise on one pixel of the released mean (before
    smoothing, in [0, 1] units) for ``n`` patients in a bin across 3 sites, each site adding
    its own noise: ``sqrt(3) * sigma * sensitivity / n`` with the benchmark's settings.

    Example:
        >>> rows = noise_table((4.0,), (1000,))
        >>> round(rows[0]["pixel_std"], 2)
        0.02
    """
    from medidd.prior.shared import SharedPriorConfig, noise_std

    out = []
    for eps in epsilons:
        std = noise_std(SharedPriorConfig.model_validate(PRIOR_SETTINGS | {"epsilon": eps}))
        for n in patients:
            out.append({"epsilon": eps, "n_patients": n,
                        "pixel_std": math.sqrt(N_HOSPITALS) * std / n,
                        "count_std": math.sqrt(N_HOSPITALS) * std
                        / PRIOR_SETTINGS["count_weight"]})
    return out


def _f(x: Any, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def markdown(data: dict[str, Any]) -> str:
    """``prior.md``: how the numbers were made, then the tables of ``prior.json``."""
    lines = [
        "# Shared-prior benchmark (cohort v2, fold 0, 3 simulated hospitals)",
        "",
        "Generated by `python -m benchmarks.prior_bench report` from `prior.json` (rows of "
        "`python -m benchmarks.prior_bench run --work out/prior-bench --steps "
        f"{data['rows'][0]['steps'] if data['rows'] else 150}` and the Flower round of "
        "`python -m benchmarks.prior_bench round`). Method and settings: "
        "[../prior.md](../prior.md) and the module doc of `benchmarks/prior_bench.py`.",
        "",
        "Reduced for a 2-core machine shared with other work: **one fold** (fold 0 of "
        "`distill_bench`), method `prior_only` at IPC 2 (the prior's own utility, no "
        "optimisation), the downstream DnCNN trained for the steps above instead of 800, "
        "one seed. Differences below ~0.5 dB are within what one fold and one seed can tell "
        "apart. Prior settings: " + ", ".join(f"`{k}={v}`" for k, v in data["settings"].items())
        + ". `shared_hires` is the no-noise prior at 64 px without smoothing (not DP).",
        "",
        "| setting | prior | epsilon | released | PSNR dB | LQ PSNR dB | gain retained | "
        "prior max NN-NCC | ideal line (p99) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['setting_id']} | {r['prior']} | {r['epsilon']} | "
            f"{'—' if r['prior'] == 'full' else ('yes' if r.get('released') else 'no')} | "
            f"{_f(r.get('psnr'))} | {_f(r.get('psnr_lq'))} | {_f(r.get('gain_retained'), 3)} | "
            f"{_f(r.get('prior_max_nn_ncc'), 3)} | {_f(r.get('nn_ncc_p99_ref'), 3)} |")
    for r in data["rows"]:
        if r["prior"] == "full" and r.get("psnr") is not None and r["psnr"] - r["psnr_lq"] < 0.5:
            lines += ["", f"{r['setting_id']}: the model trained on all the site's real slices "
                      f"gains only {r['psnr'] - r['psnr_lq']:.2f} dB over the LQ input at "
                      "these steps, so `gain retained` (a ratio over that gain) means nothing "
                      "there: compare the PSNR columns."]
    lines += ["", "Not released: the noisy patient count of a needed bin was below "
              "`min_patients` (the distillation then refuses the shared prior, naming the "
              "bins). `prior max NN-NCC`: the highest NCC of the prior images the site "
              "distilled from to any real slice of the three hospitals."]
    lines += ["", "## The Flower round (simulation runtime, SecAgg+, epsilon 4)", "",
              "Payload bytes of every message of the round (the 4 SecAgg+ stages and the audit "
              "round, which sends the released prior's files to each node: most of the bytes "
              "down); its noise is drawn afresh, so which bins pass `min_patients` differs "
              "from the rows above.", "",
              "| modality | status | bytes up | bytes down | ServerApp wall s | total s "
              "| audit | groups released (bins) |", "|---|---|---|---|---|---|---|---|"]
    for m, r in data["rounds"].items():
        groups = ", ".join(f"{g}: {sum(v['released'])}/{len(v['released'])}"
                           for g, v in (r.get("groups") or {}).items())
        lines.append(f"| {m} | {r['status']} | {r['bytes_up']:,} | {r['bytes_down']:,} | "
                     f"{_f(r.get('wall_s'), 1)} | {_f(r.get('total_s'), 1)} | "
                     f"{r.get('audit_status')} | {groups} |")
    lines += ["", "## DP noise on one pixel of the released mean (3 sites, before smoothing)",
              "", "| epsilon | patients per bin | pixel std ([0, 1] units) | count std "
              "(patients) |", "|---|---|---|---|"]
    for r in data["noise_table"]:
        lines.append(f"| {r['epsilon']:g} | {r['n_patients']:,} | {r['pixel_std']:.3g} | "
                     f"{r['count_std']:.2g} |")
    lines += ["", "![prior slices per region and epsilon](prior.png)", ""]
    return "\n".join(lines)


def report(work: Path, out: Path) -> None:
    """``prior.json`` (rows + rounds) and a PNG of the prior slices per region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medidd.prior.shared import read_shared_prior

    rows = [json.loads(x) for x in (work / "prior-rows.jsonl").read_text().splitlines()]
    rounds_file = work / "prior-round.json"
    rounds = json.loads(rounds_file.read_text()) if rounds_file.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    data = {"rows": rows, "rounds": rounds, "settings": PRIOR_SETTINGS,
            "noise_table": noise_table()}
    (out / "prior.json").write_text(json.dumps(data, indent=1))
    (out / "prior.md").write_text(markdown(data))  # the reading is in docs/prior.md
    folders = sorted((work / "priors").glob("*-eps*"))
    panels = []
    for folder in folders:
        p = read_shared_prior(folder)
        for name, g in sorted(p.groups.items()):
            for k in range(g.images.shape[0]):
                panels.append((f"{name} eps={folder.name.split('eps')[1]} bin {k}"
                               + ("" if bool(g.released[k]) else " (not released)"),
                               g.images[k, 0].numpy()))
    cols = 4
    rows_n = max(1, (len(panels) + cols - 1) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3 * cols, 3 * rows_n))
    for ax, (title, img) in zip(np.ravel(axes), panels, strict=False):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "prior.png", dpi=80)


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("run", "round", "report"))
    ap.add_argument("--work", type=Path, default=Path("out/prior-bench"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--settings", default="ct25,mr_x2")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--epsilons", default="1,4,8,none")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    settings = a.settings.split(",")
    if a.command == "run":
        eps = tuple(None if e == "none" else float(e) for e in a.epsilons.split(","))
        run(a.work, settings, a.steps, eps)
    elif a.command == "round":
        for s in settings:
            print(json.dumps(flower_round(a.work, s), default=str)[:400], flush=True)
    else:
        report(a.work, a.out)


if __name__ == "__main__":
    main()
