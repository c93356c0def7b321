"""Options of patient ingestion (what counts as a usable volume), one validated model.

Example:
    >>> IngestOptions(min_slices=5).min_slices
    5
    >>> try:
    ...     IngestOptions(series="larges")
    ... except ValueError as exc:
    ...     print("did you mean 'largest'?" in str(exc))
    True
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from medidd.config import StrictModel
from medidd.lookup import look_up_option

SERIES_POLICIES = ("largest", "all")
NONFINITE_POLICIES = ("reject", "replace")


class IngestOptions(StrictModel):
    """What :func:`medidd.io.discover.load_cohort` accepts as a usable volume.

    Attributes:
        modality: keep only this modality (``"CT"``/``"MR"``); also the modality given to
            NIfTI/NRRD files (otherwise guessed, see :mod:`medidd.io.readers`). ``None``: both.
        min_slices: fewest slices of a usable volume.
        allow_2d: accept a single axial 2D image as a one-slice volume.
        spacing_tolerance: largest relative deviation of a slice gap from the median gap
            before a series counts as irregular (0.1 = 10%).
        series: ``"largest"`` keeps one volume per patient and modality (most slices, then
            finest spacing); ``"all"`` keeps every usable series.
        nonfinite: ``"reject"`` volume files holding NaN/inf, or ``"replace"`` those voxels by
            the smallest finite value.
    """

    modality: Literal["CT", "MR"] | None = None
    min_slices: int = Field(default=3, ge=1)
    allow_2d: bool = False
    spacing_tolerance: float = Field(default=0.1, gt=0.0, lt=1.0)
    series: Literal["largest", "all"] = "largest"
    nonfinite: Literal["reject", "replace"] = "reject"

    @field_validator("modality", mode="before")
    @classmethod
    def _modality(cls, value: Any) -> Any:
        if isinstance(value, str):
            return look_up_option(value.upper(), ("CT", "MR"), what="modality")
        return value

    @field_validator("series", mode="before")
    @classmethod
    def _series(cls, value: Any) -> Any:
        if isinstance(value, str):
            return look_up_option(value, SERIES_POLICIES, what="series policy")
        return value

    @field_validator("nonfinite", mode="before")
    @classmethod
    def _nonfinite(cls, value: Any) -> Any:
        if isinstance(value, str):
            return look_up_option(value, NONFINITE_POLICIES, what="nonfinite policy")
        return value
