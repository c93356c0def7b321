"""Train the downstream model on the union of the accepted packages.

All accepted packages must share one degradation spec: the run's (``degradation`` in the
config) or, when the run leaves it open, the one most packages carry; a package with another
spec is rejected with that reason. LQ partners are re-drawn from the spec every epoch
(``train.redraw_lq``), so the model never sees the same noise twice; when the spec cannot be
built here, the shipped LQ images are used as fixed pairs (and the report says so).

Example:
    >>> import numpy as np
    >>> from medidd.federation.policy import PackageVerdict
    >>> from medidd.package.manifest import example_manifest
    >>> v = PackageVerdict(manifest=example_manifest(), hq=np.zeros((4, 1, 8, 8), np.float32),
    ...                    lq=np.zeros((4, 1, 8, 8), np.float32))
    >>> reconcile_degradation([v], None)
    {'kind': 'ct_lowdose', 'dose': 0.25}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medidd.degrade import build_degradation
from medidd.degrade.draw import Degrade
from medidd.federation.policy import PackageVerdict, majority_degradation
from medidd.federation.spool import DiskImages, SpooledPackage
from medidd.federation.streamed import train_streamed
from medidd.train import TrainConfig, TrainResult, train_enhancer
from medidd.train.trainer import Progress

logger = logging.getLogger(__name__)


def same_spec(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two degradation specs describe the same operator (defaults filled in).

    Example:
        >>> same_spec({"kind": "ct_lowdose"}, {"kind": "ct_lowdose", "dose": 0.25})
        True
    """
    from medidd.degrade import DegradationSpec

    try:
        return bool(DegradationSpec.model_validate(dict(a)) == DegradationSpec.model_validate(
            dict(b)))
    except ValueError:
        return dict(a) == dict(b)


def reconcile_degradation(verdicts: Sequence[PackageVerdict],
                          spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The run's degradation spec; accepted packages with another spec get a reason (and so
    become rejected). Returns None when there is no accepted package and no run spec."""
    accepted = [v for v in verdicts if v.accepted and v.manifest is not None]
    chosen = dict(spec) if spec is not None else majority_degradation(
        [v.manifest for v in accepted if v.manifest is not None])
    for v in accepted:
        assert v.manifest is not None
        if chosen is not None and not same_spec(v.manifest.degradation, chosen):
            v.reasons.append(f"degradation: {dict(v.manifest.degradation)} differs from the "
                             f"run's {chosen}; all packages of a run must share one spec")
    return chosen


@dataclass
class UnionResult:
    """The trained model, its training record, the number of images and the LQ source
    (``"redrawn"`` from the spec or ``"shipped"``)."""

    result: TrainResult
    n_images: int
    lq_source: str


def train_on_union(verdicts: Sequence[PackageVerdict], cfg: TrainConfig,
                   degradation: Mapping[str, Any] | None, *,
                   progress: Progress | None = None) -> UnionResult:
    """Train ``cfg.net`` on the HQ images of every accepted package: from memory (packages
    received whole, ``verdict.hq``), or read batch by batch from disk when the packages were
    streamed in (``verdict.spooled``, :func:`~medidd.federation.streamed.train_streamed`),
    so the aggregator's memory does not grow with the number of sites and patients.

    Raises ``ValueError`` when no package was accepted.
    """
    spooled = [v for v in verdicts if v.accepted and v.spooled is not None]
    used = [v for v in verdicts if v.accepted and v.hq is not None and v.lq is not None]
    if not used and not spooled:
        raise ValueError("no package was accepted: nothing to train on (see the report's "
                         "rejected nodes)")
    manifest = (spooled or used)[0].manifest
    assert manifest is not None
    degrade = None
    if degradation is not None and cfg.redraw_lq:
        try:
            degrade = build_degradation(degradation, tuple(manifest.window))  # type: ignore[arg-type]
        except (ImportError, ValueError, KeyError) as exc:
            logger.warning("cannot re-draw LQ from %s (%s); training on the shipped LQ",
                           degradation, exc)
    if spooled:
        if used:
            raise ValueError("train_on_union: packages held in memory and on disk at once")
        return _train_on_disk([v.spooled for v in spooled if v.spooled is not None], cfg,
                              degrade, progress)
    hq = torch.cat([torch.from_numpy(v.hq) for v in used if v.hq is not None])
    if degrade is not None:
        result = train_enhancer(hq, None, cfg, degrade=degrade, progress=progress)
        return UnionResult(result, int(hq.shape[0]), "redrawn")
    lqs = []
    for v in used:
        assert v.lq is not None
        lq = torch.from_numpy(v.lq)
        if lq.shape[-2:] != hq.shape[-2:]:
            lq = F.interpolate(lq, size=hq.shape[-2:], mode="bicubic", align_corners=False)
        lqs.append(lq)
    result = train_enhancer(hq, torch.cat(lqs), cfg, progress=progress)
    return UnionResult(result, int(hq.shape[0]), "shipped")


def _train_on_disk(packages: list[SpooledPackage], cfg: TrainConfig, degrade: Degrade | None,
                   progress: Progress | None) -> UnionResult:
    hq = DiskImages.of(packages, "hq")
    if degrade is not None:
        result = train_streamed(hq, None, cfg, degrade=degrade, progress=progress)
        return UnionResult(result, len(hq), "redrawn")
    result = train_streamed(hq, DiskImages.of(packages, "lq"), cfg, progress=progress)
    return UnionResult(result, len(hq), "shipped")
