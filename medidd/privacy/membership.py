"""Membership inference against enhancement models, orchestrated for the audit.

The maths lives in :mod:`medidd.privacy.mia` (scores, losses); this module trains the models
and lines the numbers up. Membership is per *patient* (the unit a package is distilled from):

- **target**: the policy's small net trained on the package like the aggregator would (HQ of the
  package, LQ re-drawn every epoch with the manifest's degradation);
- **members**: real slices of the package's patients at the site; **non-members**: slices of
  held-out patients. Every evaluated slice gets one LQ draw, seeded by its patient key and
  index, shared by every model that scores it;
- **loss attack** (Yeom et al.): score = -MSE of the model on the slice;
- **LiRA, offline** (Carlini et al.): per-slice calibration by reference models trained by the
  *same pipeline* without that slice's patient. Distillation is per patient (only patient i's
  slices shape its images), so a reference trained on the package minus patient i's images is a
  model of "the same pipeline without patient i". References come in complementary pairs of
  random halves of the package's patients, so each patient is OUT for exactly half of them;
  non-members are OUT for all. A shared prior computed from the members (``prior: mean``) is in
  every reference too: what it leaks is not measured by LiRA (the memorisation audit sees it);
- **positive control**: the same attacks on a model trained on the members' raw slices (the
  policy's ``control``: fixed pairs, whole images, longer), its references on complementary
  halves of the member patients' raw slices. If the attacks cannot detect it, an audit that
  passes proves nothing and is reported inconclusive.

Example:
    >>> import torch
    >>> from medidd.preprocess.slices import SliceSet
    >>> g = torch.Generator().manual_seed(0)
    >>> sets = [SliceSet(torch.rand(4, 1, 16, 16, generator=g), torch.linspace(0, 1, 4),
    ...                  f"p-{i:08x}", "CT", (-1000.0, 1000.0)) for i in range(2)]
    >>> ev = eval_set(sets, seed=0, limit=3, degrade=lambda x, s: x)
    >>> ev.hq.shape[0], ev.keys
    (6, ['p-00000000', 'p-00000000', 'p-00000000', 'p-00000001', 'p-00000001', 'p-00000001'])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medidd.degrade import DegradationSpec, build_degradation, draw_lq
from medidd.preprocess.slices import SliceSet
from medidd.privacy.canaries import Canary, canary_residual_scores
from medidd.privacy.mia.losses import per_image_losses
from medidd.privacy.mia.onerun import OneRunResult, one_run_audit
from medidd.privacy.mia.scores import (
    AttackResult,
    calibrated_loss_scores,
    evaluate_attack,
    lira_scores,
    loss_threshold_scores,
    mse_likelihood,
    rmia_scores,
)
from medidd.seeds import derive
from medidd.train import TrainConfig, evaluate_enhancer, train_enhancer

logger = logging.getLogger(__name__)

Degrade = Callable[[torch.Tensor, int], torch.Tensor]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalSet:
    """Slices an attack scores: ``hq``/``lq`` (N, 1, H, W), the patient key of each slice."""

    hq: torch.Tensor
    lq: torch.Tensor
    keys: list[str]
    #: further LQ draws of the same slices (scores average the loss over every draw)
    lq_extra: tuple[torch.Tensor, ...] = ()

    @property
    def patients(self) -> list[str]:
        return list(dict.fromkeys(self.keys))

    def subset(self, index: torch.Tensor) -> EvalSet:
        return EvalSet(self.hq[index], self.lq[index], [self.keys[int(i)] for i in index],
                       tuple(x[index] for x in self.lq_extra))

    def of(self, keys: set[str]) -> torch.Tensor:
        """Indices of the slices of ``keys``."""
        return torch.tensor([i for i, k in enumerate(self.keys) if k in keys], dtype=torch.long)


def even_indices(n: int, limit: int | None) -> torch.Tensor:
    """``limit`` evenly spaced indices of ``range(n)`` (all of them when ``n <= limit``).

    Example:
        >>> even_indices(5, 3).tolist(), even_indices(2, None).tolist()
        ([0, 2, 4], [0, 1])
    """
    if limit is None or n <= limit:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long()


def eval_set(sets: Sequence[SliceSet], *, seed: int, limit: int | None, degrade: Degrade,
             draws: int = 1) -> EvalSet:
    """Evenly thinned slices of every patient (at most ``limit`` each) with ``draws`` LQ draws
    each, drawn by :func:`~medidd.degrade.draw_lq` with ``derive(seed, patient key, slice
    index)`` (further draws tagged by their number): the same slice always gets the same LQ."""
    hq, lq, keys = [], [], []
    for s in sets:
        idx = even_indices(len(s), limit)
        for i in idx.tolist():
            x = s.images[i : i + 1].float()
            hq.append(x)
            lq.append(torch.cat([draw_lq(x, degrade, seed, s.patient_key, start=i)]
                                + [draw_lq(x, degrade, seed, "draw", d, s.patient_key, start=i)
                                   for d in range(1, draws)]))
            keys.append(s.patient_key)
    if not hq:
        raise ValueError("no slices to score")
    stacked = torch.stack(lq, dim=1)  # (draws, N, 1, H, W)
    return EvalSet(torch.cat(hq), stacked[0], keys, tuple(stacked[1:]))


def complementary_halves(keys: Sequence[str], n_models: int, seed: int) -> list[set[str]]:
    """``n_models`` training sets (even count) as complementary pairs of random halves of
    ``keys``: every key is left out of exactly half of them.

    Example:
        >>> halves = complementary_halves(["a", "b", "c"], 4, seed=0)
        >>> [sum(k in h for h in halves) for k in "abc"]
        [2, 2, 2]
    """
    if len(keys) < 2:
        raise ValueError(f"reference models need at least 2 patients to split, got {len(keys)}")
    rng = np.random.default_rng(seed)
    out: list[set[str]] = []
    for _ in range(n_models // 2):
        perm = [keys[i] for i in rng.permutation(len(keys))]
        cut = len(keys) // 2
        out += [set(perm[:cut]), set(perm[cut:])]
    return out


def train_model(hq: torch.Tensor, cfg: TrainConfig, degrade: Degrade, seed: int,
                lq: torch.Tensor | None = None) -> nn.Module:
    """``cfg`` with ``seed`` on ``hq``: fixed pairs ``lq`` when ``cfg.redraw_lq`` is off and
    ``lq`` is given, else LQ drawn by ``degrade``."""
    cfg = cfg.model_copy(update={"seed": seed})
    if lq is not None and not cfg.redraw_lq:
        return train_enhancer(hq, lq, cfg).model
    return train_enhancer(hq, None, cfg, degrade=degrade).model


def losses(model: nn.Module, ev: EvalSet) -> np.ndarray:
    """Per-slice MSE of ``model`` on ``ev`` (float64), averaged over every LQ draw: the noise
    of one draw no longer hides the model's fit to the slice."""
    per_draw = [per_image_losses(model, lq, ev.hq, batch_size=16).mse.numpy()
                for lq in (ev.lq, *ev.lq_extra)]
    return np.mean(per_draw, axis=0)


@dataclass
class AttackOutcome:
    """One attack on one model: the scores of both groups and their summary."""

    member_scores: np.ndarray
    nonmember_scores: np.ndarray
    result: AttackResult


@dataclass
class ModelAttacks:
    """Every attack run on one model (``loss``, and ``lira`` when references exist)."""

    attacks: dict[str, AttackOutcome] = field(default_factory=dict)
    n_references: int = 0
    member_mse: float = float("nan")
    nonmember_mse: float = float("nan")
    nonmember_psnr: float = float("nan")
    nonmember_psnr_lq: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"attacks": {k: v.result.to_dict() for k, v in self.attacks.items()},
                "n_references": self.n_references, "member_mse": self.member_mse,
                "nonmember_mse": self.nonmember_mse, "nonmember_psnr": self.nonmember_psnr,
                "nonmember_psnr_lq": self.nonmember_psnr_lq}


def attack_model(
    target: nn.Module,
    members: EvalSet,
    nonmembers: EvalSet,
    references: Sequence[tuple[nn.Module, set[str]]],
    *,
    n_boot: int,
    alpha: float,
    seed: int,
    holdout_of: Mapping[str, str] | None = None,
) -> ModelAttacks:
    """Loss attack on ``target`` and, with ``references`` (model, patient keys it was trained
    on), offline LiRA, RMIA (the non-members are its population) and the difficulty-calibrated
    loss attack (``loss_cal``: the OUT references' mean loss minus the target's); members are
    OUT for the references without their patient.

    ``holdout_of`` maps a non-member unit to the member patient it was taken from (held-out
    slices of a distilled patient): a reference trained on that patient saw the same body, so
    it is not OUT for them either, and both sides are calibrated by the same references.
    Without it every reference is OUT for every non-member (held-out *patients*)."""
    owner = holdout_of or {}
    t_mem, t_non = losses(target, members), losses(target, nonmembers)
    # the utility line: the one measurement path (clipped output, per-slice PSNR, mean)
    utility = evaluate_enhancer(target, nonmembers.hq, nonmembers.lq, batch_size=32)
    out = ModelAttacks(member_mse=float(t_mem.mean()), nonmember_mse=float(t_non.mean()),
                       nonmember_psnr=utility.psnr, nonmember_psnr_lq=utility.psnr_lq)

    def summarise(pos: np.ndarray, neg: np.ndarray) -> AttackOutcome:
        # patient-level (cluster) bootstrap: slices of one patient are not independent
        return AttackOutcome(pos, neg, evaluate_attack(
            pos, neg, n_boot=n_boot, alpha=alpha, seed=seed,
            member_groups=list(members.keys), nonmember_groups=list(nonmembers.keys)))

    out.attacks["loss"] = summarise(loss_threshold_scores(t_mem), loss_threshold_scores(t_non))
    if references:
        ref_out = []
        for model, trained_on in references:
            mem = losses(model, members)
            inside = np.array([k in trained_on for k in members.keys])
            mem[inside] = np.nan  # only OUT references calibrate a member
            non = losses(model, nonmembers)
            non[np.array([owner.get(k) in trained_on for k in nonmembers.keys])] = np.nan
            ref_out.append(np.concatenate([mem, non]))
        refs = np.stack(ref_out)
        scores = lira_scores(np.concatenate([t_mem, t_non]), None, refs,
                             pooled_variance=len(references) // 2 < 8)
        n = len(t_mem)
        out.attacks["lira"] = summarise(scores[:n], scores[n:])
        # difficulty calibration: how well a model that never saw the slice does on it
        difficulty = np.nanmean(refs, axis=0)
        cal = calibrated_loss_scores(np.concatenate([t_mem, t_non]), difficulty)
        out.attacks["loss_cal"] = summarise(cal[:n], cal[n:])
        # RMIA against the non-members as population (one likelihood scale: the target's
        # median non-member MSE)
        tau = float(np.median(t_non)) or 1e-12
        lik_t = mse_likelihood(np.concatenate([t_mem, t_non]), tau)
        lik_r = np.where(np.isfinite(refs), mse_likelihood(np.nan_to_num(refs), tau), np.nan)
        rm = rmia_scores(lik_t, lik_r, lik_t[n:], lik_r[:, n:])
        out.attacks["rmia"] = summarise(rm[:n], rm[n:])
        out.n_references = len(references)
    return out


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


@dataclass(frozen=True)
class CanaryInputs:
    """The site's canaries for the model-level one-run test: the canaries, their clean slices
    (m, 1, H, W) and the slices as the distiller saw them (code planted where included)."""

    canaries: Sequence[Canary]
    clean: torch.Tensor
    planted: torch.Tensor

    @property
    def included(self) -> np.ndarray:
        return np.array([c.included for c in self.canaries], dtype=bool)


def canary_model_test(model: nn.Module, inputs: CanaryInputs, degrade: Degrade, seed: int,
                      confidence: float) -> OneRunResult:
    """One-run test of ``model``: does its output on the LQ of each *clean* canary slice carry
    the slice's code (it learnt the code from the slices it was trained on)?"""
    lq = draw_lq(inputs.clean, degrade, seed, "canary-test")
    with torch.no_grad():
        model.eval()
        out = torch.cat([model(lq[a : a + 16]) for a in range(0, lq.shape[0], 16)])
    scores = canary_residual_scores(out, inputs.clean, inputs.canaries)
    return one_run_audit(scores, inputs.included, confidence=confidence)


@dataclass
class MembershipResult:
    """What the membership-inference part of the audit found (``status`` run / not_run);
    ``canary_target`` / ``canary_control``: the model-level one-run canary tests."""

    status: str
    reason: str | None = None
    target: ModelAttacks | None = None
    control: ModelAttacks | None = None
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    canary_target: OneRunResult | None = None
    canary_control: OneRunResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "counts": self.counts,
                "notes": self.notes,
                "target": self.target.to_dict() if self.target else None,
                "control": self.control.to_dict() if self.control else None,
                "canary_target": self.canary_target.to_dict() if self.canary_target else None,
                "canary_control": (self.canary_control.to_dict() if self.canary_control
                                   else None)}


def audit_membership(
    package_hq: torch.Tensor,
    package_patients: Sequence[tuple[str, int, int]],
    members: Sequence[SliceSet],
    nonmembers: Sequence[SliceSet],
    degrade: Degrade,
    policy: Any,
    progress: Progress | None = None,
    holdout_of: Mapping[str, str] | None = None,
    canaries: CanaryInputs | None = None,
) -> MembershipResult:
    """Target, references and positive control; see the module docstring.

    Args:
        package_hq: (N, 1, H, W) HQ images of the package.
        package_patients: ``(key, start, stop)`` of every package patient.
        members: the site's real slices of package patients.
        nonmembers: real slices of held-out patients.
        degrade: the package's degradation (``build_degradation(spec, window, fast=True)``).
        policy: an :class:`~medidd.privacy.policy.AuditPolicy`.
        progress: ``(stage, done, total)`` after every trained model.
        holdout_of: non-member key -> the member patient it was taken from, for held-out
            slices of distilled patients (see :func:`attack_model`).
        canaries: the site's canaries: the package model and the control (trained on the
            canary slices as the distiller saw them, besides its member slices) get the
            one-run canary test (:func:`canary_model_test`).
    """
    if not nonmembers:
        return MembershipResult("not_run", "no held-out patients: give a held-out patients "
                                "folder, or keep some of the site's patients out of the package")
    seed = policy.seed
    draws = policy.lq_draws
    mem = eval_set(members, seed=seed, limit=policy.max_eval_slices_per_patient, degrade=degrade,
                   draws=draws)
    non = eval_set(nonmembers, seed=seed, limit=policy.max_eval_slices_per_patient,
                   degrade=degrade, draws=draws)
    result = MembershipResult("run")
    n_refs = policy.n_reference_models
    pkg_keys = [k for k, _, _ in package_patients]
    lira_target = n_refs > 0 and len(pkg_keys) >= 2
    lira_control = n_refs > 0 and len(mem.patients) >= 2
    if n_refs > 0 and not lira_target:
        result.notes.append("LiRA not run on the package model: it needs at least 2 patients in "
                            "the package to train references without each one")
    if n_refs > 0 and not lira_control:
        result.notes.append("LiRA not run on the control: it needs at least 2 member patients")
    total = 2 + n_refs * (int(lira_target) + int(lira_control))
    done = 0

    # target: the package, as the aggregator trains on it
    def package_images(keys: set[str]) -> torch.Tensor:
        return torch.cat([package_hq[a:b] for k, a, b in package_patients if k in keys])

    target = train_model(package_hq, policy.target, degrade, derive(seed, 1))
    done += 1
    _report(progress, "package model", done, total)
    refs: list[tuple[nn.Module, set[str]]] = []
    if lira_target:
        for r, keys in enumerate(complementary_halves(pkg_keys, n_refs, derive(seed, 2))):
            refs.append((train_model(package_images(keys), policy.target, degrade,
                                     derive(seed, 3, r)), keys))
            done += 1
            _report(progress, "package references", done, total)
    result.target = attack_model(target, mem, non, refs, n_boot=policy.n_boot,
                                 alpha=policy.alpha, seed=seed, holdout_of=holdout_of)
    if canaries is not None:
        result.canary_target = canary_model_test(target, canaries, degrade, seed,
                                                 policy.canary_confidence)

    # positive control: the members' raw slices
    idx = torch.cat([mem.of({k})[even_indices(len(mem.of({k})), policy.control_slices_per_patient)]
                     for k in mem.patients])
    ctl = mem.subset(idx)

    def control_model(keys: set[str], s: int, extra: torch.Tensor | None = None) -> nn.Module:
        part = ctl.subset(ctl.of(keys))
        hq, lq = part.hq, part.lq
        if extra is not None:  # the canary slices as the distiller saw them, fixed pairs too
            hq = torch.cat([hq, extra])
            lq = torch.cat([lq, draw_lq(extra, degrade, seed, "canary-train")])
        return train_model(hq, policy.control, degrade, s, lq=lq)

    control = control_model(set(ctl.patients), derive(seed, 4),
                            canaries.planted if canaries is not None else None)
    if canaries is not None:
        result.canary_control = canary_model_test(control, canaries, degrade, seed,
                                                  policy.canary_confidence)
    done += 1
    _report(progress, "control model", done, total)
    crefs: list[tuple[nn.Module, set[str]]] = []
    if lira_control:
        halves = complementary_halves(ctl.patients, n_refs, derive(seed, 5))
        for r, keys in enumerate(halves):
            crefs.append((control_model(keys, derive(seed, 6, r)), keys))
            done += 1
            _report(progress, "control references", done, total)
    result.control = attack_model(control, ctl, non, crefs, n_boot=policy.n_boot,
                                  alpha=policy.alpha, seed=seed, holdout_of=holdout_of)
    result.counts = {"member_patients": len(mem.patients), "member_slices": len(mem.keys),
                     "nonmember_patients": len(non.patients), "nonmember_slices": len(non.keys),
                     "control_slices": len(ctl.keys)}
    return result


def attack_metrics(
    model: nn.Module,
    members: Sequence[SliceSet],
    nonmembers: Sequence[SliceSet],
    degradation: DegradationSpec | Mapping[str, Any],
    seed: int = 0,
    *,
    window: tuple[float, float] | None = None,
    n_boot: int = 200,
    max_slices_per_patient: int | None = 64,
    fast_degradation: bool = True,
) -> dict[str, float]:
    """Loss-threshold attack on ``model`` with a node's own members and non-members; only
    aggregates come back (what a node may return to the aggregator in a federated audit).

    Args:
        model: the enhancement net to attack (e.g. the aggregator's model).
        members: real slices of the patients whose packages trained the model.
        nonmembers: real slices of held-out patients.
        degradation: the run's degradation spec (a manifest's ``degradation``).
        seed: seeds the LQ draws and the bootstrap.
        window: native intensity window (CT HU); default: the first member's.
        n_boot: bootstrap replicates of the AUC interval.
        max_slices_per_patient: evenly thinned slices per patient.
        fast_degradation: image-domain CT low dose (``build_degradation(..., fast=True)``).

    Returns:
        ``{"auc", "auc_low", "auc_high", "tpr_at_1fpr", "tpr_at_0_1fpr", "fpr_floor",
        "n_members", "n_nonmembers"}`` (floats; no per-slice value).

    Example:
        >>> import torch
        >>> from medidd.preprocess.slices import SliceSet
        >>> g = torch.Generator().manual_seed(0)
        >>> mk = lambda k: SliceSet(torch.rand(6, 1, 16, 16, generator=g), torch.zeros(6), k,
        ...                         "CT", (-1000.0, 1000.0))
        >>> m = attack_metrics(torch.nn.Identity(), [mk("p-0000000a")], [mk("p-0000000b")],
        ...                    {"kind": "gaussian", "noise_sigma": 0.05}, n_boot=20)
        >>> sorted(m)[:3], m["n_members"]
        (['auc', 'auc_high', 'auc_low'], 6.0)
    """
    if not members or not nonmembers:
        raise ValueError("attack_metrics needs at least one member and one non-member patient")
    degrade = build_degradation(degradation, window or members[0].window,
                                fast=fast_degradation)
    mem = eval_set(members, seed=seed, limit=max_slices_per_patient, degrade=degrade)
    non = eval_set(nonmembers, seed=seed, limit=max_slices_per_patient, degrade=degrade)
    res = attack_model(model, mem, non, [], n_boot=n_boot, alpha=0.05, seed=seed)
    r = res.attacks["loss"].result
    return {"auc": r.auc, "auc_low": r.auc_ci[0], "auc_high": r.auc_ci[1],
            "tpr_at_1fpr": r.tpr_at_1, "tpr_at_0_1fpr": r.tpr_at_0_1, "fpr_floor": r.fpr_floor,
            "n_members": float(r.n_members), "n_nonmembers": float(r.n_nonmembers)}
