"""DP distillation: Opacus-noised real gradients, budget met and recorded in the manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from medidd.distill import DistillConfig
from medidd.distill.run import DistillError, distill_site
from medidd.package import read_package
from medidd.preprocess.slices import SliceSet
from medidd.privacy.dp import epsilon_spent
from tests.helpers_real import real_slices

DP = {
    "task": "denoise",
    "ipc": 1,
    "prior": {"kind": "atlas"},
    "degradation": {"kind": "ct_lowdose", "dose": 0.25, "image_domain": True},
    "matching": {
        "objective": "gm",
        "iterations": 2,
        "outer_loop": 3,
        "patch_size": 16,
        "real_batch": 4,
        "syn_patches": 4,
        "inner_steps": 1,
    },
    "spg": {"width": 8, "depth": 3},
    "preprocess": {"size": 32},
    "dp": {"enabled": True, "epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0},
}


@pytest.fixture(scope="module")
def site(real_samples: Path) -> list[SliceSet]:
    return [real_slices(real_samples / "ct/lung2.nrrd", "CT", "p-0000000000d1", size=32)]


def test_dp_package_records_a_budget_within_target(site: list[SliceSet], tmp_path: Path) -> None:
    cfg = DistillConfig.model_validate(DP)
    res = distill_site(site, cfg, tmp_path / "pkg")
    dp = read_package(res.package).manifest.dp
    assert dp is not None and dp.enabled and dp.accountant == "rdp"
    assert dp.epsilon is not None and dp.epsilon <= 4.0 * 1.01
    assert dp.noise_multiplier is not None and dp.noise_multiplier > 0.5
    # atlas prior: only the body size the atlas was fitted to is local and outside DP
    assert dp.steps == 6 and dp.not_covered == ["patient_body_size"]
    # the recorded budget is what the RDP accountant says for these parameters
    again = epsilon_spent(dp.noise_multiplier, dp.sample_rate, dp.steps, dp.delta)
    assert abs(again - dp.epsilon) < 1e-6 * max(1.0, dp.epsilon)
    hq = read_package(res.package).hq
    assert torch.isfinite(hq).all()
    unfitted = DistillConfig.model_validate({**DP, "prior": {"kind": "atlas", "fit_size": False}})
    res = distill_site(site, unfitted, tmp_path / "pkg-unfitted")
    manifest_dp = read_package(res.package).manifest.dp
    assert manifest_dp is not None and manifest_dp.not_covered == []  # nothing local at all


def test_dp_refuses_what_it_would_not_cover(site: list[SliceSet], tmp_path: Path) -> None:
    lfd = DistillConfig.model_validate(
        {**DP, "matching": {**DP["matching"], "objective": "gm+lfd"}}
    )
    with pytest.raises(DistillError, match="objective=gm"):
        distill_site(site, lfd, tmp_path / "a")
    other = DistillConfig.model_validate({**DP, "method": "dc_noise"})
    with pytest.raises(DistillError, match="implemented for method spg_gm"):
        distill_site(site, other, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dp_with_a_local_prior_warns_and_says_what_is_not_covered(
    site: list[SliceSet], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = DistillConfig.model_validate({**DP, "prior": {"kind": "mean", "registered": False}})
    with caplog.at_level(logging.WARNING):
        res = distill_site(site, cfg, tmp_path / "pkg")
    assert "does not cover" in caplog.text
    dp = read_package(res.package).manifest.dp
    assert dp is not None
    assert dp.not_covered == ["prior_from_local_patients", "patient_body_size"]
