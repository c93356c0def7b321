"""Task degradations: HQ (N, 1, H, W) in [0, 1] -> LQ of the same shape; torch, batched,
differentiable in HQ, seeded (``seed: int | torch.Generator``, never the global RNG).

* :func:`ct_lowdose` — low-dose CT by projection-domain noise insertion (torch Radon/FBP in
  :mod:`medidd.degrade.radon`), dose fraction as the knob; fast image-domain option.
* :func:`kspace_truncate` — MR super-resolution by k-space truncation (+ optional complex noise).
* :func:`downsample_upsample` — CT super-resolution by antialiased downsampling.
* :func:`gaussian_noise`, :func:`rician_noise` — generic denoising.
* :class:`DegradationSpec` / :func:`build_degradation` / :func:`default_spec` — the config and
  manifest form, and the ``(hq, seed) -> lq`` module built from it (the one factory).
* :func:`draw_lq` — the one LQ drawer: per-image seeds, batched, used by every caller.

Example:
    >>> import torch
    >>> op = build_degradation(default_spec("sr", "MR"))
    >>> op(torch.rand(1, 1, 32, 32), seed=0).shape
    torch.Size([1, 1, 32, 32])
"""

from medidd.degrade._random import PerImageSeeds
from medidd.degrade.ct_lowdose import ct_lowdose, inserted_variance
from medidd.degrade.draw import draw_lq
from medidd.degrade.kspace import kspace_mask, kspace_truncate
from medidd.degrade.noise import gaussian_noise, rician_noise
from medidd.degrade.radon import ParallelBeam, fbp, radon
from medidd.degrade.resample import downsample_upsample
from medidd.degrade.spec import (
    KINDS,
    Degradation,
    DegradationSpec,
    build_degradation,
    default_spec,
)

__all__ = [
    "KINDS",
    "Degradation",
    "DegradationSpec",
    "ParallelBeam",
    "PerImageSeeds",
    "build_degradation",
    "ct_lowdose",
    "default_spec",
    "downsample_upsample",
    "draw_lq",
    "fbp",
    "gaussian_noise",
    "inserted_variance",
    "kspace_mask",
    "kspace_truncate",
    "radon",
    "rician_noise",
]
