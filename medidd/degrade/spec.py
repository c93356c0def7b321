"""The degradation spec (config + manifest) and the callable it builds.

A :class:`DegradationSpec` is plain data: it travels in configs and in the package manifest
(``spec.model_dump(mode="json")``), so the aggregator can rebuild the exact operator and
re-draw LQ noise each epoch with fresh seeds. :func:`build_degradation` turns it into a
:class:`Degradation`, a deterministic ``(hq, seed) -> lq`` module; :meth:`Degradation.random`
is the sampler that draws a seed from a generator and returns it for the record (TorchIO's
``RandomNoise`` -> ``Noise(seed)`` pattern).

Fields used by each kind (the others keep their defaults and are ignored):

========== ==============================================================================
kind       fields
========== ==============================================================================
ct_lowdose dose, i0, electronic_noise, n_angles, pixel_mm, mu_water, fbp_filter,
           image_domain (needs the HU window)
kspace_sr  scale, taper, noise_sigma (complex acquisition noise; 0 = none)
ct_sr      scale, downsample_mode, noise_sigma (Gaussian noise on the LR grid; 0 = none)
gaussian   noise_sigma (> 0)
rician     noise_sigma (> 0)
========== ==============================================================================

Example:
    >>> import torch
    >>> spec = DegradationSpec(kind="gaussian", noise_sigma=0.05)
    >>> op = build_degradation(spec)
    >>> hq = torch.rand(2, 1, 16, 16)
    >>> bool(torch.equal(op(hq, seed=3), op(hq, seed=3)))
    True
    >>> DegradationSpec.model_validate(spec.model_dump(mode="json")) == spec
    True
    >>> default_spec("denoise", "CT").label()
    'dose=0.25'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from medidd.config import StrictModel
from medidd.degrade._random import Seed, make_generator
from medidd.degrade.ct_lowdose import MU_WATER_PER_MM, ct_lowdose
from medidd.degrade.kspace import TAPERS, kspace_truncate
from medidd.degrade.noise import gaussian_noise, rician_noise
from medidd.degrade.radon import FILTERS
from medidd.degrade.resample import DOWN_MODES, downsample_upsample
from medidd.lookup import look_up_option

KINDS = ("ct_lowdose", "kspace_sr", "ct_sr", "gaussian", "rician")
TASKS = ("denoise", "sr")
MODALITIES = ("CT", "MR")


class DegradationSpec(StrictModel):
    """What turns an HQ slice into its LQ partner; see the module docstring for which fields
    each ``kind`` uses. Units: ``dose`` a fraction of the full dose; ``i0`` photons per detector
    bin per view; ``electronic_noise`` photon counts (std); ``pixel_mm`` mm (None: a
    400 mm field of view over the image width); ``mu_water`` 1/mm; ``noise_sigma`` normalised
    intensity units."""

    kind: str
    dose: float = Field(default=0.25, gt=0.0, le=1.0)
    i0: float = Field(default=1e5, gt=0.0)
    electronic_noise: float = Field(default=5.0, ge=0.0)
    n_angles: int = Field(default=180, ge=8, le=4096)
    pixel_mm: float | None = Field(default=None, gt=0.0)
    mu_water: float = Field(default=MU_WATER_PER_MM, gt=0.0)
    fbp_filter: str = "ramp"
    image_domain: bool = False
    scale: int = Field(default=2, ge=2, le=16)
    taper: str = "none"
    downsample_mode: str = "bicubic"
    noise_sigma: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return look_up_option(value, KINDS, what="degradation kind")

    @field_validator("fbp_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        return look_up_option(value, FILTERS, what="FBP filter")

    @field_validator("taper")
    @classmethod
    def _taper(cls, value: str) -> str:
        return look_up_option(value, TAPERS, what="k-space taper")

    @field_validator("downsample_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        return look_up_option(value, DOWN_MODES, what="downsampling mode")

    @model_validator(mode="after")
    def _noise_needed(self) -> DegradationSpec:
        if self.kind in ("gaussian", "rician") and self.noise_sigma <= 0:
            raise ValueError(
                f"kind '{self.kind}' needs noise_sigma > 0 (normalised units, e.g. 0.04)"
            )
        return self

    def label(self) -> str:
        """A short setting name for tables: ``dose=0.25``, ``x2``, ``sigma=0.05``.

        Example:
            >>> DegradationSpec(kind="kspace_sr", scale=4).label()
            'x4'
        """
        if self.kind == "ct_lowdose":
            return f"dose={self.dose:g}"
        if self.kind in ("kspace_sr", "ct_sr"):
            return f"x{self.scale}"
        return f"sigma={self.noise_sigma:g}"


class Degradation(torch.nn.Module):
    """Deterministic ``(hq, seed) -> lq`` operator built from a :class:`DegradationSpec`.

    ``hq``: (N, 1, H, W) float in [0, 1]; ``lq``: the same shape, dtype and device.
    Differentiable in ``hq``; the same seed gives the same ``lq``.
    """

    def __init__(self, spec: DegradationSpec, window: tuple[float, float] | None = None):
        super().__init__()
        if spec.kind == "ct_lowdose" and window is None:
            raise ValueError(
                "a ct_lowdose degradation needs the HU window the slices were normalised "
                "with (SliceSet.window), e.g. build_degradation(spec, window=(-1000, 1000))"
            )
        self.spec = spec.model_copy()
        self.window = (float(window[0]), float(window[1])) if window is not None else None

    def forward(self, hq: torch.Tensor, seed: Seed) -> torch.Tensor:
        s = self.spec
        if s.kind == "ct_lowdose":
            if self.window is None:  # guarded in __init__; kept for type narrowing
                raise RuntimeError("ct_lowdose degradation without a window")
            return ct_lowdose(
                hq,
                seed,
                window=self.window,
                dose=s.dose,
                i0=s.i0,
                electronic_noise=s.electronic_noise,
                n_angles=s.n_angles,
                pixel_mm=s.pixel_mm,
                mu_water=s.mu_water,
                filter_name=s.fbp_filter,
                image_domain=s.image_domain,
            )
        if s.kind == "kspace_sr":
            return kspace_truncate(
                hq, s.scale, taper=s.taper, noise_sigma=s.noise_sigma, seed=seed
            )
        if s.kind == "ct_sr":
            return downsample_upsample(
                hq, s.scale, mode=s.downsample_mode, noise_sigma=s.noise_sigma, seed=seed
            )
        if s.kind == "gaussian":
            return gaussian_noise(hq, s.noise_sigma, seed)
        return rician_noise(hq, s.noise_sigma, seed)

    def random(
        self, hq: torch.Tensor, generator: int | torch.Generator
    ) -> tuple[torch.Tensor, int]:
        """Draw a seed from ``generator`` and return ``(lq, seed)``; ``self(hq, seed)``
        reproduces ``lq``.

        Example:
            >>> import torch
            >>> op = build_degradation(DegradationSpec(kind="rician", noise_sigma=0.05))
            >>> hq = torch.rand(1, 1, 8, 8)
            >>> lq, seed = op.random(hq, torch.Generator().manual_seed(0))
            >>> bool(torch.equal(lq, op(hq, seed)))
            True
        """
        gen = make_generator(generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        return self(hq, seed), seed

    def extra_repr(self) -> str:
        return f"{self.spec.kind}, {self.spec.label()}, window={self.window}"


def build_degradation(
    spec: DegradationSpec | Mapping[str, Any],
    window: tuple[float, float] | None = None,
    *,
    fast: bool = False,
) -> Degradation:
    """The one factory of degradation operators: ``spec`` (a :class:`DegradationSpec` or its
    manifest dict) -> the ``(hq, seed) -> lq`` module. ``window`` (HU) is required for
    ``ct_lowdose``. ``fast=True`` gives the image-domain approximation of projection-domain
    low dose (what matching uses inside distillation); other kinds have no fast variant and
    are returned unchanged.

    Example:
        >>> import torch
        >>> op = build_degradation(DegradationSpec(kind="ct_sr", scale=2))
        >>> op(torch.rand(3, 1, 32, 32), seed=0).shape
        torch.Size([3, 1, 32, 32])
        >>> build_degradation({"kind": "ct_lowdose"}, (-1000, 1000), fast=True).spec.image_domain
        True
    """
    if not isinstance(spec, DegradationSpec):
        spec = DegradationSpec.model_validate(dict(spec))
    if fast and spec.kind == "ct_lowdose" and not spec.image_domain:
        spec = spec.model_copy(update={"image_domain": True})
    return Degradation(spec, window)


def default_spec(task: str, modality: str) -> DegradationSpec:
    """The default degradation for a task and modality.

    ``denoise``: CT -> 25% dose projection-domain low dose, MR -> Rician sigma 0.05.
    ``sr``: CT -> x2 antialiased downsampling, MR -> x2 k-space truncation.

    Example:
        >>> default_spec("sr", "MR").kind
        'kspace_sr'
    """
    task = look_up_option(task, TASKS, what="task")
    modality = look_up_option(modality, MODALITIES, what="modality")
    if task == "denoise":
        if modality == "CT":
            return DegradationSpec(kind="ct_lowdose", dose=0.25)
        return DegradationSpec(kind="rician", noise_sigma=0.05)
    if modality == "CT":
        return DegradationSpec(kind="ct_sr", scale=2)
    return DegradationSpec(kind="kspace_sr", scale=2)


__all__ = [
    "KINDS",
    "Degradation",
    "DegradationSpec",
    "build_degradation",
    "default_spec",
]
