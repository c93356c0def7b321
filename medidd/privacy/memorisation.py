"""Memorisation audit: how close is each distilled image to any real slice of the site?

Two similarity measures between 2D images in [0, 1]:

- **NCC**, normalised cross-correlation: the cosine between the zero-mean images, so it ignores
  affine intensity changes (``a * x + b`` with ``a > 0``). A constant image has no structure and
  its NCC with anything is defined as 0 (it cannot be a copy of a patient's anatomy).
- **SSIM** (Wang et al. 2004) with an 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  averaged over the valid region: the same numbers as ``skimage.metrics.structural_similarity(
  ..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.

Each distilled image is compared against two lines (DESIGN.md, "Privacy"): the **near-copy line**
(NCC >= 0.95: a real slice, refuse) and the **ideal line**, the 99th percentile of the similarity
between each real slice and its nearest neighbour among *other* patients' slices (nothing shipped
should be closer to a patient than another patient is).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> real = torch.rand(5, 1, 16, 16, generator=g)
    >>> sim, idx = nearest_real(real[3:4] * 0.5 + 0.2, real)
    >>> round(float(sim[0]), 4), int(idx[0])
    (1.0, 3)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from medidd.lookup import look_up_option

logger = logging.getLogger(__name__)

METRICS = ("ncc", "ssim")
_EPS = 1e-8


def _check_stack(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{what} must be (N, 1, H, W), got {tuple(x.shape)}")
    return x.float()


def normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D) zero-mean, unit-norm rows; constant rows become zero vectors.

    A row counts as constant when its spread is below 1e-5 of its magnitude (float32 rounding
    leaves ~1e-7 of residue after removing the mean of a constant row)."""
    raw = x.flatten(1).float()
    flat = raw - raw.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    varying = norm > 1e-5 * raw.norm(dim=1, keepdim=True) + _EPS
    return torch.where(varying, flat / norm.clamp_min(_EPS), torch.zeros_like(flat))


def ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised cross-correlation of two images of the same shape (all elements used).

    Returns a value in [-1, 1]: 1 for ``b = s * a + t`` with ``s > 0``, -1 for ``s < 0``, and 0
    when either image is constant.

    Example:
        >>> import torch
        >>> x = torch.arange(16.0).reshape(4, 4)
        >>> ncc(x, 3 * x + 1), ncc(x, -x), ncc(x, torch.ones(4, 4))
        (1.0, -1.0, 0.0)
    """
    if a.shape != b.shape:
        raise ValueError(f"ncc needs images of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    rows = normalise_rows(torch.stack([a.reshape(-1), b.reshape(-1)]))
    return float((rows[0] @ rows[1]).clamp(-1.0, 1.0))


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


@functools.lru_cache(maxsize=16)
def _band(n: int, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(n, n - size + 1) matrix whose product with a signal is its valid Gaussian filtering
    (cached; never modified)."""
    taps = _gaussian_taps(size, sigma)
    band = torch.zeros(n, n - size + 1)
    for j in range(n - size + 1):
        band[j : j + size, j] = taps
    return band


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter (11 taps, sigma 1.5) over the last two dims, valid region only.

    Two products with banded matrices: much faster on a CPU than a one-channel conv2d."""
    h, w = x.shape[-2:]
    return _band(h).to(x).T @ (x @ _band(w).to(x))


def _ssim_rows(
    x: torch.Tensor,
    real: torch.Tensor,
    real_stats: tuple[torch.Tensor, torch.Tensor],
    data_range: float,
) -> torch.Tensor:
    """SSIM of one image x (1, 1, H, W) against every image of ``real`` (M, 1, H, W) -> (M,)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_r, var_r = real_stats
    mu_x = _blur(x)
    var_x = _blur(x * x) - mu_x**2
    cov = _blur(x * real) - mu_x * mu_r
    num = (2 * mu_x * mu_r + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2)
    return (num / den).flatten(1).mean(dim=1)


def _ssim_stats(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = _blur(real)
    return mu, _blur(real * real) - mu**2


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """SSIM of two 2D images (H, W) (or (1, H, W), (1, 1, H, W)); both sides at least 11 px.

    Example:
        >>> import torch
        >>> x = torch.rand(32, 32, generator=torch.Generator().manual_seed(0))
        >>> round(ssim(x, x), 6)
        1.0
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    h, w = a.shape[-2:]
    if min(h, w) < 11:
        raise ValueError(f"ssim needs images of at least 11 x 11 px, got {h} x {w}")
    x = a.reshape(1, 1, h, w).float()
    y = b.reshape(1, 1, h, w).float()
    return float(_ssim_rows(x, y, _ssim_stats(y), data_range)[0])


def _shifts(max_shift: int) -> Iterator[tuple[int, int]]:
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            yield dy, dx


def _crop(x: torch.Tensor, s: int, dy: int, dx: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x[..., s + dy : h - s + dy, s + dx : w - s + dx]


def nearest_real(
    distilled: torch.Tensor,
    real: torch.Tensor,
    metric: str = "ncc",
    chunk: int = 512,
    max_shift: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every distilled image, its highest similarity to any real image, and which one.

    NCC is a matrix product of normalised, flattened images, chunked over the real images
    (memory ~ N x chunk): 64 distilled x 10,000 real at 128 px takes seconds on one CPU core.
    SSIM filters every distilled-real product image (about 1 ms per 128 px pair on one core),
    so prefer NCC for the full site and SSIM for shortlists.

    Args:
        distilled: (N, 1, H, W) images to audit.
        real: (M, 1, H, W) real slices of the site.
        metric: "ncc" or "ssim".
        chunk: real images per block.
        max_shift: off by default (0). If > 0, the similarity is the maximum over integer
            translations of the distilled image by up to ``max_shift`` pixels in each direction,
            both images cropped by ``max_shift`` on every side (so a copy moved by a few pixels
            still scores ~1). Costs (2 max_shift + 1)^2 times more.

    Returns:
        ``(max_sim (N,), argmax (N,))`` float32 and int64; the index refers to ``real``.

    Example:
        >>> import torch
        >>> real = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        >>> moved = torch.roll(real[2:3], shifts=(1, -1), dims=(2, 3))
        >>> sim, idx = nearest_real(moved, real, max_shift=1)
        >>> round(float(sim[0]), 4), int(idx[0])
        (1.0, 2)
    """
    metric = look_up_option(metric, METRICS, what="similarity metric")
    distilled = _check_stack(distilled, "distilled")
    real = _check_stack(real, "real")
    if distilled.shape[-2:] != real.shape[-2:]:
        if any(d > r for d, r in zip(distilled.shape[-2:], real.shape[-2:], strict=True)):
            raise ValueError(
                f"distilled images are {tuple(distilled.shape[-2:])} but real slices are "
                f"{tuple(real.shape[-2:])}; resample them to the same size first"
            )
        return _nearest_window(distilled, real, metric, chunk)
    if chunk < 1 or max_shift < 0:
        raise ValueError(f"need chunk >= 1 and max_shift >= 0, got {chunk} and {max_shift}")
    smallest = min(real.shape[-2:]) - 2 * max_shift
    if smallest < (11 if metric == "ssim" else 1):
        raise ValueError(
            f"{tuple(real.shape[-2:])} images cropped by max_shift={max_shift} are too small "
            f"for {metric} (SSIM needs at least 11 px)"
        )
    n = distilled.shape[0]
    best = torch.full((n,), -torch.inf, device=distilled.device)
    index = torch.zeros(n, dtype=torch.long, device=distilled.device)
    s = max_shift
    for dy, dx in _shifts(s):
        d = _crop(distilled, s, dy, dx)
        d_rows = normalise_rows(d) if metric == "ncc" else d
        for start in range(0, real.shape[0], chunk):
            r = _crop(real[start : start + chunk], s, 0, 0).to(distilled.device)
            if metric == "ncc":
                sim = (d_rows @ normalise_rows(r).T).clamp(-1.0, 1.0)
            else:
                stats = _ssim_stats(r)
                sim = torch.stack([_ssim_rows(x[None], r, stats, 1.0) for x in d_rows])
            value, arg = sim.max(dim=1)
            better = value > best
            best = torch.where(better, value, best)
            index = torch.where(better, arg + start, index)
    return best, index


def ncc_map(patches: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """NCC of every patch (N, 1, p, q) with every p x q window of every real image (M, 1, H, W)
    -> (M, N, H - p + 1, W - q + 1), by FFT correlation and box-filtered window norms; a
    constant patch or window scores 0.

    Example:
        >>> import torch
        >>> real = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
        >>> m = ncc_map(real[1:, :, 5:15, 7:17], real)
        >>> round(float(m[1, 0, 5, 7]), 4), round(float(m[0].max()), 2) < 1
        (1.0, True)
    """
    p, q = patches.shape[-2:]
    h, w = real.shape[-2:]
    pz = normalise_rows(patches).reshape(patches.shape[0], p, q).double()
    r = real[:, 0].double()
    fr = torch.fft.rfft2(r, s=(h, w))
    fp = torch.fft.rfft2(pz, s=(h, w))
    corr = torch.fft.irfft2(fr[:, None] * fp.conj()[None], s=(h, w))[..., : h - p + 1, : w - q + 1]
    s1 = F.avg_pool2d(r[:, None], (p, q), stride=1)[:, 0] * (p * q)
    s2 = F.avg_pool2d(r[:, None] ** 2, (p, q), stride=1)[:, 0] * (p * q)
    var = (s2 - s1**2 / (p * q)).clamp_min(0.0)
    norm = var.sqrt()
    varying = norm > 1e-5 * s2.clamp_min(0.0).sqrt() + _EPS
    out = torch.where(varying[:, None], corr / norm.clamp_min(_EPS)[:, None], 0.0)
    return out.clamp(-1.0, 1.0).float()


def _nearest_window(distilled: torch.Tensor, real: torch.Tensor, metric: str, chunk: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_real` for images smaller than the real slices (patch packages): the best
    window of any real slice, every offset; the index is the real slice's. SSIM is computed
    at the best NCC window of each slice."""
    n = distilled.shape[0]
    best = torch.full((n,), -torch.inf)
    index = torch.zeros(n, dtype=torch.long)
    step = max(1, min(chunk, 32))
    for start in range(0, real.shape[0], step):
        block = real[start : start + step].float().cpu()
        m = ncc_map(distilled.float().cpu(), block)  # (M, N, y, x)
        flat = m.flatten(2)
        value, where = flat.max(dim=2)  # (M, N)
        if metric == "ssim":
            value = _ssim_at(distilled.float().cpu(), block, where, m.shape[-1])
        v, arg = value.max(dim=0)
        better = v > best
        best = torch.where(better, v, best)
        index = torch.where(better, arg + start, index)
    return best.to(distilled.device), index.to(distilled.device)


def _ssim_at(distilled: torch.Tensor, block: torch.Tensor, where: torch.Tensor, cols: int
             ) -> torch.Tensor:
    """SSIM of every distilled image j with real slice i's window at flat offset
    ``where[i, j]`` (a row of ``cols`` offsets) -> (M, N)."""
    p, q = distilled.shape[-2:]
    out = torch.empty(where.shape)
    for i in range(where.shape[0]):
        for j in range(where.shape[1]):
            y, x = divmod(int(where[i, j]), cols)
            win = block[i : i + 1, :, y : y + p, x : x + q]
            out[i, j] = _ssim_rows(distilled[j : j + 1], win, _ssim_stats(win), 1.0)[0]
    return out


def nearest_view(image: torch.Tensor, slice_: torch.Tensor) -> torch.Tensor:
    """The part of the nearest real slice ``image`` (1, h, w) is compared with: the whole
    slice, or for a patch the window of highest NCC.

    Example:
        >>> import torch
        >>> real = torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.equal(nearest_view(real[:, 3:13, 4:14], real), real[:, 3:13, 4:14]))
        True
    """
    h, w = image.shape[-2:]
    if (h, w) == tuple(slice_.shape[-2:]):
        return slice_
    m = ncc_map(image[None].float(), slice_[None].float())[0, 0]
    y, x = divmod(int(m.flatten().argmax()), m.shape[-1])
    return slice_[:, y : y + h, x : x + w]


def _subsample(x: torch.Tensor, limit: int | None) -> torch.Tensor:
    if limit is None or x.shape[0] <= limit:
        return x
    keep = torch.linspace(0, x.shape[0] - 1, limit).round().long()
    return x[keep]


def cross_patient_similarities(
    slices_by_patient: Mapping[str, torch.Tensor],
    metric: str = "ncc",
    chunk: int = 512,
    max_per_patient: int | None = None,
) -> dict[str, torch.Tensor]:
    """Each real slice's similarity to its nearest neighbour among *other* patients' slices.

    Args:
        slices_by_patient: pseudonymous patient key -> (N_p, 1, H, W) slices; at least 2 patients.
        metric: "ncc" or "ssim".
        chunk: see :func:`nearest_real`.
        max_per_patient: if set, use at most this many evenly spaced slices per patient (both
            as queries and as neighbours), which bounds the quadratic cost at large sites.

    Returns:
        patient key -> (N_p,) nearest-other-patient similarities.
    """
    if len(slices_by_patient) < 2:
        raise ValueError(
            f"the cross-patient reference needs at least 2 patients, got {len(slices_by_patient)}"
        )
    stacks = {
        k: _subsample(_check_stack(v, "slices of one patient"), max_per_patient)
        for k, v in slices_by_patient.items()
    }
    out: dict[str, torch.Tensor] = {}
    for key, mine in stacks.items():
        others = torch.cat([v for k, v in stacks.items() if k != key])
        out[key] = nearest_real(mine, others, metric=metric, chunk=chunk)[0]
    return out


def cross_patient_reference(
    slices_by_patient: Mapping[str, torch.Tensor],
    metric: str = "ncc",
    quantile: float = 0.99,
    chunk: int = 512,
    max_per_patient: int | None = None,
) -> float:
    """The ideal line: the ``quantile`` of nearest-other-patient similarities of real slices.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> site = {k: torch.rand(3, 1, 16, 16, generator=g) for k in ("a", "b")}
        >>> cross_patient_reference(site) < 0.5
        True
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    sims = cross_patient_similarities(slices_by_patient, metric, chunk, max_per_patient)
    return float(torch.quantile(torch.cat(list(sims.values())).double(), quantile))


def memorisation_report(
    distilled: torch.Tensor,
    real_by_patient: Mapping[str, torch.Tensor],
    near_copy: float = 0.95,
    metric: str = "ncc",
    quantile: float = 0.99,
    reference: float | None = None,
    chunk: int = 512,
    max_shift: int = 0,
) -> dict[str, Any]:
    """Nearest real slice of every distilled image, against the near-copy and ideal lines.

    Args:
        distilled: (N, 1, H, W) images of the package.
        real_by_patient: pseudonymous patient key -> (N_p, 1, H, W) real slices of the site.
        near_copy: similarity at or above which an image counts as a copy of a real slice.
        metric: "ncc" or "ssim".
        quantile: quantile of the cross-patient distribution that defines the ideal line.
        reference: a precomputed ideal line (from :func:`cross_patient_reference`); computed
            here when None (needs at least 2 patients).
        chunk, max_shift: see :func:`nearest_real`.

    Returns:
        A JSON-ready dict: ``metric``, ``n_images``, ``max``, ``per_image`` (N floats),
        ``nearest_patient`` (N patient keys, never file names), ``nearest_slice`` (index within
        that patient's slices), ``near_copy_line``, ``ideal_quantile``, ``ideal_line``,
        ``n_above_near_copy`` (>= near-copy line) and ``n_above_ideal`` (> ideal line).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> site = {k: torch.rand(3, 1, 16, 16, generator=g) for k in ("a", "b")}
        >>> rep = memorisation_report(site["b"][1:2], site)
        >>> rep["nearest_patient"], rep["nearest_slice"], rep["n_above_near_copy"]
        (['b'], [1], 1)
    """
    if not real_by_patient:
        raise ValueError("memorisation_report needs the real slices of at least one patient")
    keys = list(real_by_patient)
    stacks = [_check_stack(real_by_patient[k], "real slices") for k in keys]
    owner = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(stacks)])
    offset = torch.cat([torch.arange(len(s)) for s in stacks])
    sims, idx = nearest_real(distilled, torch.cat(stacks), metric, chunk, max_shift)
    sims, idx = sims.cpu(), idx.cpu()
    if reference is None:
        reference = cross_patient_reference(real_by_patient, metric, quantile, chunk)
    report: dict[str, Any] = {
        "metric": metric,
        "n_images": int(sims.numel()),
        "max": float(sims.max()) if sims.numel() else float("nan"),
        "per_image": [float(v) for v in sims],
        "nearest_patient": [keys[int(owner[i])] for i in idx],
        "nearest_slice": [int(offset[i]) for i in idx],
        "near_copy_line": float(near_copy),
        "ideal_quantile": float(quantile),
        "ideal_line": float(reference),
        "n_above_near_copy": int((sims >= near_copy).sum()),
        "n_above_ideal": int((sims > reference).sum()),
    }
    logger.info(
        "memorisation (%s): max %.3f, %d/%d at or above the near-copy line %.2f, %d above the "
        "ideal line %.3f",
        metric,
        report["max"],
        report["n_above_near_copy"],
        report["n_images"],
        near_copy,
        report["n_above_ideal"],
        reference,
    )
    return report
