"""Noise level of the low-dose CT simulation per dose fraction (the foundation issue's table).

For each image size (128, 256 px; 180 views, 400 mm FOV for the phantom) and each option
(projection-domain noise insertion, image-domain approximation), the standard deviation in HU
of the inserted noise (LQ - HQ) at dose fractions 1.0 / 0.5 / 0.25 / 0.10:

* ``water_hu``: centre of a 300 mm water cylinder (disc of radius 10 px at 128 px);
  ``water_total_hu`` adds the full-dose noise of the same geometry in quadrature
  (``sqrt(gain * V(I0, p)) / pixel``), the noise a real scan at that dose would show;
* ``ct_tissue_hu`` / ``ct_air_hu``: real chest CT (lung1.nrrd, middle slice, 292 mm FOV),
  soft tissue (HU in [-100, 150], eroded 2 px) and outside air (HU < -980, eroded).

Plus the time per batch of 16 slices on the CPU (``ms_batch16``, threads as given by
``torch.get_num_threads()``; the first call, which builds the cached operators, is excluded).

Run: ``python benchmarks/noise_table.py`` (prints a markdown table).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidd.degrade.ct_lowdose import (
    MU_WATER_PER_MM,
    ct_lowdose,
    fbp_noise_gain,
    log_measurement_variance,
)
from medidd.degrade.phantoms import disc_mask, water_cylinder

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (-1000.0, 1000.0)
DOSES = (1.0, 0.5, 0.25, 0.10)
I0, ELECTRONIC, N_ANGLES = 1e5, 5.0, 180


def _ct_slice(size: int) -> tuple[torch.Tensor, float]:
    import SimpleITK as sitk

    samples = Path(os.environ.get("MEDIDD_SAMPLES", ROOT / "data" / "samples"))
    image = sitk.ReadImage(str(samples / "ct" / "lung1.nrrd"))
    volume = sitk.GetArrayFromImage(image).astype(np.float32)
    middle = torch.from_numpy(volume[volume.shape[0] // 2])[None, None]
    hu = torch.nn.functional.interpolate(middle, size=(size, size), mode="area")
    lo, hi = WINDOW
    return ((hu.clamp(lo, hi) - lo) / (hi - lo)).contiguous(), image.GetSpacing()[0] * 512 / size


def _eroded(mask: torch.Tensor) -> torch.Tensor:
    grown = torch.nn.functional.max_pool2d((~mask).float(), 5, 1, 2).bool()
    return mask & ~grown


def _std(lq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor) -> float:
    return float(((lq - hq) * (WINDOW[1] - WINDOW[0]))[roi].std())


def run(sizes: tuple[int, ...] = (128, 256), repeats: int = 3) -> list[dict[str, Any]]:
    """One row per (size, option, dose) with noise std in HU and ms per batch of 16."""
    rows: list[dict[str, Any]] = []
    for size in sizes:
        phantom = water_cylinder(size).repeat(4, 1, 1, 1)
        pixel_phantom = 400.0 / size
        roi = disc_mask(size, 10 * size / 128).expand_as(phantom)
        ct, pixel_ct = _ct_slice(size)
        hu = ct * (WINDOW[1] - WINDOW[0]) + WINDOW[0]
        tissue = _eroded((hu > -100) & (hu < 150))
        air = _eroded(hu < -980)
        p_centre = torch.tensor(MU_WATER_PER_MM * 300.0, dtype=torch.float64)
        full_var = fbp_noise_gain(size, N_ANGLES) * float(
            log_measurement_variance(p_centre, I0, ELECTRONIC)
        )
        full_hu = math.sqrt(full_var) / pixel_phantom * 1000.0 / MU_WATER_PER_MM
        batch = ct.repeat(16, 1, 1, 1)
        for image_domain in (False, True):
            common = {"window": WINDOW, "i0": I0, "electronic_noise": ELECTRONIC,
                      "n_angles": N_ANGLES, "image_domain": image_domain}
            ct_lowdose(batch, 0, dose=0.25, pixel_mm=pixel_ct, **common)  # build the caches
            start = time.perf_counter()
            for r in range(repeats):
                ct_lowdose(batch, r, dose=0.25, pixel_mm=pixel_ct, **common)
            ms = (time.perf_counter() - start) / repeats * 1000.0
            for dose in DOSES:
                lq_w = ct_lowdose(phantom, 0, dose=dose, pixel_mm=pixel_phantom, **common)
                lq_c = ct_lowdose(ct, 0, dose=dose, pixel_mm=pixel_ct, **common)
                water = _std(lq_w, phantom, roi)
                rows.append({
                    "size": size,
                    "option": "image-domain" if image_domain else "projection",
                    "dose": dose,
                    "water_hu": round(water, 1),
                    "water_total_hu": round(math.hypot(water, full_hu), 1),
                    "ct_tissue_hu": round(_std(lq_c, ct, tissue), 1),
                    "ct_air_hu": round(_std(lq_c, ct, air), 1),
                    "ms_batch16": round(ms, 1),
                    "threads": torch.get_num_threads(),
                })
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"I0={I0:g} photons/bin/view, electronic noise {ELECTRONIC} counts, {N_ANGLES} views, "
          f"window {WINDOW} HU; std of LQ - HQ in HU")
    print(to_markdown(run()))
