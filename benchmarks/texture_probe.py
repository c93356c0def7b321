"""What makes a private synthetic CT set teach a denoiser? One-fold probes behind ``fit_size``.

The distillation benchmark showed the procedural atlas keeping ~75% of the full-data PSNR gain
and SPG-GM adding nothing on top. This probe trains the benchmark's DnCNN (800 steps, 48-px
patches, LQ re-drawn) on hand-made HQ sets from the same fold and scores each on every slice of
the held-out patient, to find which property of the synthetic HQ matters:

- ``atlas``: the atlas prior at IPC 2 (what ``prior_only`` shipped before ``fit_size``);
- ``atlas_hq_noise``: the atlas plus the full-dose noise the low-dose model assumes a real HQ
  carries (inserted as the 50%-dose difference, i.e. variance V(I0));
- ``dead_leaves``: dead-leaves images (occluding ellipses, power-law sizes, CT-like HU
  mixture) inside a body ellipse: the "generic natural-image statistics" prior of
  Achddou et al. (2021) for denoisers;
- ``atlas_leaves``: the atlas with small dead leaves sprinkled inside the body (texture);
- ``atlas_dose=D``: the atlas trained at another dose (noise level) than the test's 25%;
- ``atlas_fit``: the atlas zoomed to each training patient's water-equivalent diameter
  (:func:`medidd.prior.fit.fit_to_size`, what ``prior.fit_size`` now does);
- ``atlas_fit_dose=D``: both.

Run (2 CPU cores: ~3 min per variant; the cohort and folds of ``distill_bench``: body CTs,
patient-level folds, scored with :func:`medidd.train.train_and_score`):

    python -m benchmarks.texture_probe --work out/bench/distill --fold 0

Writes docs/benchmarks/texture_probe.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medidd.atomic import atomic_write_text
from medidd.degrade import DegradationSpec, build_degradation, draw_lq
from medidd.lookup import look_up_option
from medidd.prior.fit import fit_to_size, water_equivalent_diameter
from medidd.seeds import derive
from medidd.train import (
    TrainConfig,
    gain_retained,
    heldout_lq,
    score_model,
    stack_images,
    train_enhancer,
)

#: dead-leaves HU mixture: (weight, mean HU, std HU) of lung, fat, soft tissue, contrast,
#: bone, air
HU_MIXTURE = ((0.15, -850.0, 60.0), (0.25, -100.0, 30.0), (0.35, 45.0, 25.0),
              (0.10, 200.0, 80.0), (0.10, 600.0, 250.0), (0.05, -1000.0, 5.0))
VARIANTS = ("full", "atlas", "atlas_hq_noise", "dead_leaves", "atlas_leaves", "atlas_dose=0.15",
            "atlas_dose=0.4", "atlas_fit", "atlas_fit_dose=0.2")


def dead_leaves(
    n: int,
    seed: int,
    window: tuple[float, float],
    base_hu: torch.Tensor | None = None,
    *,
    r_max: float = 30.0,
    count: int = 4000,
) -> torch.Tensor:
    """A (1, n, n) dead-leaves image in window units: ellipses front to back, radii drawn from
    a 1/r^3 law in [0.7, r_max] px, HU from :data:`HU_MIXTURE`, rendered at 2n and
    area-downsampled. With ``base_hu`` (n x n, HU) the leaves cover it only where they fall
    (sprinkles); otherwise a body ellipse of random size is cut out of a full field."""
    g = torch.Generator().manual_seed(seed)
    size = 2 * n
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(),
                            indexing="ij")
    if base_hu is None:
        img = torch.full((size, size), 45.0)
    else:
        img = F.interpolate(base_hu.reshape(1, 1, n, n), size=(size, size))[0, 0].clone()
    filled = torch.zeros(size, size, dtype=torch.bool)
    weights = torch.tensor([w for w, _, _ in HU_MIXTURE])
    lo_r, hi_r = 0.7**-2, r_max**-2
    for _ in range(count):
        u = float(torch.rand((), generator=g))
        r = 2.0 * (lo_r - u * (lo_r - hi_r)) ** -0.5
        cy, cx = (float(v) for v in torch.rand(2, generator=g) * size)
        ecc = 0.3 + 0.7 * float(torch.rand((), generator=g))
        th = math.pi * float(torch.rand((), generator=g))
        _, mean, std = HU_MIXTURE[int(torch.multinomial(weights, 1, generator=g))]
        hu = mean + std * float(torch.randn((), generator=g))
        c, s = math.cos(th), math.sin(th)
        du = ((xx - cx) * c + (yy - cy) * s) / r
        dv = (-(xx - cx) * s + (yy - cy) * c) / (r * ecc)
        leaf = (du * du + dv * dv <= 1) & ~filled
        img[leaf] = hu
        filled |= leaf
        if base_hu is None and bool(filled.all()):
            break
    if base_hu is None:
        ax = torch.linspace(-1, 1, size)
        ay, axx = torch.meshgrid(ax, ax, indexing="ij")
        ry = 0.5 + 0.15 * float(torch.rand((), generator=g))
        rx = 0.75 + 0.15 * float(torch.rand((), generator=g))
        img[((ay - 0.05) / ry) ** 2 + (axx / rx) ** 2 > 1] = -1000.0
    lo, hi = window
    out = ((img - lo) / (hi - lo)).clamp(0, 1)
    return F.interpolate(out[None, None], size=(n, n), mode="area")[0]


def _lowdose(dose: float, window: tuple[float, float]) -> Any:
    return build_degradation(DegradationSpec(kind="ct_lowdose", dose=dose), window=window)


def training_set(variant: str, site: list[Any], atlas: torch.Tensor,
                 window: tuple[float, float]) -> tuple[torch.Tensor, float]:
    """(HQ images, training dose) of one variant; ``atlas`` is the fold's IPC-2 atlas."""
    name, _, arg = variant.partition("=")
    dose = float(arg) if arg else 0.25
    per_patient = [atlas] * len(site)
    if name.startswith("atlas_fit"):
        per_patient = [fit_to_size_images(atlas, p.images, window) for p in site]
    if name == "full":
        return torch.cat([p.images for p in site]), dose
    if name == "atlas_hq_noise":
        return draw_lq(torch.cat(per_patient), _lowdose(0.5, window), 0, "hq-noise"), dose
    if name == "dead_leaves":
        n = atlas.shape[-1]
        return torch.stack([dead_leaves(n, derive(0, "leaves", i), window)
                            for i in range(len(site) * len(atlas))]), dose
    if name == "atlas_leaves":
        lo, hi = window
        images = []
        for i, a in enumerate(torch.cat(per_patient)):
            hu = lo + a[0] * (hi - lo)
            img = dead_leaves(a.shape[-1], derive(0, "leaves", i), window, hu, r_max=6.0,
                              count=600)
            img[a < 0.02] = 0.0  # keep the air around the body
            images.append(img)
        return torch.stack(images), dose
    return torch.cat(per_patient), dose


def fit_to_size_images(atlas: torch.Tensor, real: torch.Tensor,
                       window: tuple[float, float]) -> torch.Tensor:
    from medidd.prior.base import Prior

    prior = Prior(atlas, torch.linspace(0, 1, len(atlas)), "atlas", False)
    return fit_to_size(prior, real, window)[0].images


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from benchmarks.distill_bench import cohort, folds
    from medidd.prior import build_prior

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("out/bench/distill"))
    ap.add_argument("--samples", type=Path, default=Path("data/samples"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the page from the stored texture_probe.json (no training)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    fold = folds(cohort(a.samples, a.work, "CT"), "CT")[a.fold]
    site = [p.slices for p in fold.site]
    held = stack_images([p.slices for p in fold.held])
    window = site[0].window
    atlas = build_prior("atlas", site, 2, modality="CT", size=site[0].size,
                        window=window).images.float()
    test = _lowdose(0.25, window)
    test_lq = heldout_lq(held, test)
    cfg = TrainConfig.model_validate({"steps": a.steps, "device": "cpu", "seed": a.fold})
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:  # unknown names fail before any training, with a did-you-mean
        look_up_option(v, VARIANTS, what="texture probe variant")
    px = 400.0 / atlas.shape[-1]  # the low-dose model's default field of view
    atlas_d = water_equivalent_diameter(atlas, window, px)
    real_d = torch.cat([water_equivalent_diameter(p.images, window, px) for p in site])
    wed = {"atlas": f"{float(atlas_d.min()):.0f}-{float(atlas_d.max()):.0f}",
           "patients": f"{float(real_d.min()):.0f}-{float(real_d.max()):.0f}"}
    rows: list[dict[str, Any]] = []
    stored = a.out / "texture_probe.json"
    if a.report_only:
        if not stored.is_file():
            raise SystemExit(f"--report-only: {stored} does not exist; run without it first")
        rows = [r for r in json.loads(stored.read_text()) if r["fold"] == a.fold]
        variants = []
    for variant in variants:
        hq, dose = training_set(variant, site, atlas, window)
        t0 = time.perf_counter()
        # trained at ``dose``, scored on the test's 25% dose
        res = train_enhancer(hq, None, cfg, degrade=_lowdose(dose, window))
        ev = score_model(res.model, held, test, lq=test_lq)
        rows.append({"variant": variant, "fold": a.fold, "cohort": "v2",
                     "held_out": [p.key for p in fold.held],
                     "train_dose": dose, "n_images": int(hq.shape[0]), "psnr": ev.psnr,
                     "ssim": ev.ssim, "psnr_lq": ev.psnr_lq,
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    full = next((r["psnr"] for r in rows if r["variant"] == "full"), None)
    for r in rows:
        g = gain_retained(r["psnr"], r["psnr_lq"], full) if full is not None else math.nan
        r["gain_retained"] = None if g != g else g
    atomic_write_text(a.out / "texture_probe.json", json.dumps(rows, indent=1) + "\n")
    lines = ["| variant | train dose | images | PSNR (dB) | SSIM | gain kept |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        gain = "–" if r["gain_retained"] is None else f"{100 * r['gain_retained']:.0f}%"
        lines.append(f"| {r['variant']} | {r['train_dose']:g} | {r['n_images']} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} | {gain} |")
    text = (f"# Texture probe: which property of a synthetic CT set matters\n\n"
            f"`python -m benchmarks.texture_probe --fold {a.fold}` (CPU, DnCNN {a.steps} "
            f"steps, every slice of held-out patients {rows[0]['held_out']}, CT 25% dose, "
            f"LQ PSNR {rows[0]['psnr_lq']:.2f} dB). Variants: see the module docstring.\n\n"
            + "\n".join(lines) + "\n\n" + reading(rows, wed))
    atomic_write_text(a.out / "texture_probe.md", text)
    return rows


def reading(rows: list[dict[str, Any]], wed: dict[str, str] | None = None) -> str:
    """What the rows say (every number from the rows and ``wed``, the measured water-equivalent
    diameter ranges of the atlas and the patients; a missing variant drops its line)."""
    wed = wed or {"atlas": "?", "patients": "?"}
    gain = {r["variant"]: r["gain_retained"] for r in rows if r["gain_retained"] is not None}

    def g(v: str) -> str:
        return f"{100 * gain[v]:.0f}%"

    out = ["## Reading", ""]
    if {"atlas_dose=0.15", "atlas", "atlas_dose=0.4"} <= gain.keys():
        out.append(
            f"- Noise level: the same atlas trained at dose 0.4 / 0.25 / 0.15 keeps "
            f"{g('atlas_dose=0.4')} / {g('atlas')} / {g('atlas_dose=0.15')} of the gain. The "
            f"atlas bodies' water-equivalent diameters are {wed['atlas']} mm, the training "
            f"patients' {wed['patients']} mm: smaller bodies give weaker simulated noise, so at "
            "the nominal dose the denoiser under-denoises real scans.")
    if {"atlas_fit", "atlas"} <= gain.keys():
        extra = (f"; with it, training at dose 0.2 keeps {g('atlas_fit_dose=0.2')}"
                 if "atlas_fit_dose=0.2" in gain else "")
        out.append(f"- Fitting the atlas to each patient's diameter (`prior.fit_size`): "
                   f"{g('atlas')} -> {g('atlas_fit')}{extra}.")
    tex = [v for v in ("dead_leaves", "atlas_leaves", "atlas_hq_noise") if v in gain]
    if tex and "atlas" in gain:
        out.append("- Texture: " + ", ".join(f"{v} {g(v)}" for v in tex)
                   + f" against the plain atlas's {g('atlas')}.")
    out.append("- One fold, one training seed per variant: differences of a few points are "
               "within run-to-run noise.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
