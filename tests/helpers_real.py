"""Real-data helpers shared by tests: real CT/MR volumes as Volumes and SliceSets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medidd.io import Volume
from medidd.preprocess.pipeline import PreprocessConfig, preprocess_volume
from medidd.preprocess.slices import SliceSet


def real_volume(path: Path, modality: str, key: str = "p-0000000000aa") -> Volume:
    """Read a real NRRD/NIfTI sample with SimpleITK (axis order z, y, x)."""
    im = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(im).astype(np.float32)
    spacing = tuple(float(s) for s in im.GetSpacing()[::-1])
    return Volume(data, spacing, modality, key, "s-00")  # type: ignore[arg-type]


def real_slices(path: Path, modality: str, key: str, size: int = 64) -> SliceSet:
    return preprocess_volume(real_volume(path, modality, key), PreprocessConfig(size=size))
