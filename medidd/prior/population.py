"""Priors built from the site's own patients: the population mean and the medoid patient.

``mean``: for each prior position, the average of every patient's z-matched slice, optionally
groupwise-registered (each slice affinely registered to the current mean, then re-averaged, a
few rounds: the classic unbiased template construction). Anatomy-shaped, but no patient's slice.

``medoid`` (the paper's choice): the representative patient minimising the summed structural
distance (1 - mean NCC of z-matched, down-sampled slices) to the others; its real slices are the
prior. Measured: SPG from it ships near-copies of that patient, so it is for comparison only.

Example:
    >>> import torch
    >>> from medidd.preprocess.slices import SliceSet
    >>> a = SliceSet(torch.rand(5, 1, 16, 16), torch.linspace(0, 1, 5), "p-a", "CT", (-1e3, 1e3))
    >>> b = SliceSet(torch.rand(4, 1, 16, 16), torch.linspace(0, 1, 4), "p-b", "CT", (-1e3, 1e3))
    >>> mean_prior([a, b], 2, registered=False).images.shape
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medidd.preprocess.slices import SliceSet
from medidd.prior.base import Prior
from medidd.prior.registration import register_affine
from medidd.prior.zmatch import prior_positions, slices_at


def _check(cohort: list[SliceSet]) -> None:
    if not cohort:
        raise ValueError("a population prior needs at least one patient")
    sizes = {s.images.shape[-2:] for s in cohort}
    if len(sizes) != 1:
        raise ValueError(
            f"patients have different slice sizes {sorted(sizes)}; preprocess to one size"
        )


def mean_prior(
    cohort: list[SliceSet], k: int, *, registered: bool = True, iterations: int = 2
) -> Prior:
    """Population-mean prior at ``k`` positions (see module docstring)."""
    _check(cohort)
    z = prior_positions(k)
    stacks = torch.stack([slices_at(s, z) for s in cohort])  # (P, K, 1, H, W)
    mean = stacks.mean(0)
    if registered and len(cohort) > 1:
        for _ in range(iterations):
            aligned = torch.empty_like(stacks)
            for p in range(stacks.shape[0]):
                for j in range(k):
                    aligned[p, j, 0] = register_affine(stacks[p, j, 0], mean[j, 0])
            mean = aligned.mean(0)
    return Prior(images=mean.clamp(0, 1), z=z, kind="mean", local_data=True)


def structural_distance(a: SliceSet, b: SliceSet, n_positions: int = 16, size: int = 32) -> float:
    """1 - mean normalised cross-correlation of z-matched slices resampled to ``size`` px."""
    z = prior_positions(n_positions)
    xa = F.interpolate(slices_at(a, z), size=(size, size), mode="area").flatten(1)
    xb = F.interpolate(slices_at(b, z), size=(size, size), mode="area").flatten(1)
    xa = xa - xa.mean(1, keepdim=True)
    xb = xb - xb.mean(1, keepdim=True)
    ncc = (xa * xb).sum(1) / (xa.norm(dim=1) * xb.norm(dim=1) + 1e-8)
    return float(1.0 - ncc.mean())


def medoid_index(cohort: list[SliceSet]) -> int:
    """Index of the patient with the smallest summed :func:`structural_distance` to the others."""
    _check(cohort)
    n = len(cohort)
    dist = torch.zeros(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = structural_distance(cohort[i], cohort[j])
    return int(dist.sum(1).argmin())


def medoid_prior(cohort: list[SliceSet], k: int) -> Prior:
    """The medoid patient's own slices at ``k`` positions (real slices: not private)."""
    med = cohort[medoid_index(cohort)]
    z = prior_positions(k)
    return Prior(images=slices_at(med, z).clone(), z=z, kind="medoid", local_data=True)
