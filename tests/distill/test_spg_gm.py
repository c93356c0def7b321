"""SPG-GM on real patients: structure kept, matching loss falls, deterministic, ablations."""

from __future__ import annotations

import pytest
import torch

from medidd.distill import DistillConfig, DistillContext, method_factory
from medidd.distill.matching import gm_distance
from medidd.distill.spg_gm import SPGGenerator, structure_loss
from medidd.preprocess.slices import SliceSet
from medidd.prior import atlas_prior
from medidd.prior.fit import fit_to_size, water_equivalent_diameter
from medidd.privacy.memorisation import nearest_real

SMALL = {
    "matching": {
        "iterations": 3,
        "outer_loop": 3,
        "inner_steps": 1,
        "patch_size": 24,
        "real_batch": 6,
        "syn_patches": 4,
        "lfd_features": 16,
    },
    "spg": {"width": 8, "depth": 3},
    "prior": {"kind": "atlas"},
}


def _run(patient: SliceSet, degrade, seed: int = 3, **over):  # type: ignore[no-untyped-def]
    """Distil ``patient``; returns the output and the prior it started from (the atlas fitted
    to the patient's size, as ``prior.fit_size`` does by default)."""
    cfg = DistillConfig.model_validate({**SMALL, **over})
    prior = atlas_prior(2, size=48, modality="CT", window=(-1000.0, 1000.0))
    ctx = DistillContext(ipc=2, degrade=degrade, seed=seed, prior=prior)
    out = method_factory(cfg.method)(cfg).distill(patient, ctx)
    if cfg.prior.fit_size:
        prior = fit_to_size(prior, patient.images, patient.window)[0]
    return out, prior


def test_gm_distance_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    real = [torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)]
    syn = [torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)]
    ref = 0.0
    for o in range(4):
        a, b = real[0][o].flatten(), syn[0][o].flatten()
        ref += 1 - float(a @ b / (a.norm() * b.norm()))
    assert abs(float(gm_distance(real, syn)) - ref) < 1e-5
    assert float(gm_distance(real, real)) < 1e-5


def test_generator_starts_at_the_prior() -> None:
    gen = SPGGenerator(8, 3, 2)
    p = torch.rand(2, 1, 16, 16)
    assert torch.count_nonzero(gen(p, torch.tensor([0.1, 0.9]), torch.randn(2, 2, 16, 16))) == 0


def test_spg_keeps_anatomy_and_adds_patient_texture(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    out, prior = _run(patient, degrade)
    assert out.hq.shape == (2, 1, 48, 48) and out.lq.shape == (2, 1, 48, 48)
    assert float(out.hq.min()) >= 0 and float(out.hq.max()) <= 1
    assert not torch.equal(out.hq, prior.images)  # personalised
    # high-pass residual: the low frequencies (anatomy, intensity) are the prior's
    assert float(structure_loss(out.hq, prior.images, "lowpass")) < 0.05
    assert abs(float(out.hq.mean() - prior.images.mean())) < 0.01
    # ships no near-copy of a real slice
    assert float(nearest_real(out.hq, patient.images)[0].max()) < 0.95
    assert out.info["steps"] == 9


def test_spg_is_deterministic_under_a_seed(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    a, _ = _run(patient, degrade, seed=5)
    b, _ = _run(patient, degrade, seed=5)
    c, _ = _run(patient, degrade, seed=6)
    assert torch.equal(a.hq, b.hq) and torch.equal(a.lq, b.lq)
    assert not torch.equal(a.hq, c.hq)


@pytest.mark.parametrize("objective", ["gm", "lfd", "gm+lfd"])
def test_each_objective_runs(patient: SliceSet, degrade, objective: str) -> None:  # type: ignore[no-untyped-def]
    out, _ = _run(patient, degrade, matching={**SMALL["matching"], "objective": objective})
    assert torch.isfinite(out.hq).all()


def test_prior_only_ships_the_prior(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    out, prior = _run(patient, degrade, method="prior_only")
    assert torch.equal(out.hq, prior.images)


def test_prior_fitted_to_the_patients_body_size(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    """The atlas is smaller than this real chest; fitted, every shipped slice has the patient's
    median water-equivalent diameter (so simulated low-dose noise has the patient's level)."""
    fitted, _ = _run(patient, degrade, method="prior_only")
    plain, atlas = _run(patient, degrade, method="prior_only",
                        prior={"kind": "atlas", "fit_size": False})
    assert torch.equal(plain.hq, atlas.images)
    w, px = patient.window, 400 / 48
    target = float(water_equivalent_diameter(patient.images, w, px).median())
    before = water_equivalent_diameter(atlas.images, w, px)
    after = water_equivalent_diameter(fitted.hq, w, px)
    assert float(before.max()) < 0.95 * target
    assert torch.allclose(after, torch.full_like(after, target), rtol=0.01)
    assert fitted.info["zoom_min"] > 1.0
    # noise follows: the fitted pair's simulated low-dose noise is stronger
    noise = [float((degrade(x, 0) - x).std()) for x in (atlas.images, fitted.hq)]
    assert noise[1] > 1.1 * noise[0]


def test_missing_prior_is_a_clear_error(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    cfg = DistillConfig.model_validate(SMALL)
    with pytest.raises(ValueError, match="needs a prior"):
        method_factory("spg_gm")(cfg).distill(
            patient, DistillContext(ipc=2, degrade=degrade, seed=0)
        )


def test_unknown_names_suggest_the_fix() -> None:
    with pytest.raises(ValueError, match="did you mean 'spg_gm'"):
        method_factory("spg_mg")
    with pytest.raises(ValueError, match="did you mean 'denoise'"):
        DistillConfig.model_validate({"task": "denoize"})
    with pytest.raises(ValueError, match="did you mean 'highpass'"):
        DistillConfig.model_validate({"spg": {"residual": "highpas"}})


def test_saturated_generator_output_still_gets_gradients() -> None:
    """The dead-residual bug: a bias deep in tanh's tail gave a constant residual (removed by
    the high-pass) and exactly zero gradients; centring keeps the generator trainable."""
    from medidd.distill.config import SPGConfig
    from medidd.distill.spg_gm import spg_residual

    w = torch.randn(2, 1, 24, 24, generator=torch.Generator().manual_seed(1))

    def grad(centre: bool) -> float:
        out = (torch.full((2, 1, 24, 24), 40.0) + 0.1 * w).requires_grad_(True)
        (spg_residual(out, SPGConfig(centre=centre)) * w).sum().backward()
        assert out.grad is not None
        return float(out.grad.abs().max())

    assert grad(centre=False) == 0.0
    assert grad(centre=True) > 1e-3


def test_default_residual_stays_alive_on_a_real_patient(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    out, prior = _run(patient, degrade)
    body = prior.images > 0.05
    change = (out.hq - prior.images).abs()[body]
    assert change.mean() > 1e-3, "the generator added nothing: the residual died"
    assert change.max() <= DistillConfig().spg.residual_scale * 2 + 1e-6
