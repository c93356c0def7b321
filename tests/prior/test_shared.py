"""The shared prior's maths and file: binning, per-patient clipping (the patient as the DP
unit), the accountant's noise scale (golden values and an independent RDP computation), the
release rule, the file's hash / shape / version checks, and a node's contribution and audit
on real patients."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medidd.preprocess.slices import SliceSet
from medidd.prior.contribution import audit_at_site, site_contribution
from medidd.prior.region import guess_region
from medidd.prior.shared import (
    ARRAYS_FILE,
    META_FILE,
    GroupSums,
    SharedPriorConfig,
    SharedPriorError,
    accumulate,
    add_noise,
    bin_means,
    contribution_problems,
    noise_multiplier,
    noise_std,
    read_shared_prior,
    release,
    sensitivity,
    write_shared_prior,
)
from tests.helpers_real import real_slices

W = (-1000.0, 1000.0)


def _cfg(**kw: object) -> SharedPriorConfig:
    base: dict[str, object] = {"groups": ["CT:chest"], "bins": 4, "release_size": 8,
                               "min_patients": 1}
    return SharedPriorConfig.model_validate(base | kw)


def _patient(seed: int, n: int = 7, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    z = torch.linspace(0, 1, n) if n >= 4 else torch.rand(n, generator=g)
    return bin_means(images, z, 4)


def test_bin_means_average_the_slices_of_each_bin() -> None:
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    means, present = bin_means(images, torch.tensor([0.0, 0.1, 0.6, 0.99]), 2)
    assert present.tolist() == [True, True]
    assert means[:, 0, 0, 0].tolist() == [0.5, 2.5]


def test_one_patient_moves_a_node_vector_by_at_most_the_sensitivity() -> None:
    """Add-one-patient neighbours, whatever the patient's slices (bright, many, few)."""
    cfg = _cfg(clip_norm=1.5, count_weight=2.0)
    others = [_patient(s) for s in range(5)]
    base = accumulate(others, cfg)
    for seed, n in ((10, 1), (11, 40), (12, 3)):
        extra = _patient(seed, n)
        big = (extra[0] * 50, extra[1])  # far beyond the clip norm
        for one in (extra, big):
            with_one = accumulate([*others, one], cfg)
            diff = np.concatenate([(with_one.sums - base.sums).ravel(),
                                   cfg.count_weight * (with_one.counts - base.counts)])
            assert np.linalg.norm(diff) <= sensitivity(cfg) + 1e-9
    assert sensitivity(cfg) == pytest.approx(math.sqrt(1.5**2 + 4 * 4))


def _rdp_epsilon(sigma: float, delta: float) -> float:
    """Independent RDP -> (epsilon, delta) of one Gaussian release without subsampling:
    RDP(alpha) = alpha / (2 sigma^2), converted as Opacus does (Balle et al. 2020), over
    Opacus' default orders."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    eps = [a / (2 * sigma**2) - (math.log(delta) + math.log(a)) / (a - 1)
           + math.log((a - 1) / a) for a in orders]
    return min(eps)


@pytest.mark.parametrize(("epsilon", "golden"), [(1.0, 4.05), (4.0, 1.16), (8.0, 0.64)])
def test_noise_multiplier_is_the_rdp_accountants(epsilon: float, golden: float) -> None:
    sigma = noise_multiplier(epsilon, 1e-5)
    assert sigma == pytest.approx(golden, abs=0.01)  # golden values (Opacus 1.6, RDP)
    assert _rdp_epsilon(sigma, 1e-5) <= epsilon * (1 + 1e-9)
    assert _rdp_epsilon(sigma * 0.99, 1e-5) > epsilon  # the smallest sigma that meets it


def test_the_noise_added_has_the_accountants_scale() -> None:
    cfg = _cfg(epsilon=4.0, clip_norm=2.0, count_weight=1.0, release_size=32)
    zeros = GroupSums.zeros(cfg.bins, cfg.release_size)
    noisy = add_noise(zeros, cfg, np.random.default_rng(1))
    want = noise_multiplier(4.0, 1e-5) * math.sqrt(2.0**2 + 1.0 * cfg.bins)
    assert noise_std(cfg) == pytest.approx(want)
    assert float(noisy.sums.std()) == pytest.approx(want, rel=0.03)  # 4096 draws
    assert float(noisy.sums.mean()) == pytest.approx(0.0, abs=4 * want / 64)
    assert noise_std(_cfg(epsilon=None)) == 0.0


def test_bins_below_min_patients_are_not_released_and_cannot_be_used() -> None:
    cfg = _cfg(epsilon=None, min_patients=3, clip_norm=1e6)
    pats = [_patient(s) for s in range(3)]
    pats[0][1][3] = pats[1][1][3] = False  # bin 3: only patient 2 has slices there
    pats[0][0][3] = pats[1][0][3] = 0.0
    total = accumulate(pats, cfg)
    prior = release({"CT:chest": total}, cfg, size=16, n_sites={"CT:chest": 1})
    g = prior.groups["CT:chest"]
    assert g.released.tolist() == [True, True, True, False]
    assert float(g.images[3].abs().max()) == 0.0 and g.patients.tolist()[3] == 1.0
    assert prior.prior_for("CT", "chest", 1).kind == "shared"  # bin 2
    with pytest.raises(SharedPriorError, match=r"bins \[3\] were not released"):
        prior.prior_for("CT", "chest", 4)
    with pytest.raises(SharedPriorError, match="no MR:head group"):
        prior.prior_for("MR", "head", 2)


def test_release_divides_the_sums_into_the_mean() -> None:
    cfg = _cfg(epsilon=None, release_size=16, clip_norm=1e6)
    pats = [_patient(s) for s in range(4)]
    prior = release({"CT:chest": accumulate(pats, cfg)}, cfg, size=16,
                    n_sites={"CT:chest": 2})
    mean = torch.stack([m for m, _ in pats]).sum(0) / torch.stack(
        [p.float() for _, p in pats]).sum(0).view(-1, 1, 1, 1)
    assert torch.allclose(prior.groups["CT:chest"].images, mean, atol=1e-5)


def _written(tmp_path: Path) -> Path:
    cfg = _cfg(epsilon=1.0, release_size=8)
    total = add_noise(accumulate([_patient(s) for s in range(5)], cfg), cfg,
                      np.random.default_rng(0))
    prior = release({"CT:chest": total}, cfg, size=16, n_sites={"CT:chest": 3})
    write_shared_prior(prior, tmp_path / "prior")
    return tmp_path / "prior"


def test_the_file_round_trips_with_its_hash_and_dp_statement(tmp_path: Path) -> None:
    path = _written(tmp_path)
    back = read_shared_prior(path)
    assert back.sha256 is not None and len(back.sha256) == 64
    assert read_shared_prior(path / META_FILE, expected_sha256=back.sha256).sha256 == back.sha256
    st = back.statement
    assert st["dp"] and st["unit"] == "patient" and st["epsilon"] == 1.0
    assert st["noise_multiplier"] == pytest.approx(noise_multiplier(1.0, 1e-5))
    meta = json.loads((path / META_FILE).read_text())
    assert meta["groups"]["CT:chest"]["n_sites"] == 3
    assert len(meta["groups"]["CT:chest"]["patients_per_bin"]) == 4


@pytest.mark.parametrize("tamper", ["arrays", "shape", "version", "expected"])
def test_a_prior_whose_hash_shape_or_version_does_not_match_is_refused(
    tmp_path: Path, tamper: str,
) -> None:
    path = _written(tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    expected = None
    if tamper == "arrays":
        data = bytearray((path / ARRAYS_FILE).read_bytes())
        data[-40] ^= 1
        (path / ARRAYS_FILE).write_bytes(bytes(data))
        match = "does not match the sha256"
    elif tamper == "shape":
        meta["size"] = 32
        match = r"images have shape \[4, 1, 16, 16\]"
    elif tamper == "version":
        meta["format_version"] = 99
        match = "format version 99"
    else:
        expected = "0" * 64
        match = "does not match the expected"
    if tamper in ("shape", "version"):
        (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(SharedPriorError, match=match):
        read_shared_prior(path, expected_sha256=expected)


def test_contributions_with_a_wrong_shape_or_nan_are_named() -> None:
    cfg = SharedPriorConfig(groups=["CT:chest", "MR:head"], bins=2, release_size=4)
    good = [np.zeros((2, 4, 4)), np.zeros(2), np.zeros((2, 4, 4)), np.zeros(2)]
    assert contribution_problems(good, cfg) == []
    bad = [np.zeros((2, 4, 5)), np.zeros(2), np.full((2, 4, 4), np.nan), np.zeros(2)]
    assert contribution_problems(bad, cfg) == [
        "CT:chest sums: shape (2, 4, 5), expected (2, 4, 4)",
        "MR:head sums: 32 non-finite values"]
    assert "2 arrays, expected 4" in contribution_problems(good[:2], cfg)[0]
    assert "beyond +-1" in contribution_problems([a + 2 for a in good], cfg, bound=1.0)[0]


@pytest.fixture(scope="module")
def site(real_samples: Path) -> list[SliceSet]:
    ct = real_samples / "ct"
    return [real_slices(ct / f, "CT", f"p-{i:012x}", size=48)
            for i, f in enumerate(["lung1.nrrd", "lung2.nrrd", "abdomen_3mm.nii.gz"])]


def test_regions_of_real_patients_are_told_apart(site: list[SliceSet], real_samples: Path
                                                  ) -> None:
    head = real_slices(real_samples / "ct" / "head_ct1.nii.gz", "CT", "p-0000000000ff", 48)
    assert [guess_region(s) for s in [*site, head]] == ["chest", "chest", "abdomen", "head"]


def test_a_site_contributes_per_region_and_says_which_groups_it_lacks(
    site: list[SliceSet],
) -> None:
    cfg = SharedPriorConfig(groups=["CT:chest", "CT:abdomen", "MR:head"], bins=2,
                            release_size=12, epsilon=None, min_patients=1)
    c = site_contribution(site, cfg)
    assert c.empty == ["MR:head"]
    assert c.sums["CT:chest"].counts.tolist() == [2.0, 2.0]  # lung1 and lung2, never mixed
    assert c.sums["CT:abdomen"].counts.tolist() == [1.0, 1.0]
    assert not np.any(c.sums["MR:head"].sums) and contribution_problems(c.arrays(), cfg) == []
    prior = release(c.sums, cfg, size=48, n_sites={"CT:chest": 1, "CT:abdomen": 1})
    audit = audit_at_site(prior, site)
    chest = audit["groups"]["CT:chest"]
    # a mean of two registered patients at 12 px is no patient's slice
    assert chest["ideal_line"] is not None and chest["max_nn_ncc"] < 0.95
    assert set(audit) == {"max_nn_ncc", "ideal_line", "below_ideal", "groups"}


def test_deformable_registration_aligns_real_patients_to_the_template_better_than_affine(
    site: list[SliceSet],
) -> None:
    from medidd.prior.contribution import registered_bin_means, template

    fixed = template("CT:chest", 48, W)
    assert fixed is not None
    errors = {}
    for how in ("none", "affine", "deformable"):
        cfg = SharedPriorConfig(groups=["CT:chest"], bins=2, registration=how)
        means, present = registered_bin_means(site[0], cfg, fixed)
        assert present.all()
        errors[how] = float(sum(1 - torch.corrcoef(torch.stack(
            [means[k, 0].flatten(), fixed.flatten()]))[0, 1] for k in range(2)))
    assert errors["deformable"] <= errors["affine"] < errors["none"]
