"""Patient-level (cluster) bootstrap of attack metrics."""

from __future__ import annotations

import numpy as np
import pytest

from medidd.privacy.mia.scores import bootstrap_ci, evaluate_attack, roc_auc


def test_singleton_groups_equal_the_slice_bootstrap() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 30), rng.normal(0, 1, 25)
    plain = bootstrap_ci(roc_auc, pos, neg, n_boot=300, seed=4)
    grouped = bootstrap_ci(
        roc_auc,
        pos,
        neg,
        n_boot=300,
        seed=4,
        member_groups=np.arange(30),
        nonmember_groups=np.arange(25),
    )
    assert plain == grouped


def test_clustered_scores_get_honestly_wider_intervals() -> None:
    # 3 member and 3 non-member patients, 20 slices each; a per-patient offset dominates
    rng = np.random.default_rng(1)
    offsets_m, offsets_n = rng.normal(0, 1, 3), rng.normal(0, 1, 3)
    pos = np.repeat(offsets_m, 20) + rng.normal(0, 0.05, 60)
    neg = np.repeat(offsets_n, 20) + rng.normal(0, 0.05, 60)
    gm, gn = np.repeat(["a", "b", "c"], 20), np.repeat(["d", "e", "f"], 20)
    lo_s, hi_s = bootstrap_ci(roc_auc, pos, neg, n_boot=400, seed=0)
    lo_c, hi_c = bootstrap_ci(
        roc_auc, pos, neg, n_boot=400, seed=0, member_groups=gm, nonmember_groups=gn
    )
    assert hi_c - lo_c > 2 * (hi_s - lo_s)
    r = evaluate_attack(pos, neg, n_boot=200, member_groups=gm, nonmember_groups=gn)
    assert r.auc_ci[0] <= r.auc <= r.auc_ci[1] or r.auc_ci[1] - r.auc_ci[0] > 0.3


def test_group_labels_must_match_the_scores() -> None:
    with pytest.raises(ValueError, match="group labels"):
        bootstrap_ci(roc_auc, [1.0, 2.0], [0.0], n_boot=10, member_groups=["a"])
