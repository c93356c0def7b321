"""Baseline distillation methods (seeds 001, 002, 004 and classic coreset selection).

Importing this package registers every baseline under its name: ``full``, ``random``,
``herding``, ``kcenter`` (real slices), ``dc_real``, ``dc_noise``, ``pixel_gm`` (free-pixel
gradient matching), ``dm`` (distribution matching), ``idc`` (instance data condensation with
random local Fourier features and NCFD) and ``tripled`` (complexity selection + CNN
distribution alignment).
"""

from medidd.distill.baselines import dm, gradient_matching, idc, selection, tripled
from medidd.distill.baselines.dm import DMOptions
from medidd.distill.baselines.idc import IDCOptions
from medidd.distill.baselines.tripled import TripleDOptions

__all__ = [
    "DMOptions",
    "IDCOptions",
    "TripleDOptions",
    "dm",
    "gradient_matching",
    "idc",
    "selection",
    "tripled",
]
