"""Shared fixtures: the real sample data (fetched once with pip, see ../shared/data)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _samples_dir() -> Path:
    return Path(os.environ.get("MEDIDD_SAMPLES", ROOT / "data" / "samples")).resolve()


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """Folder with ct/, mr/, labels/ and dicom_corpus/ of real public images."""
    dest = _samples_dir()
    if not (dest / ".complete-v2").exists():
        script = ROOT.parent / "shared" / "data" / "fetch_real_samples.sh"
        subprocess.run(["bash", str(script), str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def dicom_corpus(real_samples: Path) -> Path:
    return real_samples / "dicom_corpus"
