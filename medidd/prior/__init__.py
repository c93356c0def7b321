"""Anatomical priors: population mean, medoid patient (the paper's), procedural atlas, and the
consortium's shared prior (built by the nodes together, :mod:`medidd.prior.shared`).

Example:
    >>> p = build_prior("atlas", [], 2, modality="CT", size=32, window=(-1000.0, 1000.0))
    >>> p.kind, tuple(p.images.shape)
    ('atlas', (2, 1, 32, 32))
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from medidd.config import config_key
from medidd.lookup import look_up_option
from medidd.preprocess.slices import SliceSet
from medidd.prior.atlas import atlas_prior
from medidd.prior.base import Prior
from medidd.prior.population import mean_prior, medoid_index, medoid_prior
from medidd.prior.zmatch import prior_positions, slices_at

PRIOR_KINDS = ("mean", "medoid", "atlas", "shared")

__all__ = [
    "PRIOR_KINDS",
    "Prior",
    "atlas_prior",
    "build_prior",
    "mean_prior",
    "medoid_index",
    "medoid_prior",
    "prior_positions",
    "shared_prior",
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
    path: str | Path | None = None,
    sha256: str | None = None,
    region: str | None = None,
) -> Prior:
    """Build the ``kind`` prior with ``k`` slices for a site's ``cohort`` (unused by atlas;
    ``shared`` reads the consortium's prior at ``path``, see :func:`shared_prior`)."""
    kind = look_up_option(kind, PRIOR_KINDS, what="prior kind")
    if kind == "shared":
        if path is None:
            raise ValueError(f"prior kind 'shared' needs the prior's folder: set "
                             f"{config_key('prior.path')} (what 'medidd-aggregate prior' wrote)")
        return shared_prior(Path(path), cohort, k, modality=modality, size=size,
                            sha256=sha256, region=region)
    if kind == "atlas":
        return atlas_prior(k, size=size, modality=modality, window=window)
    if kind == "medoid":
        return medoid_prior(cohort, k)
    return mean_prior(cohort, k, registered=registered, iterations=registration_iterations)


def shared_prior(path: Path, cohort: list[SliceSet], k: int, *, modality: str, size: int,
                 sha256: str | None = None, region: str | None = None) -> Prior:
    """The consortium's shared prior for this site: the file at ``path`` (checked: version,
    hashes, shapes, ``sha256`` when given), its group for ``modality`` and ``region`` (default:
    the region most of the site's patients show, :func:`medidd.prior.region.guess_region`),
    ``k`` positions at ``size`` px; ``info`` says which prior it is for the manifest.

    Raises:
        medidd.prior.shared.SharedPriorError: unreadable or mismatching file, no such group,
            or a needed bin not released.
    """
    from medidd.prior.region import check_region, guess_region
    from medidd.prior.shared import read_shared_prior

    prior = read_shared_prior(path, expected_sha256=sha256)
    if region is None:
        votes = Counter(guess_region(s) for s in cohort)
        region = votes.most_common(1)[0][0] if votes else "chest"
        if len(votes) > 1:
            logging.getLogger(__name__).warning(
                "the site's patients show several regions %s; using the shared prior's %s "
                "group for all (set %s)", dict(votes), region, config_key("prior.region"))
    region = check_region(modality, region)
    out = prior.prior_for(modality, region, k, size)
    verdict = (prior.audit or {}).get("status", "not_run")
    if verdict != "passed":
        logging.getLogger(__name__).warning(
            "the shared prior %s was not audited as passed (audit: %s): a node found it as "
            "close to a real slice as another patient is, or could not check; the package "
            "manifest records it", prior.sha256, verdict)
    st = prior.statement
    info = {"kind": "shared", "sha256": prior.sha256, "version": prior.version,
            "group": f"{modality.upper()}:{region}", "dp": bool(st.get("dp")),
            "epsilon": st.get("epsilon"), "delta": st.get("delta"),
            "audit": (prior.audit or {}).get("status", "not_run")}
    return Prior(out.images, out.z, "shared", False, info)
