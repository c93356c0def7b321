"""Priors on real patients: mean, medoid (a real patient's slices) and the procedural atlas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medidd.preprocess.slices import SliceSet
from medidd.prior import atlas_prior, build_prior, medoid_index, prior_positions
from medidd.prior.registration import register_affine
from medidd.privacy.memorisation import nearest_real
from tests.helpers_real import real_slices


@pytest.fixture(scope="module")
def ct_site(real_samples: Path) -> list[SliceSet]:
    files = ["lung1.nrrd", "lung2.nrrd", "chest_cta_1p5mm.nii.gz"]
    return [
        real_slices(real_samples / "ct" / f, "CT", f"p-{i:012x}", size=48)
        for i, f in enumerate(files)
    ]


def test_positions_are_bin_centres() -> None:
    assert prior_positions(1).tolist() == [0.5]
    assert torch.allclose(prior_positions(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    with pytest.raises(ValueError):
        prior_positions(0)


def test_medoid_prior_is_a_real_patient(ct_site: list[SliceSet]) -> None:
    p = build_prior("medoid", ct_site, 2, modality="CT", size=48, window=(-1000.0, 1000.0))
    real = torch.cat([s.images for s in ct_site])
    sim, _ = nearest_real(p.images, real)
    assert p.local_data and float(sim.min()) > 0.999  # near-copies: why it is not the default


def test_mean_prior_is_no_single_patient(ct_site: list[SliceSet]) -> None:
    p = build_prior(
        "mean", ct_site, 2, modality="CT", size=48, window=(-1000.0, 1000.0), registered=False
    )
    real = torch.cat([s.images for s in ct_site])
    sim, _ = nearest_real(p.images, real)
    assert p.images.shape == (2, 1, 48, 48) and p.local_data
    assert float(sim.max()) < 0.99


def test_atlas_holds_no_patient_data(ct_site: list[SliceSet]) -> None:
    p = atlas_prior(3, size=48, modality="CT", window=(-1000.0, 1000.0))
    assert not p.local_data and p.kind == "atlas"
    assert float(p.images.min()) >= 0 and float(p.images.max()) <= 1
    real = torch.cat([s.images for s in ct_site])
    sim, _ = nearest_real(p.images, real)
    assert float(sim.max()) < 0.95
    mr = atlas_prior(2, size=48, modality="MR", window=(0.0, 1.0))
    assert mr.images.shape == (2, 1, 48, 48)


def test_medoid_index_is_the_most_central(ct_site: list[SliceSet]) -> None:
    # duplicating one patient makes it (or its copy) the medoid
    site = [*ct_site, ct_site[1]]
    assert medoid_index(site) in (1, 3)


def test_registration_reduces_misalignment(ct_site: list[SliceSet]) -> None:
    fixed = ct_site[0].images[len(ct_site[0]) // 2, 0]
    moving = torch.roll(fixed, shifts=(3, -2), dims=(0, 1))
    out = register_affine(moving, fixed)
    assert float((out - fixed).abs().mean()) < 0.5 * float((moving - fixed).abs().mean())


def test_unknown_prior_kind_suggests_the_fix() -> None:
    with pytest.raises(ValueError, match="did you mean 'atlas'"):
        build_prior("atlass", [], 1, modality="CT", size=16, window=(-1000.0, 1000.0))
