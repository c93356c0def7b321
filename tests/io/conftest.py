"""Fixtures of the ingestion tests: the site salt and the sample DICOM tree made from real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medidd.io.sample_data import make_sample_patients, write_dicom_series
from medidd.io.volume import Volume

SALT = bytes(range(32))


@pytest.fixture(scope="session")
def salt() -> bytes:
    return SALT


@pytest.fixture(scope="session")
def sample_tree(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CT and MR sample volumes written as one DICOM series per patient."""
    out = tmp_path_factory.mktemp("patients") / "dicom"
    make_sample_patients(real_samples, out, modality="both")
    return out


def ramp_volume(n: int = 6, size: int = 16, modality: str = "CT") -> Volume:
    """A small integer-valued volume whose every voxel differs (orientation is checkable)."""
    data = (np.arange(n * size * size, dtype=np.float32).reshape(n, size, size) % 2000) - 1000
    return Volume(data, (2.5, 0.7, 0.6), modality, "p-test", "s-test")  # type: ignore[arg-type]


def write_patient(
    folder: Path, *, patient_id: str = "PID-0001", name: str = "DOE^JANE", seed: int = 0,
    volume: Volume | None = None, compress: bool = False, codec: str = "j2k",
) -> list[Path]:
    """Write a small synthetic CT series into ``folder`` (a patient folder)."""
    return write_dicom_series(
        volume if volume is not None else ramp_volume(), folder, patient_name=name,
        patient_id=patient_id, seed=seed, compress=compress, codec=codec,
    )
