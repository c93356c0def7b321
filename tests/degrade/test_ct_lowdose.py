"""Low-dose CT: the noise level in HU at a requested dose, identity at full dose, seeding."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from medidd.degrade.ct_lowdose import (
    MU_WATER_PER_MM,
    ct_lowdose,
    fbp_noise_gain,
    inserted_variance,
)
from medidd.degrade.phantoms import disc_mask, water_cylinder

from .conftest import CT_WINDOW

log = logging.getLogger(__name__)
HU_PER_UNIT = CT_WINDOW[1] - CT_WINDOW[0]
PIXEL_MM = 400.0 / 128


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    return water_cylinder(128).repeat(4, 1, 1, 1)


def _roi_std_hu(lq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor) -> float:
    return float(((lq - hq) * HU_PER_UNIT)[..., roi].std())


def _noise_std(phantom: torch.Tensor, dose: float, electronic: float, image_domain: bool) -> float:
    lq = ct_lowdose(phantom, 0, window=CT_WINDOW, dose=dose, electronic_noise=electronic,
                    image_domain=image_domain)
    return _roi_std_hu(lq, phantom, disc_mask(128, 10))


def test_full_dose_is_identity(phantom: torch.Tensor) -> None:
    for image_domain in (False, True):
        lq = ct_lowdose(phantom, 3, window=CT_WINDOW, dose=1.0, image_domain=image_domain)
        assert torch.equal(lq, phantom)


@pytest.mark.parametrize("image_domain", [False, True])
def test_seeded(phantom: torch.Tensor, image_domain: bool) -> None:
    kw = {"window": CT_WINDOW, "dose": 0.25, "image_domain": image_domain}
    a = ct_lowdose(phantom, 11, **kw)  # type: ignore[arg-type]
    b = ct_lowdose(phantom, 11, **kw)  # type: ignore[arg-type]
    c = ct_lowdose(phantom, 12, **kw)  # type: ignore[arg-type]
    g = ct_lowdose(phantom, torch.Generator().manual_seed(11), **kw)  # type: ignore[arg-type]
    assert torch.equal(a, b) and torch.equal(a, g)
    assert not torch.allclose(a, c)
    state = torch.random.get_rng_state()
    ct_lowdose(phantom, 5, **kw)  # type: ignore[arg-type]
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_noise_std_matches_the_analytic_level(phantom: torch.Tensor) -> None:
    """Centre of a 300 mm water cylinder: every ray through it has p = mu_water * 300 mm, so
    the FBP variance there is gain * var_ins(p) / pixel^2 (golden number, no fitting)."""
    p_centre = torch.tensor(MU_WATER_PER_MM * 300.0, dtype=torch.float64)
    for dose in (0.5, 0.25, 0.10):
        var_ray = float(inserted_variance(p_centre, dose, 1e5, 5.0))
        expected = math.sqrt(fbp_noise_gain(128, 180) * var_ray) / PIXEL_MM * 1000 / MU_WATER_PER_MM
        measured = _noise_std(phantom, dose, 5.0, image_domain=False)
        log.info("dose %.2f: water-centre noise %.1f HU (analytic %.1f)", dose, measured, expected)
        assert measured == pytest.approx(expected, rel=0.12)


def test_noise_ratio_law(phantom: torch.Tensor) -> None:
    """Without electronic noise the inserted std scales as sqrt((1 - d) / d) and the total
    (full-dose + inserted) std as 1 / sqrt(d)."""
    std = {d: _noise_std(phantom, d, 0.0, image_domain=False) for d in (0.5, 0.25, 0.10)}
    assert std[0.25] / std[0.5] == pytest.approx(math.sqrt(3), rel=0.15)
    assert std[0.10] / std[0.5] == pytest.approx(3.0, rel=0.15)
    full = std[0.5]  # var_ins(0.5) = (1 - 0.5) / 0.5 * var_full = var_full
    total = {d: math.hypot(s, full) for d, s in std.items()}
    assert total[0.25] / total[0.5] == pytest.approx(math.sqrt(2), rel=0.15)
    assert total[0.10] / total[0.5] == pytest.approx(math.sqrt(5), rel=0.15)


def test_electronic_noise_raises_low_dose_noise(phantom: torch.Tensor) -> None:
    quiet = _noise_std(phantom, 0.1, 0.0, image_domain=False)
    noisy = _noise_std(phantom, 0.1, 10.0, image_domain=False)
    assert noisy > 1.2 * quiet


@pytest.mark.parametrize("dose", [0.5, 0.1])
def test_image_domain_is_calibrated_to_projection_domain(
    phantom: torch.Tensor, dose: float
) -> None:
    proj = _noise_std(phantom, dose, 5.0, image_domain=False)
    img = _noise_std(phantom, dose, 5.0, image_domain=True)
    assert img == pytest.approx(proj, rel=0.15)


def test_noise_is_zero_mean_and_spread_over_the_image(phantom: torch.Tensor) -> None:
    lq = ct_lowdose(phantom.repeat(4, 1, 1, 1), 0, window=CT_WINDOW, dose=0.25)
    diff = (lq - phantom.repeat(4, 1, 1, 1)) * HU_PER_UNIT
    roi = disc_mask(128, 30)
    assert abs(float(diff[..., roi].mean())) < 3.0  # HU; std is ~90 HU
    corner = diff[..., :12, :12]
    assert float(corner.std()) > 1.0  # the whole square is in the field of view


def test_real_ct_slice_noise(ct_real: tuple[torch.Tensor, float]) -> None:
    """Real chest CT (lung1, middle slice, 128 px): inserted noise in soft tissue (HU in
    [-100, 150]) and in outside air; longer, denser paths give more noise."""
    hq, pixel_mm = ct_real
    hu = hq * HU_PER_UNIT + CT_WINDOW[0]
    pool = torch.nn.functional.max_pool2d
    tissue = (hu > -100) & (hu < 150)
    tissue = ~pool((~tissue).float(), 5, 1, 2).bool() & tissue  # eroded
    air = hu < -980
    air = ~pool((~air).float(), 5, 1, 2).bool() & air
    assert tissue.sum() > 100 and air.sum() > 100
    std = {}
    for dose in (0.5, 0.25, 0.10):
        lq = ct_lowdose(hq, 0, window=CT_WINDOW, dose=dose, pixel_mm=pixel_mm,
                        electronic_noise=0.0)
        diff = (lq - hq) * HU_PER_UNIT
        std[dose] = (float(diff[tissue].std()), float(diff[air].std()))
        log.info("lung1 dose %.2f: soft tissue %.1f HU, air %.1f HU", dose, *std[dose])
        assert 5.0 < std[dose][0] < 500.0
        assert std[dose][1] < std[dose][0]
    assert std[0.25][0] / std[0.5][0] == pytest.approx(math.sqrt(3), rel=0.15)
    assert std[0.10][0] / std[0.5][0] == pytest.approx(3.0, rel=0.15)


@pytest.mark.parametrize("image_domain", [False, True])
def test_gradients_flow(phantom: torch.Tensor, image_domain: bool) -> None:
    hq = (phantom[:1] * 0.9 + 0.05).requires_grad_(True)
    lq = ct_lowdose(hq, 0, window=CT_WINDOW, dose=0.25, n_angles=60, image_domain=image_domain)
    (grad,) = torch.autograd.grad((lq**2).sum(), hq)
    assert torch.isfinite(grad).all()
    # d lq / d hq = 1 + d noise / d hq: the noise depends on the attenuation it travels through.
    assert float((grad - 2 * lq.detach()).abs().max()) > 0


def test_gradcheck_projection_domain() -> None:
    gen = torch.Generator().manual_seed(0)
    hq = (0.3 + 0.4 * torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=gen))
    hq.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: ct_lowdose(x, 4, window=CT_WINDOW, dose=0.3, n_angles=8, pixel_mm=20.0), (hq,)
    )


def test_invalid_parameters_are_reported_together() -> None:
    hq = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError) as info:
        ct_lowdose(hq, 0, window=(100.0, -100.0), dose=1.5, i0=-1.0)
    message = str(info.value)
    assert "dose" in message and "i0" in message and "window" in message
    with pytest.raises(ValueError, match="did you mean 'hann'"):
        ct_lowdose(hq, 0, window=CT_WINDOW, filter_name="han")
