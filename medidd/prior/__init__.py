"""Shared anatomical priors: population mean, medoid patient (the paper's) and procedural atlas.

Example:
    >>> p = build_prior("atlas", [], 2, modality="CT", size=32, window=(-1000.0, 1000.0))
    >>> p.kind, tuple(p.images.shape)
    ('atlas', (2, 1, 32, 32))
"""

from __future__ import annotations

from medidd.lookup import look_up_option
from medidd.preprocess.slices import SliceSet
from medidd.prior.atlas import atlas_prior
from medidd.prior.base import Prior
from medidd.prior.population import mean_prior, medoid_index, medoid_prior
from medidd.prior.zmatch import prior_positions, slices_at

PRIOR_KINDS = ("mean", "medoid", "atlas")

__all__ = [
    "PRIOR_KINDS",
    "Prior",
    "atlas_prior",
    "build_prior",
    "mean_prior",
    "medoid_index",
    "medoid_prior",
    "prior_positions",
    "slices_at",
]


def build_prior(
    kind: str,
    cohort: list[SliceSet],
    k: int,
    *,
    modality: str,
    size: int,
    window: tuple[float, float],
    registered: bool = True,
    registration_iterations: int = 2,
) -> Prior:
    """Build the ``kind`` prior with ``k`` slices for a site's ``cohort`` (unused by atlas)."""
    kind = look_up_option(kind, PRIOR_KINDS, what="prior kind")
    if kind == "atlas":
        return atlas_prior(k, size=size, modality=modality, window=window)
    if kind == "medoid":
        return medoid_prior(cohort, k)
    return mean_prior(cohort, k, registered=registered, iterations=registration_iterations)
