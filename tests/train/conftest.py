"""Real CT slices for the trainer tests: lung1 for training, lung2 held out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.ct_data import load_ct_slices


@pytest.fixture(scope="session")
def ct_train(real_samples: Path) -> torch.Tensor:
    return load_ct_slices(real_samples / "ct" / "lung1.nrrd", 8)


@pytest.fixture(scope="session")
def ct_heldout(real_samples: Path) -> torch.Tensor:
    return load_ct_slices(real_samples / "ct" / "lung2.nrrd", 6)
