"""Typed options of the baseline methods that need more than ``matching``/``selection``.

They live apart from the methods so that :class:`~medidd.distill.config.DistillConfig` can hold
them (``dm:``, ``idc:``, ``tripled:`` sections of a config) without import cycles.

Example:
    >>> DMOptions().init
    'noise'
"""

from __future__ import annotations

from pydantic import Field, field_validator

from medidd.config import StrictModel
from medidd.lookup import look_up_option

INITS = ("noise", "real")


class DMOptions(StrictModel):
    """Knobs of :class:`DistributionMatching` (patch size comes from ``matching.patch_size``)."""

    init: str = "noise"
    steps: int = Field(200, ge=1)
    width: int = Field(32, ge=4)
    depth: int = Field(3, ge=1)
    real_patches: int = Field(32, ge=1)
    syn_patches: int = Field(16, ge=1)
    lr: float = Field(0.01, gt=0)
    match_lq: bool = False

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        return look_up_option(v, INITS, what="dm init")


class IDCOptions(StrictModel):
    """Knobs of :class:`InstanceDataCondensation` (patch size from ``matching.patch_size``)."""

    steps: int = Field(100, ge=1)
    warmup: int = Field(30, ge=0)
    reassign_every: int = Field(20, ge=1)
    width: int = Field(8, ge=1)
    kernel: int = Field(3, ge=1)
    features: int = Field(32, ge=2)
    local_patch: int = Field(4, ge=1)
    frequencies: int = Field(128, ge=4)
    freq_scale: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    groups: int = Field(8, ge=1)
    kmeans_iters: int = Field(10, ge=1)
    real_patches: int = Field(32, ge=1)
    w_ins: float = Field(1.0, ge=0)
    w_group: float = Field(1.0, ge=0)
    w_pair: float = Field(1.0, ge=0)
    lr: float = Field(0.01, gt=0)
    max_patches: int = Field(512, ge=1)


class TripleDOptions(StrictModel):
    """Knobs of :class:`TripleD` (patch size comes from ``matching.patch_size``)."""

    bins: int = Field(16, ge=2)
    window: int = Field(9, ge=3)
    pool_fraction: float = Field(0.5, gt=0, le=1)
    steps: int = Field(60, ge=0)
    cnn_depth: int = Field(8, ge=1)
    cnn_width: int = Field(16, ge=4)
    real_patches: int = Field(16, ge=1)
    syn_patches: int = Field(8, ge=1)
    lr: float = Field(0.002, gt=0)
    kl_weight: float = Field(1.0, ge=0)
