"""Fit a shared prior to one patient's body size (CT), so simulated low-dose noise matches.

Why. CT noise at a given dose grows steeply with how much the body attenuates: the inserted
variance of a ray scales with ``exp(p)`` (:mod:`medidd.degrade.ct_lowdose`). A denoiser trained
on synthetic pairs learns the noise level of *their* bodies; if the synthetic bodies attenuate
less than the site's patients, it under-denoises real scans. Measured on our CT site: the
procedural atlas has water-equivalent diameters of 225-265 mm, the real patients 269-361 mm;
on one held-out patient a DnCNN trained on the atlas kept 78% of the full-data PSNR gain and
the same atlas scaled to each patient's size 87%, though over all 4 folds the prior alone is
not better with the fit (docs/method.md has the per-fold numbers).

What. The water-equivalent diameter (AAPM Report 220) of a slice is the diameter of the water
disc with the same attenuation: ``D_w = 2 sqrt(A_w / pi)``, ``A_w = sum (HU / 1000 + 1) a_pixel``
over the slice (air counts 0). :func:`fit_to_size` zooms every prior slice about the image
centre until its ``D_w`` equals the patient's median ``D_w``. The only thing taken from the
patient is that one number (a body size), which the package's synthetic images then carry.

Example:
    >>> import torch
    >>> from medidd.prior.atlas import atlas_prior
    >>> p = atlas_prior(1, size=64, modality="CT", window=(-1000.0, 1000.0))
    >>> d = water_equivalent_diameter(p.images, (-1000.0, 1000.0), pixel_mm=400 / 64)
    >>> big = zoom(p.images, torch.tensor([1.2]))
    >>> ratio = water_equivalent_diameter(big, (-1000.0, 1000.0), 400 / 64) / d
    >>> round(float(ratio), 1)
    1.2
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medidd.prior.base import Prior

#: zoom factors outside this range mean the prior and the patient are not the same body region
#: (or the window is wrong); the fit is clamped to it
ZOOM_LIMITS = (0.5, 2.0)


def water_equivalent_diameter(
    images: torch.Tensor, window: tuple[float, float], pixel_mm: float
) -> torch.Tensor:
    """Water-equivalent diameter (mm, AAPM Report 220) of every (N, 1, H, W) CT slice in
    ``window``-normalised units (0 = ``window[0]`` HU, 1 = ``window[1]`` HU).

    Example:
        >>> import torch
        >>> water = torch.zeros(1, 1, 8, 8) + 0.5  # 0 HU everywhere, window -1000..1000
        >>> round(float(water_equivalent_diameter(water, (-1000.0, 1000.0), 1.0)), 2)
        9.03
    """
    lo, hi = window
    hu = lo + images.float() * (hi - lo)
    area = (hu / 1000.0 + 1.0).clamp(min=0).sum(dim=(-3, -2, -1)) * pixel_mm**2
    return 2.0 * torch.sqrt(area / math.pi)


def zoom(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Scale each (N, 1, H, W) image by ``factors[n]`` about its centre (bilinear; what moves
    in from outside is 0, i.e. air).

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 9, 9)
        >>> x[..., 4, 4] = 1.0
        >>> bool(torch.allclose(zoom(x, torch.tensor([1.0])), x, atol=1e-6))
        True
    """
    inv = 1.0 / factors.to(images.dtype)
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = inv
    theta[:, 1, 1] = inv
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fit_to_size(
    prior: Prior,
    real: torch.Tensor,
    window: tuple[float, float],
    *,
    iterations: int = 4,
) -> tuple[Prior, dict[str, float]]:
    """Zoom every prior slice so its water-equivalent diameter equals the median of ``real``
    (one patient's slices); returns the fitted prior and what was fitted.

    The fitted prior keeps ``prior.local_data`` (whether the *shared* prior holds local
    patients' images); the body size it now carries is the caller's to declare (the DP
    manifest lists it as not covered).

    ``D_w`` grows about linearly with the zoom factor, so a few fixed-point steps
    ``f <- f * target / D_w(zoom(prior, f))`` converge (to < 0.5% in 3-4 steps at 128 px).

    Example:
        >>> import torch
        >>> from medidd.prior.atlas import atlas_prior
        >>> w = (-1000.0, 1000.0)
        >>> p = atlas_prior(1, size=64, modality="CT", window=w)
        >>> big = zoom(p.images, torch.tensor([1.15]))
        >>> fitted, info = fit_to_size(p, big, w)
        >>> abs(info["zoom_min"] - 1.15) < 0.02, fitted.kind
        (True, 'atlas')
    """
    pixel = 1.0  # the ratio of diameters does not depend on the pixel size
    target = float(water_equivalent_diameter(real, window, pixel).median())
    images = prior.images
    factors = torch.ones(images.shape[0], dtype=images.dtype)
    for _ in range(iterations):
        current = water_equivalent_diameter(zoom(images, factors), window, pixel)
        factors = (factors * target / current.clamp(min=1e-6)).clamp(*ZOOM_LIMITS)
    fitted = zoom(images, factors).clamp(0, 1)
    info = {
        "wed_target_px": target,
        "zoom_min": float(factors.min()),
        "zoom_max": float(factors.max()),
    }
    return Prior(fitted, prior.z.clone(), prior.kind, prior.local_data), info


#: pixels above this (normalised) value are foreground when intensities are matched
FOREGROUND = 0.02


def fit_intensity(prior: Prior, images: torch.Tensor, quantiles: int = 16
                  ) -> tuple[Prior, dict[str, float]]:
    """Give the prior's foreground the patient's intensity histogram (MR, where intensities have
    no physical unit) by exact histogram specification: the prior's foreground pixels in rank
    order (ties broken by the local mean) take the patient's foreground quantiles, piecewise
    linear between ``quantiles`` of them; air stays air. What is taken from the patient is
    those ``quantiles`` numbers (an intensity histogram, no anatomy).

    Example:
        >>> import torch
        >>> p = Prior(torch.linspace(0, 0.5, 64).reshape(1, 1, 8, 8), torch.tensor([0.5]),
        ...           "atlas", False)
        >>> real = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)
        >>> fitted, info = fit_intensity(p, real, quantiles=8)
        >>> round(float(fitted.images.max()), 2), info["intensity_quantiles"]
        (0.99, 8.0)
    """
    levels = torch.linspace(0.0, 1.0, quantiles, dtype=torch.float64)
    src = prior.images.double()
    fg = src > FOREGROUND
    fg_real = images.double()[images > FOREGROUND]
    n = int(fg.sum())
    if n < quantiles or fg_real.numel() < quantiles:
        return prior, {}
    fp = torch.quantile(fg_real, levels)
    # exact histogram specification: rank the prior's foreground pixels (ties, which a
    # piecewise-constant atlas is full of, broken by local means, then by the distance to the
    # centre, so a flat region becomes a smooth ramp rather than noise or bands) and give rank
    # r the patient's quantile (r + 0.5) / n, interpolated between the ``quantiles`` numbers
    # taken from the patient
    near = F.avg_pool2d(src, 5, stride=1, padding=2, count_include_pad=False)
    wide = F.avg_pool2d(src, 15, stride=1, padding=7, count_include_pad=False)
    h, w = src.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=src.dtype),
                            torch.linspace(-1, 1, w, dtype=src.dtype), indexing="ij")
    centre = -(yy**2 + xx**2)  # last resort: brighter towards the centre, never in bands
    key = (src + 1e-3 * near + 1e-5 * wide + 1e-8 * centre)[fg]
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[key.argsort()] = torch.arange(n, dtype=torch.float64)
    out = src.clone()
    out[fg] = _interp((ranks + 0.5) / n, levels, fp)
    fitted = Prior(out.clamp(0.0, 1.0).to(prior.images.dtype), prior.z, prior.kind,
                   prior.local_data, prior.info)
    return fitted, {"intensity_quantiles": float(quantiles)}


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``np.interp`` in torch (values outside ``xp`` take the end values)."""
    i = torch.searchsorted(xp, x.clamp(xp[0], xp[-1])).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((x.clamp(xp[0], xp[-1]) - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)
