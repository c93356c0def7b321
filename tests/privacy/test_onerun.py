"""One-run auditing (Steinke et al. 2023) and RMIA against brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from medidd.privacy.mia.onerun import epsilon_lower_bound, one_run_audit, p_value
from medidd.privacy.mia.scores import calibrated_loss_scores, mse_likelihood, rmia_scores


def _binomial_tail(r: int, v: int, q: float) -> float:
    return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1))


@pytest.mark.parametrize(("r", "v", "eps"), [(10, 10, 0.0), (20, 15, 1.0), (7, 3, 2.5)])
def test_p_value_is_the_binomial_tail_of_randomised_response(r: int, v: int, eps: float) -> None:
    q = math.exp(eps) / (1 + math.exp(eps))
    assert p_value(100, r, v, eps) == pytest.approx(_binomial_tail(r, v, q), rel=1e-9)


def test_p_value_delta_term_matches_the_theorem_by_enumeration() -> None:
    m, r, v, eps, delta = 50, 12, 9, 0.5, 1e-3
    q = 1 / (1 + math.exp(-eps))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    alpha = max(sum(pmf[v - j] for j in range(1, i + 1)) / i for i in range(1, v + 1))
    expected = _binomial_tail(r, v, q) + 2 * m * delta * alpha
    assert p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9)


def test_epsilon_lower_bound_is_where_the_p_value_crosses_the_level() -> None:
    eps = epsilon_lower_bound(200, 40, 38, confidence=0.95)
    assert p_value(200, 40, 38, eps) < 0.05 <= p_value(200, 40, 38, eps + 1e-3)
    # more right guesses, or a lower confidence, can only raise the bound
    assert epsilon_lower_bound(200, 40, 40) > eps
    assert epsilon_lower_bound(200, 40, 38, confidence=0.9) > eps
    assert epsilon_lower_bound(200, 40, 20) == 0.0


def test_one_run_audit_is_valid_under_the_null() -> None:
    """Scores independent of inclusion: the bound is 0 in at least ~95% of repetitions."""
    rng = np.random.default_rng(0)
    positive = 0
    for _ in range(200):
        included = rng.random(64) < 0.5
        if included.all() or not included.any():
            continue
        positive += one_run_audit(rng.normal(size=64), included).eps_lower_bound > 0
    assert positive <= 0.05 * 200 + 3  # binomial slack around the 5% level


def test_one_run_audit_detects_a_separated_signal_and_reports_its_guesses() -> None:
    rng = np.random.default_rng(1)
    included = rng.random(128) < 0.5
    res = one_run_audit(included * 3.0 + rng.normal(size=128), included)
    assert res.auc > 0.9 and res.eps_lower_bound > 1.0
    order = np.argsort(-(included * 3.0))
    assert res.r == 2 * res.k_in and 0 < res.v <= res.r and res.n_included == included.sum()
    assert order.size == res.m


def test_one_run_audit_refuses_degenerate_input() -> None:
    with pytest.raises(ValueError, match="both included and excluded"):
        one_run_audit([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        one_run_audit([1.0, float("nan")], [True, False])


def _rmia_brute(px, rx, pz, rz, a, gamma):  # type: ignore[no-untyped-def]
    def marginal(col: np.ndarray) -> float:
        vals = [v for v in col if np.isfinite(v)]
        return 0.5 * ((1 + a) * sum(vals) / len(vals) + (1 - a))

    out = []
    for i in range(len(px)):
        lx = px[i] / marginal(rx[:, i])
        hits = [lx / (pz[j] / marginal(rz[:, j])) >= gamma for j in range(len(pz))]
        out.append(sum(hits) / len(hits))
    return np.array(out)


def test_rmia_matches_the_double_loop() -> None:
    rng = np.random.default_rng(2)
    px, pz = rng.uniform(0.1, 1, 9), rng.uniform(0.1, 1, 13)
    rx, rz = rng.uniform(0.1, 1, (3, 9)), rng.uniform(0.1, 1, (3, 13))
    rx[0, 2] = np.nan  # that reference saw candidate 2
    for a, gamma in itertools.product((0.0, 0.3, 1.0), (1.0, 2.0)):
        np.testing.assert_allclose(rmia_scores(px, rx, pz, rz, a=a, gamma=gamma),
                                   _rmia_brute(px, rx, pz, rz, a, gamma))


def test_rmia_ranks_a_memorised_candidate_first_with_one_reference() -> None:
    mse = np.array([0.001, 0.01, 0.01])  # candidate 0 fits far better than its reference says
    ref = np.array([[0.01, 0.01, 0.01]])
    pop_t, pop_r = np.linspace(0.008, 0.012, 20), np.full((1, 20), 0.01)
    tau = 0.01
    s = rmia_scores(mse_likelihood(mse, tau), mse_likelihood(ref, tau),
                    mse_likelihood(pop_t, tau), mse_likelihood(pop_r, tau))
    assert s[0] == 1.0 and s[0] > s[1]


def test_calibrated_scores_remove_the_difficulty_of_an_image() -> None:
    easy_member, hard_member = 0.001, 0.02
    losses, difficulty = [easy_member, hard_member], [0.002, 0.03]
    assert calibrated_loss_scores(losses, difficulty)[1] > calibrated_loss_scores(
        losses, difficulty)[0]
