"""Fixtures shared by the distillation tests: one real chest CT patient at 48 px and the
image-domain 25 % dose operator matching uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from medidd.degrade.spec import DegradationSpec, build_degradation
from medidd.preprocess.slices import SliceSet
from tests.helpers_real import real_slices


@pytest.fixture(scope="module")
def patient(real_samples: Path) -> SliceSet:
    return real_slices(real_samples / "ct/lung2.nrrd", "CT", "p-00000000c0de", size=48)


@pytest.fixture(scope="module")
def degrade():  # type: ignore[no-untyped-def]
    spec = DegradationSpec(kind="ct_lowdose", dose=0.25, image_domain=True)
    return build_degradation(spec, window=(-1000.0, 1000.0))
