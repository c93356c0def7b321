"""The data model that leaves ``medidd.io``: volumes and patients, never DICOM datasets.

No DICOM tag travels past ``io/``: a :class:`Volume` carries voxels, spacing, modality and a
pseudonymous patient key only. Unusable inputs are recorded as :class:`Skipped` items with a
one-line reason instead of raising.

Example:
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 8, 8), np.float32), spacing=(5.0, 0.7, 0.7), modality="CT",
    ...            patient_key="p-1a2b", series_key="s-01")
    >>> v.shape, v.n_slices
    ((4, 8, 8), 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Modality = Literal["CT", "MR"]
MODALITIES: tuple[str, ...] = ("CT", "MR")


@dataclass(frozen=True)
class Volume:
    """A 3D image: ``data`` float32 (Z, H, W), ``spacing`` (z, y, x) in mm.

    CT data is in Hounsfield units (rescale slope/intercept applied, MONOCHROME1 inverted);
    MR data is in the scanner's arbitrary units. Slices are axial, ordered foot-to-head or
    head-to-foot consistently along increasing z. ``patient_key`` is a salted hash and
    ``series_key`` a short pseudonymous series identifier (never a DICOM UID).
    """

    data: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    modality: Modality
    patient_key: str
    series_key: str

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"Volume data must be (Z, H, W), got shape {self.data.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        z, h, w = self.data.shape
        return int(z), int(h), int(w)

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])


@dataclass(frozen=True)
class Skipped:
    """An input that was not used: ``source`` is a path relative to the patients folder (or a
    series label), ``reason`` one line that names the problem and, where possible, the fix."""

    source: str
    reason: str


@dataclass
class Patient:
    """One patient: its usable volumes and what was skipped, with reasons."""

    key: str
    volumes: list[Volume] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return bool(self.volumes)


@dataclass
class Cohort:
    """Every patient found under a patients folder, plus inputs that belong to no patient."""

    patients: list[Patient] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def usable_patients(self) -> list[Patient]:
        return [p for p in self.patients if p.usable]
