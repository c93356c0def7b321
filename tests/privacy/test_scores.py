"""ROC / AUC / TPR@FPR / bootstrap / LiRA maths against brute-force references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medidd.privacy.mia.scores import (
    bootstrap_ci,
    evaluate_attack,
    fit_gaussian,
    fpr_floor,
    lira_scores,
    loss_threshold_scores,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)


def brute_force_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(tie), by counting every pair."""
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def brute_force_tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Best TPR over every candidate threshold (each score, and +inf) with FPR <= fpr."""
    best = 0.0
    for t in [*np.concatenate([pos, neg]), np.inf]:
        if np.mean(neg >= t) <= fpr + 1e-12:
            best = max(best, float(np.mean(pos >= t)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_pair_counting_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n0 = rng.integers(1, 40, size=2)
    # rounding to a coarse grid creates many ties, within and across groups
    pos = np.round(rng.normal(0.5, 1.0, n1), 0)
    neg = np.round(rng.normal(0.0, 1.0, n0), 0)
    assert roc_auc(pos, neg) == pytest.approx(brute_force_auc(pos, neg), abs=1e-12)
    fpr, tpr, _ = roc_curve(pos, neg)
    trapezoid_area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert trapezoid_area == pytest.approx(roc_auc(pos, neg), abs=1e-12)


def test_roc_curve_shape_and_extremes() -> None:
    fpr, tpr, thr = roc_curve([3.0, 2.0, 2.0], [2.0, 1.0])
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert thr[0] == np.inf and np.all(np.diff(thr) < 0)
    assert roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert roc_auc([5.0], [5.0]) == 0.5


@pytest.mark.parametrize(
    ("pos", "neg", "fpr", "expected"),
    [
        ([5.0, 4.0, 1.0], [3.0, 2.0, 0.0, -1.0], 0.25, 2 / 3),  # threshold 3 lets one negative in
        ([5.0, 4.0, 1.0], [3.0, 2.0, 0.0, -1.0], 0.0, 2 / 3),  # above every negative
        ([5.0, 4.0, 1.0], [3.0, 2.0, 0.0, -1.0], 0.3, 2 / 3),  # no interpolation to 0.3
        ([5.0, 4.0, 1.0], [3.0, 2.0, 0.0, -1.0], 0.5, 1.0),  # threshold 1: negatives 3, 2 in
        ([1.0, 1.0], [1.0, 0.0], 0.0, 0.0),  # a tie with the top negative cannot be split
        ([1.0, 1.0], [1.0, 0.0], 0.5, 1.0),
        ([0.0, 0.0], [1.0, 1.0], 0.01, 0.0),
    ],
)
def test_tpr_at_fpr_constructed(pos: list, neg: list, fpr: float, expected: float) -> None:
    assert tpr_at_fpr(pos, neg, fpr) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(4))
def test_tpr_at_fpr_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos, neg = np.round(rng.normal(1, 1, 50), 1), np.round(rng.normal(0, 1, 120), 1)
    for f in (0.0, 0.001, 0.01, 0.1, 0.5):
        assert tpr_at_fpr(pos, neg, f) == pytest.approx(brute_force_tpr_at_fpr(pos, neg, f))


def test_fpr_floor_and_rejections() -> None:
    assert fpr_floor(1000) == 0.001
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([np.nan, 1.0], [0.0])
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [0.0])
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0], [0.0], fpr=1.5)


def test_bootstrap_contains_estimate_and_narrows() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(0.5, 1, 40), rng.normal(0, 1, 40)
    large = rng.normal(0.5, 1, 4000), rng.normal(0, 1, 4000)
    lo_s, hi_s = bootstrap_ci(roc_auc, *small, n_boot=300, seed=1)
    lo_l, hi_l = bootstrap_ci(roc_auc, *large, n_boot=300, seed=1)
    assert lo_s <= roc_auc(*small) <= hi_s
    assert lo_l <= roc_auc(*large) <= hi_l
    assert (hi_l - lo_l) < 0.25 * (hi_s - lo_s)
    assert bootstrap_ci(roc_auc, *small, n_boot=50, seed=3) == bootstrap_ci(
        roc_auc, *small, n_boot=50, seed=3
    )


def test_bootstrap_interval_covers_the_true_auc() -> None:
    # the AUC of N(0.5, 1) vs N(0, 1) is Phi(0.5 / sqrt 2); a 90% interval should cover it in
    # about 90% of independent studies
    true_auc = 0.6381631950841185
    rng = np.random.default_rng(7)
    covered = 0
    for study in range(60):
        lo, hi = bootstrap_ci(
            roc_auc,
            rng.normal(0.5, 1, 80),
            rng.normal(0, 1, 80),
            n_boot=200,
            alpha=0.1,
            seed=study,
        )
        covered += lo <= true_auc <= hi
    assert 0.75 <= covered / 60 <= 1.0


def test_evaluate_attack_fields_and_json() -> None:
    rng = np.random.default_rng(0)
    r = evaluate_attack(rng.normal(3, 1, 200), rng.normal(0, 1, 300), n_boot=100)
    assert r.auc > 0.95 and r.auc_ci[0] <= r.auc <= r.auc_ci[1]
    assert r.tpr_at_1_ci[0] <= r.tpr_at_1 <= r.tpr_at_1_ci[1]
    assert r.tpr_at_0_1 <= r.tpr_at_1
    assert (r.n_members, r.n_nonmembers) == (200, 300)
    assert r.fpr_floor == pytest.approx(1 / 300)
    assert json.loads(json.dumps(r.to_dict()))["auc_ci"] == list(r.auc_ci)


# --------------------------------------------------------------------------- LiRA


def _synthetic_losses(
    n: int, refs: int, member_factor: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-example difficulty spread over two orders of magnitude; reference OUT models see each
    example's own difficulty with log-normal noise; members are fitted ``member_factor`` better.
    Returns (target losses, reference OUT (refs, n), reference IN (refs, n), is_member)."""
    rng = np.random.default_rng(seed)
    difficulty = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), n))
    member = rng.random(n) < 0.5

    def noisy(scale: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        return scale * np.exp(rng.normal(0.0, 0.2, size))

    out = noisy(difficulty, (refs, n))
    inn = noisy(difficulty * member_factor, (refs, n))
    target = noisy(np.where(member, difficulty * member_factor, difficulty), (n,))
    return target, out, inn, member


def test_lira_detects_a_memorising_model_better_than_the_loss_threshold() -> None:
    target, out, inn, member = _synthetic_losses(400, 8, member_factor=0.5, seed=0)
    offline = lira_scores(target, None, out)
    online = lira_scores(target, inn, out)
    loss = loss_threshold_scores(target)
    auc_off = roc_auc(offline[member], offline[~member])
    auc_on = roc_auc(online[member], online[~member])
    auc_loss = roc_auc(loss[member], loss[~member])
    assert auc_off > 0.95 and auc_on > 0.95
    # calibrating per example beats a global threshold when difficulty varies
    assert auc_loss < 0.8 < auc_off


def test_lira_identical_distributions_give_chance() -> None:
    target, out, inn, member = _synthetic_losses(2000, 8, member_factor=1.0, seed=1)
    for scores in (lira_scores(target, None, out), lira_scores(target, inn, out)):
        assert abs(roc_auc(scores[member], scores[~member]) - 0.5) < 0.05


def test_lira_with_masked_references_and_pooled_variance() -> None:
    target, out, inn, member = _synthetic_losses(300, 6, member_factor=0.3, seed=2)
    # each reference model trained on half the examples: IN where kept, OUT elsewhere
    keep = np.random.default_rng(3).random(out.shape) < 0.5
    both = np.where(keep, inn, out)
    masked_in = np.where(keep, both, np.nan)
    masked_out = np.where(~keep, both, np.nan)
    has_in = np.isfinite(masked_in).any(0) & np.isfinite(masked_out).any(0)
    scores = lira_scores(target[has_in], masked_in[:, has_in], masked_out[:, has_in])
    m = member[has_in]
    assert roc_auc(scores[m], scores[~m]) > 0.9
    pooled = lira_scores(target[:5], None, out[:1, :5], pooled_variance=True)
    assert pooled.shape == (5,)
    with pytest.raises(ValueError, match="pooled_variance"):
        lira_scores(target[:5], None, out[:1, :5])
    with pytest.raises(ValueError, match="examples"):
        lira_scores(target[:5], None, out[:, :4])


def test_fit_gaussian_matches_numpy_and_floors_the_std() -> None:
    x = np.random.default_rng(0).normal(2.0, 3.0, (50, 7))
    mean, std = fit_gaussian(x)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(std, x.std(0, ddof=1))
    _, std_const = fit_gaussian(np.ones((4, 3)), min_std=0.01)
    assert np.all(std_const == 0.01)
    with pytest.raises(ValueError, match="no reference"):
        fit_gaussian(np.array([[np.nan, 1.0]]))
