"""Federated membership audit: each node attacks the aggregator's trained model with its own
members and non-members and returns aggregates only (no per-slice score ever leaves it).

- **members**: the node's real slices of the patients its package was distilled from (matched
  by pseudonymous key from the package manifest); with ``strategy: fedavg``, the patients it
  trained on;
- **non-members**: its held-out patients (the node's ``holdout`` folder, or its patients that
  are not in the package). A node without both refuses with one line of reason;
- the attack is :func:`medidd.privacy.membership.attack_metrics` (loss threshold, bootstrap
  AUC interval, TPR at 1% / 0.1% FPR); the aggregator keeps only :data:`AUDIT_METRICS`, checks
  their ranges and pools them (:func:`pooled_audit`).

Example:
    >>> clean, problems = check_audit_metrics({"auc": 0.52, "auc_low": 0.4, "auc_high": 0.6,
    ...     "n_members": 6.0, "n_nonmembers": 6.0, "slice_7_loss": 0.1})
    >>> sorted(clean), problems
    (['auc', 'auc_high', 'auc_low', 'n_members', 'n_nonmembers'], ['unexpected key slice_7_loss'])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from medidd.config import StrictModel
from medidd.federation.node import NodeRefusal, node_key
from medidd.federation.protocol import AUDIT_METRICS
from medidd.package import Manifest
from medidd.preprocess.slices import SliceSet

if TYPE_CHECKING:
    import torch

    from medidd.nets import NetConfig

logger = logging.getLogger(__name__)

#: Audit metrics that are probabilities / rates (must lie in [0, 1]); the others are counts.
RATES: tuple[str, ...] = ("auc", "auc_low", "auc_high", "tpr_at_1fpr", "tpr_at_0_1fpr",
                          "fpr_floor")


class AuditConfig(StrictModel):
    """``enabled``: after the ``evaluate`` round, ask every node to attack the trained model
    (``query.audit``); ``n_boot``: bootstrap replicates of the AUC interval; ``seed``: LQ draws
    and bootstrap; ``max_slices_per_patient``: evenly thinned slices per patient."""

    enabled: bool = False
    n_boot: int = Field(200, ge=10)
    seed: int = 0
    max_slices_per_patient: int | None = Field(64, ge=1)


def membership_split(name: str, patients: Sequence[SliceSet], holdout: Sequence[SliceSet] | None,
                     manifest: Manifest | None, strategy: str = "distill"
                     ) -> tuple[list[SliceSet], list[SliceSet]]:
    """A node's (members, non-members); :class:`~medidd.federation.node.NodeRefusal` says why
    the node cannot audit (no package, no member found, no held-out patient).

    Example:
        >>> import torch
        >>> from medidd.package.manifest import example_manifest
        >>> mk = lambda k: SliceSet(torch.zeros(1, 1, 8, 8), torch.zeros(1), k, "CT", (0., 1.))
        >>> m = example_manifest(patients=[{"key": "p-0123abcd", "n_images": 2, "start": 0,
        ...                                  "stop": 2}], n_images=2)
        >>> mem, non = membership_split("a", [mk("p-0123abcd"), mk("p-4567cdef")], None, m)
        >>> [s.patient_key for s in mem], [s.patient_key for s in non]
        (['p-0123abcd'], ['p-4567cdef'])
    """
    patients = list(patients)
    if strategy == "fedavg" and manifest is None:
        members, others = patients, []  # FedAvg trained on every patient of the node
    elif manifest is None:
        raise NodeRefusal(f"node {name} has no readable package: its members are unknown "
                          f"({node_key('package')})")
    else:
        keys = {p.key for p in manifest.patients}
        members = [s for s in patients if s.patient_key in keys]
        others = [s for s in patients if s.patient_key not in keys]
        if not members:
            raise NodeRefusal(f"node {name}: none of the package's {len(keys)} patients is among "
                              f"the node's patients ({node_key('patients')}); is "
                              f"{node_key('salt_file')} the salt used at distillation?")
    member_keys = {s.patient_key for s in members}
    nonmembers = [s for s in (holdout if holdout else others) if s.patient_key not in member_keys]
    if not nonmembers:
        raise NodeRefusal(f"node {name} has no held-out patients (non-members) to audit with: "
                          f"set {node_key('holdout')}, or keep some patients out of the package")
    return members, nonmembers


def node_audit(net: NetConfig, state: Mapping[str, torch.Tensor], members: Sequence[SliceSet],
               nonmembers: Sequence[SliceSet], degradation: Mapping[str, Any], *,
               seed: int = 0, n_boot: int = 200, max_slices_per_patient: int | None = 64
               ) -> dict[str, float]:
    """Loss-threshold membership attack on the net ``net`` with weights ``state``: the
    aggregates of :func:`~medidd.privacy.membership.attack_metrics` plus the patient counts,
    restricted to :data:`~medidd.federation.protocol.AUDIT_METRICS`."""
    from medidd.privacy.membership import attack_metrics

    model = net.build()
    model.load_state_dict(dict(state))
    model.eval()
    metrics = attack_metrics(model, members, nonmembers, dict(degradation), seed,
                             n_boot=n_boot, max_slices_per_patient=max_slices_per_patient)
    metrics |= {"n_member_patients": float(len({s.patient_key for s in members})),
                "n_nonmember_patients": float(len({s.patient_key for s in nonmembers}))}
    return {k: float(metrics[k]) for k in AUDIT_METRICS if k in metrics}


def check_audit_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """What the aggregator keeps of a node's audit reply: allowed keys with finite, in-range
    values (rates in [0, 1], counts >= 0), and the problems with the rest."""
    clean: dict[str, float] = {}
    problems: list[str] = []
    for key, value in metrics.items():
        if key not in AUDIT_METRICS:
            problems.append(f"unexpected key {key}")
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            problems.append(f"{key} is not a number")
            continue
        lo, hi = (0.0, 1.0) if key in RATES else (0.0, math.inf)
        if not (math.isfinite(v) and lo <= v <= hi):
            problems.append(f"{key}={v!r} out of range [{lo}, {hi}]")
            continue
        clean[key] = v
    return clean, problems


def pooled_audit(per_node: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Pool the nodes' audits: ``auc`` = mean of the node AUCs weighted by member x non-member
    pairs (the AUC over within-node pairs), ``tpr_at_1fpr`` weighted by members, ``auc_max``
    = the worst node, and the summed counts.

    Example:
        >>> pooled_audit([{"auc": 0.5, "tpr_at_1fpr": 0.0, "n_members": 2.0,
        ...                "n_nonmembers": 2.0},
        ...               {"auc": 0.75, "tpr_at_1fpr": 0.5, "n_members": 2.0,
        ...                "n_nonmembers": 6.0}])  # doctest: +NORMALIZE_WHITESPACE
        {'auc': 0.6875, 'auc_max': 0.75, 'tpr_at_1fpr': 0.25, 'n_members': 4.0,
         'n_nonmembers': 8.0, 'n_nodes': 2.0}
    """
    scored = [m for m in per_node if "auc" in m and m.get("n_members", 0) > 0
              and m.get("n_nonmembers", 0) > 0]
    if not scored:
        return {}
    pairs = [m["n_members"] * m["n_nonmembers"] for m in scored]
    out = {"auc": sum(m["auc"] * w for m, w in zip(scored, pairs, strict=True)) / sum(pairs),
           "auc_max": max(m["auc"] for m in scored)}
    with_tpr = [m for m in scored if "tpr_at_1fpr" in m]
    if with_tpr:
        out["tpr_at_1fpr"] = (sum(m["tpr_at_1fpr"] * m["n_members"] for m in with_tpr)
                              / sum(m["n_members"] for m in with_tpr))
    out |= {"n_members": sum(m["n_members"] for m in scored),
            "n_nonmembers": sum(m["n_nonmembers"] for m in scored),
            "n_nodes": float(len(scored))}
    return out
