"""A node's side of the shared prior: its noised contribution, and its audit of the release.

:func:`site_contribution` groups the site's patients by modality and region
(:func:`medidd.prior.region.patient_region`), bins each patient's slices by ``z``
(:func:`~medidd.prior.shared.bin_means`), registers each bin mean to the group's public
template (SimpleITK affine, :func:`medidd.prior.registration.register_affine`; groups without
a template are not registered), clips, sums and noises per group
(:mod:`medidd.prior.shared`). A group without patients contributes zeros (no noise: there is
no one to protect) and is named in ``empty``, which the node says in plain text.

:func:`audit_at_site` is the memorisation audit of a released prior at one site: for every
group the highest NCC of a released image to any real slice of the site's patients of that
group, against the site's ideal line (:func:`medidd.privacy.memorisation.memorisation_report`);
only those aggregates leave the site.

Example:
    >>> import torch
    >>> from medidd.preprocess.slices import SliceSet
    >>> from medidd.prior.shared import SharedPriorConfig
    >>> cfg = SharedPriorConfig(groups=["MR:head", "MR:body"], bins=2, release_size=8,
    ...                         epsilon=None, registration="none")
    >>> s = SliceSet(torch.rand(4, 1, 16, 16), torch.linspace(0, 1, 4), "p-00", "MR", (0., 1.))
    >>> c = site_contribution([s], cfg, site_region="head")
    >>> c.empty, [tuple(a.shape) for a in c.arrays()]
    (['MR:body'], [(2, 8, 8), (2,), (2, 8, 8), (2,)])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medidd.preprocess.slices import SliceSet
from medidd.prior.atlas import atlas_slice
from medidd.prior.region import patient_region
from medidd.prior.registration import register_affine, register_deformable
from medidd.prior.shared import (
    TEMPLATES,
    GroupSums,
    SharedPrior,
    SharedPriorConfig,
    accumulate,
    add_noise,
    bin_means,
    parse_group,
    reference_images,
)

logger = logging.getLogger(__name__)


@dataclass
class SiteContribution:
    """A node's noised sums per group (in the round's group order), the groups it has no
    patients of, and local bookkeeping that never leaves the node (patients per group,
    clipped patients)."""

    sums: dict[str, GroupSums]
    empty: list[str]
    local: dict[str, dict[str, int]] = field(default_factory=dict)

    def arrays(self) -> list[np.ndarray]:
        """The arrays secure aggregation sums: per group ``sums``, ``counts``."""
        return [a for g in self.sums.values() for a in g.arrays()]


def group_patients(cohort: Sequence[SliceSet], site_region: str | None = None
                   ) -> dict[str, list[SliceSet]]:
    """The site's patients by group name (``"CT:chest"``), region by
    :func:`~medidd.prior.region.patient_region`."""
    out: dict[str, list[SliceSet]] = {}
    for s in cohort:
        out.setdefault(f"{s.modality}:{patient_region(s, site_region)}", []).append(s)
    return out


def template(group: str, size: int, window: tuple[float, float]) -> torch.Tensor | None:
    """The public registration template of ``group`` ((H, W), from the atlas), or None."""
    if group not in TEMPLATES:
        return None
    modality, _ = parse_group(group)
    return atlas_slice(TEMPLATES[group], size=size, modality=modality, window=window)[0]


def registered_bin_means(s: SliceSet, cfg: SharedPriorConfig, fixed: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One patient's bin means, each registered to ``fixed`` (when given) as
    ``cfg.registration`` says (``affine``, ``deformable`` or ``none``)."""
    means, present = bin_means(s.images, s.z, cfg.bins)
    if fixed is None or cfg.registration == "none":
        return means, present
    register = register_deformable if cfg.registration == "deformable" else register_affine
    for k in torch.nonzero(present).flatten().tolist():
        means[k, 0] = register(means[k, 0], fixed, cfg.registration_iterations)
    return means, present


def site_contribution(cohort: Sequence[SliceSet], cfg: SharedPriorConfig, *,
                      site_region: str | None = None, rng: np.random.Generator | None = None
                      ) -> SiteContribution:
    """The node's noised sums for every group of ``cfg`` (see the module doc).

    Args:
        cohort: the site's patients (any modalities).
        site_region: the node's region (node config ``region``), else the heuristic.
        rng: noise generator; default one seeded by the OS (a fixed seed only in tests).
    """
    rng = rng if rng is not None else np.random.default_rng()
    by_group = group_patients(cohort, site_region)
    sums: dict[str, GroupSums] = {}
    empty: list[str] = []
    local: dict[str, dict[str, int]] = {}
    for name in cfg.groups:
        patients = by_group.get(name, [])
        if not patients:
            empty.append(name)
            sums[name] = GroupSums.zeros(cfg.bins, cfg.release_size)
            continue
        window = patients[0].window
        fixed = template(name, patients[0].size, window)
        ref = reference_images(name, cfg, window)
        clean = accumulate((registered_bin_means(s, cfg, fixed) for s in patients), cfg, ref)
        sums[name] = add_noise(clean, cfg, rng)
        local[name] = {"patients": clean.n_patients, "clipped": clean.clipped}
        logger.info("prior group %s: %d patients, %d clipped", name, clean.n_patients,
                    clean.clipped)
    ignored = sorted(set(by_group) - set(cfg.groups))
    if ignored:
        logger.info("patients of groups not in this round: %s", ", ".join(ignored))
    return SiteContribution(sums, empty, local)


def audit_at_site(prior: SharedPrior, cohort: Sequence[SliceSet], *,
                  site_region: str | None = None) -> dict[str, Any]:
    """Memorisation audit of ``prior`` against the site's real slices; aggregates only.

    Returns:
        ``{"max_nn_ncc": float, "ideal_line": float | None, "below_ideal": bool | None,
        "groups": {group: {"max_nn_ncc", "ideal_line"}}}`` over the groups the site has
        patients of and the prior released images for (``ideal_line`` needs two patients).
    """
    from medidd.privacy.memorisation import memorisation_report

    by_group = group_patients(cohort, site_region)
    per_group: dict[str, dict[str, float | None]] = {}
    for name, g in prior.groups.items():
        patients = by_group.get(name, [])
        if not patients or not bool(g.released.any()):
            continue
        images = g.images[g.released]
        size = patients[0].size
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=(size, size),
                                                     mode="bilinear", align_corners=False)
        real: Mapping[str, torch.Tensor] = {s.patient_key: s.images for s in patients}
        ideal = None
        if len(patients) >= 2:
            rep = memorisation_report(images, real)
            ideal = float(rep["ideal_line"])
        else:
            rep = memorisation_report(images, real, reference=1.0)
        per_group[name] = {"max_nn_ncc": float(rep["max"]), "ideal_line": ideal}
    if not per_group:
        return {"max_nn_ncc": None, "ideal_line": None, "below_ideal": None, "groups": {}}
    worst = max(per_group.values(), key=lambda d: float(d["max_nn_ncc"] or 0.0))
    ideals = [d for d in per_group.values() if d["ideal_line"] is not None]
    below = (all(float(d["max_nn_ncc"] or 0) < float(d["ideal_line"] or 0) for d in ideals)
             if ideals else None)
    return {"max_nn_ncc": worst["max_nn_ncc"], "ideal_line": worst["ideal_line"],
            "below_ideal": below, "groups": per_group}
