"""Fitting the prior to a patient: MR intensity histogram (the body-size fit is tested in
test_priors.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from medidd.prior.atlas import atlas_prior
from medidd.prior.fit import FOREGROUND, fit_intensity
from tests.helpers_real import real_slices


def test_fit_intensity_gives_the_atlas_the_patients_mr_histogram(real_samples: Path) -> None:
    """MR intensities have no unit: fitted, the atlas's foreground quantiles are the real
    patient's (up to the interpolation between the 16 matched quantiles); air stays air."""
    real = real_slices(real_samples / "mr/brain1.nrrd", "MR", "p-0000000000aa", size=64)
    prior = atlas_prior(2, size=64, modality="MR", window=(0.0, 1.0))
    fitted, info = fit_intensity(prior, real.images)
    assert info == {"intensity_quantiles": 16.0}
    levels = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)

    def q(x: torch.Tensor) -> torch.Tensor:
        return torch.quantile(x.double()[x > FOREGROUND], levels)

    assert (q(fitted.images) - q(real.images)).abs().max() < 0.05
    assert (q(prior.images) - q(real.images)).abs().max() > 0.05  # it was not so before
    air = prior.images <= FOREGROUND
    assert torch.equal(fitted.images[air], prior.images[air])
