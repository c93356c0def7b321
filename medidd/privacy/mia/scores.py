"""Membership-inference maths: ROC, AUC, TPR at low FPR, bootstrap intervals, attack scores.

Pure numpy (and ``scipy.special`` for the Gaussian tail); no torch, no model. Every score follows
one convention: **higher score = more likely a member**. Members are the positives.

Example:
    >>> import numpy as np
    >>> members, nonmembers = np.array([0.9, 0.8, 0.4]), np.array([0.1, 0.5, 0.3])
    >>> round(roc_auc(members, nonmembers), 4)
    0.8889
    >>> tpr_at_fpr(members, nonmembers, fpr=0.0)
    0.6666666666666666
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import log_ndtr

from medidd.seeds import derive

logger = logging.getLogger(__name__)

Metric = Callable[[np.ndarray, np.ndarray], float]


def _as_scores(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: need at least one score, got none")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: {int((~np.isfinite(arr)).sum())} scores are NaN or infinite")
    return arr


def roc_curve(
    member_scores: Any, nonmember_scores: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve of the rule "member if score >= threshold".

    Args:
        member_scores: scores of the members (positives), any shape, flattened.
        nonmember_scores: scores of the non-members (negatives).

    Returns:
        ``(fpr, tpr, thresholds)``, each of length (number of distinct scores + 1), ordered by
        decreasing threshold; the first point is ``(0, 0)`` at threshold ``+inf`` and the last is
        ``(1, 1)``. Tied scores form one point (a diagonal step).

    Example:
        >>> fpr, tpr, thr = roc_curve([3.0, 2.0], [1.0, 2.0])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    pos = _as_scores(member_scores, "member_scores")
    neg = _as_scores(nonmember_scores, "nonmember_scores")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    # number of scores >= t, for every distinct t, via sorted search
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    tpr = np.concatenate([[0.0], tp / pos.size])
    fpr = np.concatenate([[0.0], fp / neg.size])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inverse]


def roc_auc(member_scores: Any, nonmember_scores: Any) -> float:
    """Area under the ROC curve = P(member score > non-member score) + 0.5 P(tie).

    Computed as the Mann-Whitney U statistic of the members divided by ``n1 * n0`` (average ranks
    for ties), which equals the trapezoidal area under :func:`roc_curve`.

    Example:
        >>> roc_auc([1.0, 1.0], [1.0, 0.0])
        0.75
    """
    pos = _as_scores(member_scores, "member_scores")
    neg = _as_scores(nonmember_scores, "nonmember_scores")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def fpr_floor(n_nonmembers: int) -> float:
    """The smallest non-zero false-positive rate measurable with ``n_nonmembers`` negatives.

    A TPR "at 0.1% FPR" from 200 non-members is really the TPR at FPR 0 (no non-member above the
    threshold): report this floor next to every low-FPR number.

    Example:
        >>> fpr_floor(200)
        0.005
    """
    if n_nonmembers < 1:
        raise ValueError("need at least one non-member to define a false-positive rate")
    return 1.0 / n_nonmembers


def tpr_at_fpr(member_scores: Any, nonmember_scores: Any, fpr: float = 0.01) -> float:
    """True-positive rate of the best threshold whose empirical FPR is at most ``fpr``.

    No interpolation between ROC points: this is the conservative step-function reading used by
    Carlini et al. (2022), so the reported TPR is achieved by an actual threshold. When ``fpr`` is
    below :func:`fpr_floor` (``1 / n_nonmembers``), the only admissible threshold lies above every
    non-member score, and the result is the fraction of members strictly above the highest
    non-member (possibly 0): a valid but coarse estimate; report the floor with it.

    Example:
        >>> tpr_at_fpr([5.0, 4.0, 1.0], [3.0, 2.0, 0.0, -1.0], fpr=0.25)
        0.6666666666666666
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    fprs, tprs, _ = roc_curve(member_scores, nonmember_scores)
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max())


def _resampler(
    values: np.ndarray, groups: Any | None
) -> Callable[[np.random.Generator], np.ndarray]:
    """Draw a bootstrap replicate of ``values``: single values, or whole groups (clusters)."""
    if groups is None:
        return lambda rng: values[rng.integers(0, values.size, values.size)]
    labels = np.asarray(groups)
    if labels.shape != values.shape:
        raise ValueError(f"{labels.size} group labels for {values.size} scores")
    clusters = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    return lambda rng: values[
        np.concatenate([clusters[i] for i in rng.integers(0, len(clusters), len(clusters))])
    ]


def bootstrap_ci(
    metric_fn: Metric,
    members: Any,
    nonmembers: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    member_groups: Any | None = None,
    nonmember_groups: Any | None = None,
) -> tuple[float, float]:
    """Stratified percentile bootstrap interval of ``metric_fn(members, nonmembers)``.

    Members and non-members are resampled with replacement separately, keeping both group sizes,
    so every replicate has the study's class balance. With ``member_groups`` /
    ``nonmember_groups`` (one label per score, e.g. the patient key of each slice) whole groups
    are resampled instead (a cluster bootstrap): slices of one patient are correlated, and
    resampling them one by one gives intervals that are too narrow.

    Args:
        metric_fn: ``f(member_scores, nonmember_scores) -> float`` (e.g. :func:`roc_auc`).
        members, nonmembers: the attack scores of each group.
        n_boot: number of bootstrap replicates.
        alpha: 1 - confidence level (0.05 gives a 95% interval).
        seed: seed of the private ``numpy.random.Generator`` (global state is never touched).

    Returns:
        ``(low, high)`` quantiles ``alpha/2`` and ``1 - alpha/2`` of the replicates.

    Example:
        >>> lo, hi = bootstrap_ci(roc_auc, [0.9, 0.8, 0.4, 0.7], [0.1, 0.5, 0.3], n_boot=200)
        >>> 0.0 <= lo <= hi <= 1.0
        True
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    pos = _as_scores(members, "members")
    neg = _as_scores(nonmembers, "nonmembers")
    draw_pos = _resampler(pos, member_groups)
    draw_neg = _resampler(neg, nonmember_groups)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        values[b] = metric_fn(draw_pos(rng), draw_neg(rng))
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


@dataclass(frozen=True)
class AttackResult:
    """Summary of one membership-inference attack (members = positives).

    ``fpr_floor`` = 1 / n_nonmembers: TPRs at FPR targets below it are TPRs at FPR 0.
    Intervals are stratified percentile bootstrap intervals at level ``1 - alpha``.
    """

    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1: float
    tpr_at_1_ci: tuple[float, float]
    tpr_at_0_1: float
    tpr_at_0_1_ci: tuple[float, float]
    n_members: int
    n_nonmembers: int
    fpr_floor: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def evaluate_attack(
    member_scores: Any,
    nonmember_scores: Any,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    member_groups: Any | None = None,
    nonmember_groups: Any | None = None,
) -> AttackResult:
    """AUC and TPR at 1% and 0.1% FPR, each with a bootstrap interval (resampling whole
    groups, e.g. patients, when ``member_groups`` / ``nonmember_groups`` label the scores).

    Example:
        >>> r = evaluate_attack([3.0, 2.5, 2.0], [0.0, 1.0, 2.2], n_boot=50)
        >>> round(r.auc, 3), r.n_members, round(r.fpr_floor, 3)
        (0.889, 3, 0.333)
    """
    pos = _as_scores(member_scores, "member_scores")
    neg = _as_scores(nonmember_scores, "nonmember_scores")

    def tpr1(a: np.ndarray, b: np.ndarray) -> float:
        return tpr_at_fpr(a, b, 0.01)

    def tpr01(a: np.ndarray, b: np.ndarray) -> float:
        return tpr_at_fpr(a, b, 0.001)

    groups = {"member_groups": member_groups, "nonmember_groups": nonmember_groups}
    return AttackResult(
        auc=roc_auc(pos, neg),
        auc_ci=bootstrap_ci(roc_auc, pos, neg, n_boot, alpha, seed, **groups),
        tpr_at_1=tpr1(pos, neg),
        tpr_at_1_ci=bootstrap_ci(tpr1, pos, neg, n_boot, alpha, derive(seed, "tpr1"), **groups),
        tpr_at_0_1=tpr01(pos, neg),
        tpr_at_0_1_ci=bootstrap_ci(tpr01, pos, neg, n_boot, alpha, derive(seed, "tpr01"), **groups),
        n_members=int(pos.size),
        n_nonmembers=int(neg.size),
        fpr_floor=fpr_floor(neg.size),
    )


# --------------------------------------------------------------------------- attack scores


def loss_threshold_scores(losses: Any) -> np.ndarray:
    """Loss-threshold attack (Yeom et al. 2018): a lower loss means "member"; score = -loss.

    Example:
        >>> loss_threshold_scores([0.1, 0.5]).tolist()
        [-0.1, -0.5]
    """
    return -np.asarray(losses, dtype=np.float64)


def lira_statistic(losses: Any, eps: float = 1e-12) -> np.ndarray:
    """The per-example statistic LiRA models as Gaussian: ``-log(per-image MSE + eps)``.

    A per-image MSE is a mean of many squared residuals (a scaled chi-square with many degrees
    of freedom), so across models trained with or without the image its logarithm is close to
    Gaussian, and it spreads the small losses of memorised images over a wide range, as the
    logit of the confidence does for classifiers in Carlini et al. (2022). Higher = fits better.

    Example:
        >>> np.round(lira_statistic([1.0, 0.01]), 3).tolist()
        [-0.0, 4.605]
    """
    arr = np.asarray(losses, dtype=np.float64)
    if np.any(arr < 0):
        raise ValueError("per-image losses must be non-negative (use MSE, not a signed error)")
    return -np.log(arr + eps)


def fit_gaussian(
    samples: Any, *, min_std: float = 1e-3, pooled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example Gaussian fit to reference statistics, NaN-aware.

    Args:
        samples: (R, n) statistics of n examples under R reference models; NaN marks "not
            available" (e.g. the example was IN for that reference when fitting OUT).
        min_std: floor on the standard deviation (in statistic units), so an example with
            near-identical reference values does not give an infinite likelihood ratio.
        pooled: one global standard deviation for all examples (Carlini et al.'s "fixed
            variance", better with few references); otherwise per-example.

    Returns:
        ``(mean (n,), std (n,))``; an example with fewer than two references gets the pooled
        standard deviation.

    Example:
        >>> m, s = fit_gaussian(np.array([[0.0, 1.0], [2.0, 1.0]]))
        >>> m.tolist(), np.round(s, 3).tolist()
        ([1.0, 1.0], [1.414, 0.001])
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"reference statistics must be (R, n), got shape {x.shape}")
    count = np.sum(np.isfinite(x), axis=0)
    if np.any(count == 0):
        missing = int((count == 0).sum())
        raise ValueError(f"{missing} examples have no reference value; train more references")
    mean = np.nanmean(x, axis=0)
    resid = x - mean
    n_finite = int(np.isfinite(x).sum())
    dof = max(n_finite - int(count.size), 1)
    pooled_std = float(np.sqrt(np.nansum(resid**2) / dof))
    if pooled or np.all(count < 2):
        if np.all(count < 2):
            # one value per example: the only spread available is across examples
            pooled_std = float(np.nanstd(x))
        std = np.full(mean.shape, pooled_std)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.sqrt(np.nansum(resid**2, axis=0) / np.maximum(count - 1, 1))
        std = np.where(count >= 2, per, pooled_std)
    return mean, np.maximum(std, min_std)


def _gauss_logpdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (x - mean) / std
    return np.asarray(-0.5 * z**2 - np.log(std) - 0.5 * np.log(2.0 * np.pi))


def lira_scores(
    target_losses: Any,
    reference_losses_in: Any | None,
    reference_losses_out: Any,
    *,
    pooled_variance: bool = False,
    min_std: float = 1e-3,
) -> np.ndarray:
    """LiRA membership scores (Carlini et al. 2022) for per-image regression losses.

    Each loss is mapped by :func:`lira_statistic` (``-log MSE``) and compared with Gaussians fitted
    per example to the same statistic under reference models trained without it (OUT) and, when
    given, with it (IN).

    - online (``reference_losses_in`` given): the log likelihood ratio
      score = log N(t; mu_in, s_in) - log N(t; mu_out, s_out);
    - offline (``reference_losses_in`` is None): one-sided test against OUT only,
      score = -log P(T >= t | OUT) = -log(1 - Phi((t - mu_out) / s_out)), which is large when the
      target fits the example better than any OUT model does.

    Args:
        target_losses: (n,) per-image MSE of the audited model on each candidate example.
        reference_losses_in: (R_in, n) per-image MSE of reference models trained WITH each example
            (NaN where a reference did not include it), or None for the offline attack.
        reference_losses_out: (R_out, n) per-image MSE of references trained WITHOUT each
            example (NaN where a reference did include it).
        pooled_variance: one variance for all examples (use with few references, < ~16).
        min_std: floor on every fitted standard deviation (statistic units).

    Returns:
        (n,) scores, higher = more likely member.

    Example:
        >>> out = np.array([[1.0, 1.0], [1.2, 0.8], [0.8, 1.2]])
        >>> s = lira_scores([0.01, 1.0], None, out)
        >>> bool(s[0] > s[1])
        True
    """
    target = lira_statistic(_as_scores(target_losses, "target_losses"))
    out = lira_statistic(np.atleast_2d(np.asarray(reference_losses_out, dtype=np.float64)))
    if out.shape[1] != target.size:
        raise ValueError(
            f"reference_losses_out has {out.shape[1]} examples, target_losses has {target.size}"
        )
    if out.shape[0] < 2 and not pooled_variance:
        raise ValueError(
            "one OUT reference cannot give a per-example variance: train more reference models "
            "or pass pooled_variance=True"
        )
    mu_out, sd_out = fit_gaussian(out, min_std=min_std, pooled=pooled_variance)
    if reference_losses_in is None:
        z = (target - mu_out) / sd_out
        return np.asarray(-log_ndtr(-z))
    inn = lira_statistic(np.atleast_2d(np.asarray(reference_losses_in, dtype=np.float64)))
    if inn.shape[1] != target.size:
        raise ValueError(
            f"reference_losses_in has {inn.shape[1]} examples, target_losses has {target.size}"
        )
    mu_in, sd_in = fit_gaussian(inn, min_std=min_std, pooled=pooled_variance)
    return _gauss_logpdf(target, mu_in, sd_in) - _gauss_logpdf(target, mu_out, sd_out)


def calibrated_loss_scores(losses: Any, difficulty: Any) -> np.ndarray:
    """Difficulty-calibrated loss attack (Watson et al. 2022; Shafran, Peleg & Hoshen 2021 for
    image translation): score = difficulty - loss, where ``difficulty`` is how hard the example
    is for a model that never saw it (e.g. the mean loss of OUT references, or of a fixed
    classical filter). An image that is simply easy to denoise no longer looks like a member.

    Example:
        >>> calibrated_loss_scores([0.1, 0.1], [0.1, 0.3]).round(3).tolist()
        [0.0, 0.2]
    """
    loss = _as_scores(losses, "losses")
    diff = _as_scores(difficulty, "difficulty")
    if loss.shape != diff.shape:
        raise ValueError(f"{loss.size} losses for {diff.size} difficulty values")
    return diff - loss


def mse_likelihood(mse: Any, scale: float) -> np.ndarray:
    """A per-image "probability" ``exp(-mse / scale)`` in (0, 1] for likelihood-ratio attacks
    on regression models (RMIA needs values on one scale for the target and its references;
    ``scale`` is fixed once per audit, e.g. the median population MSE of the target).

    Example:
        >>> mse_likelihood([0.0, 1.0], scale=1.0).round(4).tolist()
        [1.0, 0.3679]
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    arr = np.asarray(mse, dtype=np.float64)
    if np.any(arr < 0):
        raise ValueError("per-image losses must be non-negative")
    return np.asarray(np.exp(-arr / scale))


def _rmia_marginal(ref_out: np.ndarray, a: float) -> np.ndarray:
    """Pr(x) from OUT references only (Zarifzadeh et al. 2024, offline):
    ``((1 + a) * mean_OUT + (1 - a)) / 2``, NaN-aware (NaN = the reference saw x)."""
    count = np.sum(np.isfinite(ref_out), axis=0)
    if np.any(count == 0):
        raise ValueError(f"{int((count == 0).sum())} examples have no OUT reference; train "
                         "more references")
    return np.asarray(0.5 * ((1.0 + a) * np.nanmean(ref_out, axis=0) + (1.0 - a)))


def rmia_scores(
    target: Any,
    references_out: Any,
    population_target: Any,
    population_references: Any,
    *,
    a: float = 0.3,
    gamma: float = 1.0,
) -> np.ndarray:
    """RMIA (Zarifzadeh, Liu, Hui, Shokri; ICML 2024), offline, built to work with 1-4
    references: the fraction of population samples ``z`` that the candidate ``x`` dominates,
    ``score(x) = mean_z 1[ (p(x|target) / Pr(x)) / (p(z|target) / Pr(z)) >= gamma ]``, with
    ``Pr`` the references' average likelihood (OUT only, linearly corrected by ``a`` for the
    missing IN half).

    Args:
        target: (n,) likelihood of each candidate under the audited model (e.g.
            :func:`mse_likelihood`), in (0, 1].
        references_out: (R, n) the same under R reference models; NaN where a reference was
            trained with that candidate's patient.
        population_target, population_references: (z,) and (R, z), the same for population
            samples (non-members of every model).
        a: offline correction (0 = the OUT average is Pr(x)).
        gamma: likelihood-ratio threshold.

    Returns:
        (n,) scores in [0, 1], higher = more likely member.

    Example:
        >>> refs = np.array([[0.5, 0.5, 0.5, 0.5]])
        >>> rmia_scores([0.9, 0.45], refs[:, :2], [0.5, 0.4], refs[:, 2:]).tolist()
        [1.0, 0.5]
    """
    px = _as_scores(target, "target")
    pz = _as_scores(population_target, "population_target")
    rx = np.atleast_2d(np.asarray(references_out, dtype=np.float64))
    rz = np.atleast_2d(np.asarray(population_references, dtype=np.float64))
    if rx.shape != (rx.shape[0], px.size) or rz.shape != (rx.shape[0], pz.size):
        raise ValueError(f"reference shapes {rx.shape} / {rz.shape} do not match {px.size} "
                         f"candidates and {pz.size} population samples")
    if not 0.0 <= a <= 1.0 or gamma <= 0:
        raise ValueError(f"need a in [0, 1] and gamma > 0, got {a}, {gamma}")
    ratio_x = px / _rmia_marginal(rx, a)
    ratio_z = np.sort(pz / _rmia_marginal(rz, a))
    # ratio_x / ratio_z >= gamma  <=>  ratio_z <= ratio_x / gamma
    return np.searchsorted(ratio_z, ratio_x / gamma, side="right") / ratio_z.size
