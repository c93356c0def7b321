"""Privacy auditing with one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

``m`` canaries are each included in the training data by an independent fair coin. After
training, the auditor scores every canary and makes ``r`` guesses (the ``k_in`` highest scores
"included", the ``k_out`` lowest "excluded", abstaining on the rest); ``v`` of them are right.
If the training algorithm is (epsilon, delta)-DP, the number of right guesses is stochastically
dominated by Binomial(r, e^eps / (1 + e^eps)) up to a delta term (their Theorem 5.2), so a large
``v`` is evidence *against* epsilon: the largest epsilon whose p-value stays below
``1 - confidence`` is an empirical **lower bound** on the epsilon of the pipeline. It is 0 when
the guesses are no better than coin flips.

Pure maths (numpy/scipy), no model; higher score = more likely included.

Example:
    >>> round(epsilon_lower_bound(m=100, r=20, v=20, confidence=0.95), 2)
    1.82
    >>> epsilon_lower_bound(m=100, r=20, v=10, confidence=0.95)
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["OneRunResult", "epsilon_lower_bound", "one_run_audit", "p_value"]


def _check(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least ``v`` of ``r`` guesses right] for an (``epsilon``, ``delta``)-DP algorithm
    with ``m`` canaries (Steinke et al. 2023, Theorem 5.2): the binomial tail at the accuracy
    of epsilon-randomised response, plus ``2 m delta`` times the largest average of the
    binomial mass below ``v``.

    Example:
        >>> round(p_value(10, 10, 10, epsilon=0.0), 6)  # 10 right coin flips
        0.000977
        >>> p_value(10, 10, 0, epsilon=1.0)
        1.0
    """
    _check(m, r, v)
    if epsilon < 0 or not 0.0 <= delta <= 1.0:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    extra = 0.0
    if delta > 0:
        below = np.cumsum(stats.binom.pmf(v - np.arange(1, v + 1), r, q))  # P[v-i <= B < v]
        extra = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * extra)


def epsilon_lower_bound(m: int, r: int, v: int, confidence: float = 0.95,
                        delta: float = 0.0) -> float:
    """The largest epsilon that ``v`` right guesses out of ``r`` reject at ``confidence``
    (bisection on :func:`p_value`, which grows with epsilon); 0.0 when even epsilon = 0 is not
    rejected.

    Example:
        >>> epsilon_lower_bound(m=1000, r=0, v=0)
        0.0
    """
    _check(m, r, v)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    beta = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:  # every guess right with many guesses: report the bound reached
            return lo
    for _ in range(50):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


@dataclass(frozen=True)
class OneRunResult:
    """One-run audit of ``m`` canaries: the best guess count (``k_in`` + ``k_out`` = ``r``
    guesses, ``v`` right), its empirical epsilon lower bound at ``confidence`` (Bonferroni
    over the ``n_tried`` guess counts), the AUC of the canary scores (included vs excluded)
    and the true-positive rate at 1% FPR."""

    m: int
    n_included: int
    r: int
    v: int
    k_in: int
    k_out: int
    eps_lower_bound: float
    confidence: float
    delta: float
    n_tried: int
    auc: float
    tpr_at_1fpr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _guess_counts(m: int, fractions: Sequence[float]) -> list[int]:
    return sorted({max(1, round(f * m)) for f in fractions if f > 0} & set(range(1, m + 1)))


def one_run_audit(
    scores: Any,
    included: Any,
    *,
    confidence: float = 0.95,
    delta: float = 0.0,
    guess_fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
) -> OneRunResult:
    """Guess inclusion from ``scores`` (higher = included): for every guess count ``k`` in
    ``guess_fractions`` of the canaries, ``k`` guesses "in" (highest scores) and ``k`` "out"
    (lowest), and keep the count with the highest lower bound, each computed at
    ``1 - (1 - confidence) / n_tried`` (Bonferroni: choosing the best of several counts after
    seeing the scores must not inflate the bound).

    Example:
        >>> import numpy as np
        >>> inc = np.arange(200) % 2 == 0
        >>> res = one_run_audit(np.where(inc, 1.0, 0.0) + np.linspace(0, 0.1, 200), inc)
        >>> res.v == res.r, res.eps_lower_bound > 2, res.auc
        (True, True, 1.0)
    """
    from medidd.privacy.mia.scores import roc_auc, tpr_at_fpr

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    b = np.asarray(included, dtype=bool).reshape(-1)
    if s.shape != b.shape:
        raise ValueError(f"{s.size} scores for {b.size} inclusion flags")
    if not np.all(np.isfinite(s)):
        raise ValueError("canary scores contain NaN or infinite values")
    m = int(s.size)
    if m < 2 or b.all() or not b.any():
        raise ValueError("the one-run audit needs canaries both included and excluded")
    counts = _guess_counts(m // 2, [2 * f for f in guess_fractions])
    level = 1.0 - (1.0 - confidence) / max(1, len(counts))
    order = np.argsort(-s, kind="stable")
    best = (0.0, 0, 0, 0)
    for k in counts:
        v = int(b[order[:k]].sum() + (~b[order[m - k:]]).sum())
        eps = epsilon_lower_bound(m, 2 * k, v, level, delta)
        if eps > best[0] or best[1] == 0:
            best = (eps, 2 * k, v, k)
    eps, r, v, k = best
    return OneRunResult(m=m, n_included=int(b.sum()), r=r, v=v, k_in=k, k_out=k,
                        eps_lower_bound=eps, confidence=confidence, delta=delta,
                        n_tried=len(counts), auc=roc_auc(s[b], s[~b]),
                        tpr_at_1fpr=tpr_at_fpr(s[b], s[~b], 0.01))
