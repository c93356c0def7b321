"""Held-out slabs and canaries (medidd.privacy.canaries) on real CT slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medidd.preprocess.slices import SliceSet
from medidd.privacy.canaries import (
    AuditDataConfig,
    canary_image_scores,
    canary_residual_scores,
    holdout_key,
    prepare_site,
    slab_roles,
)
from medidd.privacy.mia.onerun import one_run_audit

from .conftest import load_ct_slices


@pytest.fixture(scope="module")
def site(real_samples: Path) -> list[SliceSet]:
    out = []
    for i, name in enumerate(("lung1", "lung2")):
        x = load_ct_slices(real_samples / "ct" / f"{name}.nrrd", n=48, size=64)
        out.append(SliceSet(x, torch.linspace(0, 1, 48), f"p-00000000000{i}", "CT",
                            (-1000.0, 1000.0)))
    return out


def test_slabs_never_touch_members() -> None:
    cfg = AuditDataConfig()
    roles = slab_roles(64, cfg)
    held = np.flatnonzero(roles == 0)
    members = np.flatnonzero(roles == 1)
    assert held.size == 16 and members.size > 0
    # at least `gap` + 1 slices between any member and any held-out slice
    assert np.abs(members[:, None] - held[None, :]).min() >= cfg.gap + 1
    assert (slab_roles(10, cfg) == 1).all()  # too few slices: distilled whole
    assert (slab_roles(64, AuditDataConfig(holdout="none")) == 1).all()


def test_split_is_deterministic_and_plants_only_included_codes(site: list[SliceSet]) -> None:
    cfg = AuditDataConfig(canaries=16)
    a, b = prepare_site(site, cfg, seed=3), prepare_site(site, cfg, seed=3)
    assert [c.included for c in a.canaries] == [c.included for c in b.canaries]
    assert all(torch.equal(x.images, y.images) for x, y in zip(a.distill, b.distill,
                                                                strict=True))
    assert [h.patient_key for h in a.holdout] == [holdout_key(s.patient_key) for s in site]
    assert a.holdout_of == {holdout_key(s.patient_key): s.patient_key for s in site}
    index = {s.patient_key: i for i, s in enumerate(a.members)}
    for c in a.canaries:
        i = index[c.patient_key]
        changed = not torch.equal(a.distill[i].images[c.index], a.members[i].images[c.index])
        assert changed is c.included
    other = prepare_site(site, cfg, seed=4)
    assert [c.included for c in other.canaries] != [c.included for c in a.canaries]


def test_image_test_finds_the_codes_in_the_seen_slices_only(site: list[SliceSet]) -> None:
    prep = prepare_site(site, AuditDataConfig(), seed=0)
    included = [c.included for c in prep.canaries]
    seen = one_run_audit(canary_image_scores(torch.cat([s.images for s in prep.distill]),
                                             prep.canaries), included)
    clean = one_run_audit(canary_image_scores(torch.cat([s.images for s in prep.members]),
                                              prep.canaries), included)
    assert seen.auc > 0.95 and seen.eps_lower_bound >= 1.0
    assert clean.eps_lower_bound == 0.0  # the codes never reached these slices


def test_residual_test_reads_a_hallucinated_code(site: list[SliceSet]) -> None:
    prep = prepare_site(site, AuditDataConfig(canaries=24), seed=1)
    index = {s.patient_key: i for i, s in enumerate(prep.members)}
    clean = torch.stack([prep.members[index[c.patient_key]].images[c.index]
                         for c in prep.canaries])
    planted = torch.stack([prep.distill[index[c.patient_key]].images[c.index]
                           for c in prep.canaries])
    included = [c.included for c in prep.canaries]
    memorised = canary_residual_scores(planted, clean, prep.canaries)
    assert one_run_audit(memorised, included).auc == 1.0
    blurred = canary_residual_scores(clean * 0.9, clean, prep.canaries)
    assert one_run_audit(blurred, included).eps_lower_bound == 0.0


def test_bad_canary_settings_are_refused(site: list[SliceSet]) -> None:
    with pytest.raises(ValueError, match="more than the site allows"):
        prepare_site(site, AuditDataConfig(canaries=500), seed=0)
    with pytest.raises(ValueError, match="larger than the 64 px slices"):
        prepare_site(site, AuditDataConfig(canary_size=96, canary_cell=2), seed=0)
    with pytest.raises(ValueError, match=r"multiple of audit\.canary_cell"):
        AuditDataConfig(canary_size=15, canary_cell=2)
