"""One patient's distillation, the unit of work that runs in-process, in a worker process
or on a Ray cluster.

:class:`SiteSetup` is what every patient of a site shares (config, degradation spec, window,
prior): plain, picklable data that crosses to worker processes and Ray tasks.
:class:`PatientDistiller` builds the operators and the method from it once, and
:meth:`PatientDistiller.distill` condenses one patient with the seed
``derive(cfg.seed, patient_key)``. Every engine calls that one method, so a patient gives the
same tensors wherever it runs, bit for bit when the torch thread count is the same (float
reductions split by threads round differently, so a 1-thread and a 2-thread run can differ in
the last bits). :func:`distill_patient` is the entry point of worker processes: it sets the
thread count and keeps one distiller per process.

Example:
    >>> from medidd.distill.config import DistillConfig
    >>> from medidd.degrade import DegradationSpec
    >>> setup = SiteSetup(DistillConfig(), DegradationSpec(kind="gaussian", noise_sigma=0.05),
    ...                   (0.0, 1.0), None)
    >>> setup.key == SiteSetup(DistillConfig(), setup.spec, (0.0, 1.0), None).key
    True
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property

import torch

from medidd.degrade.spec import DegradationSpec, build_degradation
from medidd.distill.base import DistillContext, Distilled, Progress, method_factory
from medidd.distill.config import DistillConfig, images_per_patient
from medidd.package import canonical_json
from medidd.preprocess.slices import SliceSet
from medidd.prior import Prior
from medidd.seeds import derive
from medidd.train.device import resolve_device

logger = logging.getLogger(__name__)


def prior_digest(prior: Prior | None) -> str:
    """sha256 of a prior's images and positions (``"none"`` without a prior): what a
    checkpoint of a prior-based method depends on besides the config.

    Example:
        >>> prior_digest(None)
        'none'
    """
    if prior is None:
        return "none"
    h = hashlib.sha256()
    for t in (prior.images, prior.z):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SiteSetup:
    """What every patient of one site's run shares; picklable (sent to workers once).

    ``window`` is the (low, high) intensity window of the site's images (HU for CT; (0, 1)
    for MR); ``prior`` the prior the method starts from (None when it needs none)."""

    cfg: DistillConfig
    spec: DegradationSpec
    window: tuple[float, float]
    prior: Prior | None

    @cached_property
    def key(self) -> str:
        """sha256 of everything that determines a patient's output besides its slices."""
        text = canonical_json({"cfg": self.cfg.model_dump(mode="json"),
                               "spec": self.spec.model_dump(mode="json"),
                               "window": [float(w) for w in self.window],
                               "prior": prior_digest(self.prior)})
        return hashlib.sha256(text.encode("ascii")).hexdigest()


class PatientDistiller:
    """The method and operators of a site, built once; :meth:`distill` runs one patient."""

    def __init__(self, setup: SiteSetup) -> None:
        self.setup = setup
        cfg = setup.cfg
        self.device = resolve_device(cfg.device)
        self.degrade = build_degradation(setup.spec, window=setup.window).to(self.device)
        self.match_degrade = None
        if cfg.matching.fast_degradation:
            self.match_degrade = build_degradation(setup.spec, window=setup.window,
                                                   fast=True).to(self.device)
        self.method = method_factory(cfg.method)(cfg)

    def distill(self, real: SliceSet, progress: Progress | None = None) -> Distilled:
        """Condense ``real`` (one patient) with the seed ``derive(cfg.seed, patient_key)``."""
        ctx = DistillContext(
            ipc=images_per_patient(self.setup.cfg, real.size),
            degrade=self.degrade,
            seed=derive(self.setup.cfg.seed, real.patient_key),
            device=self.device,
            prior=self.setup.prior,
            progress=progress,
            match_degrade=self.match_degrade,
        )
        return self.method.distill(real, ctx)


@dataclass
class _ProcessState:
    """The distiller a worker process keeps between patients (one site at a time)."""

    distillers: dict[str, PatientDistiller] = field(default_factory=dict)

    def distiller(self, setup: SiteSetup) -> PatientDistiller:
        found = self.distillers.get(setup.key)
        if found is None:
            self.distillers.clear()
            found = self.distillers[setup.key] = PatientDistiller(setup)
        return found


_STATE = _ProcessState()


@dataclass(frozen=True)
class PatientOutput:
    """What a worker returns for one patient: the result, its seconds, and where it ran."""

    key: str
    distilled: Distilled
    seconds: float
    where: str


def distill_patient(setup: SiteSetup, real: SliceSet, *, threads: int | None = None,
                    where: str = "") -> PatientOutput:
    """Distil one patient in a worker (a pool process or a Ray task): set the torch thread
    count, reuse this process's distiller for ``setup``, time the patient.

    Example:
        >>> from medidd.distill.config import DistillConfig
        >>> from medidd.degrade import DegradationSpec
        >>> cfg = DistillConfig(method="random", ipc=1)
        >>> setup = SiteSetup(cfg, DegradationSpec(kind="gaussian", noise_sigma=0.05),
        ...                   (0.0, 1.0), None)
        >>> real = SliceSet(torch.rand(3, 1, 8, 8), torch.linspace(0, 1, 3), "p-0123abcd",
        ...                 "MR", (0.0, 1.0))
        >>> distill_patient(setup, real, threads=1).distilled.hq.shape
        torch.Size([1, 1, 8, 8])
    """
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    distilled = _STATE.distiller(setup).distill(real)
    return PatientOutput(real.patient_key, distilled, time.perf_counter() - t0, where)
