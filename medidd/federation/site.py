"""What a node does with its own data for each round the aggregator asks for.

The ClientApp (``hospital_node/client_app.py``) parses the round's settings
(:mod:`medidd.federation.protocol`) and the received weights, and calls one function here:

- :func:`score_at_site` (``evaluate``): aggregate PSNR/SSIM of the model on the node's
  held-out real slices (:data:`~medidd.federation.protocol.EVAL_METRICS` only);
- :func:`train_at_site` (``train``, FedAvg baseline): the model trained on the node's raw
  slices for the round's local steps, and the number of slices;
- :func:`audit_at_site` (``query.audit``): a membership attack on the model with the node's
  members and non-members (:data:`~medidd.federation.protocol.AUDIT_METRICS` only).

Patients are read from the node's own settings (:class:`~medidd.federation.node.NodeSettings`:
``patients``, ``holdout``, site salt and cache) with the run's preprocessing; the package's
manifest says which of them are members (distilled). A node that cannot do a round raises
:class:`~medidd.federation.node.NodeRefusal` with one line naming the node config key to set.

Example:
    >>> package_manifest(NodeSettings(name="a")) is None  # no package configured
    True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from medidd.degrade import build_degradation, draw_lq
from medidd.degrade.draw import Degrade
from medidd.federation.audit import membership_split, node_audit
from medidd.federation.local import (
    LocalData,
    load_patients,
    score_state,
    split_local,
    stack_slices,
    train_local,
)
from medidd.federation.node import NodeRefusal, NodeSettings, node_key
from medidd.federation.protocol import (
    EVAL_METRICS,
    MANIFEST_KEY,
    AuditSettings,
    EvaluateSettings,
    TrainSettings,
)
from medidd.package import Manifest, load_files, parse_manifest
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.preprocess.slices import SliceSet

logger = logging.getLogger(__name__)

State = Mapping[str, torch.Tensor]


def package_manifest(settings: NodeSettings) -> Manifest | None:
    """The manifest of the node's package (who its members are), or None when the node has
    no package or it cannot be read (the audit gate is not applied: only patient keys are
    read, nothing is sent)."""
    if settings.package is None:
        return None
    files, _ = load_files(Path(settings.package), settings.max_package_bytes)
    if not files or MANIFEST_KEY not in files:
        return None
    manifest, _ = parse_manifest(files[MANIFEST_KEY])
    return manifest


def site_patients(settings: NodeSettings, preprocess: PreprocessConfig
                  ) -> tuple[list[SliceSet], list[SliceSet] | None]:
    """The node's ``(patients, holdout)`` as slices, read with the run's ``preprocess``
    settings (``holdout`` None when the node has no held-out folder).

    Raises:
        NodeRefusal: the node has neither patients nor held-out patients configured.
    """
    if settings.patients is None and settings.holdout is None:
        raise NodeRefusal(f"node {settings.name} has no patients configured: set "
                          f"{node_key('patients')} (or {node_key('holdout')})")
    patients = (load_patients(settings.patients, preprocess, settings)
                if settings.patients is not None else [])
    holdout = (load_patients(settings.holdout, preprocess, settings)
               if settings.holdout is not None else None)
    return patients, holdout


def local_data(settings: NodeSettings, preprocess: PreprocessConfig) -> LocalData:
    """The node's training and held-out slices; the package's patients are members, so the
    held-out ones are the others (:func:`~medidd.federation.local.split_local`)."""
    patients, holdout = site_patients(settings, preprocess)
    return split_local(patients, holdout, package_manifest(settings))


def score_at_site(settings: NodeSettings, state: State, rs: EvaluateSettings,
                  run: str | None = None) -> dict[str, float]:
    """``evaluate``: aggregate scores of the net ``rs.net`` with weights ``state`` on the
    node's held-out slices (LQ drawn with ``rs.seed``), plus ``n_patients`` and ``held_out``
    (1 when the held-out patients were not distilled); only
    :data:`~medidd.federation.protocol.EVAL_METRICS`. The node's site-local report of the
    round goes to ``<report folder>/run-<run>`` (:func:`node_report`)."""
    data = local_data(settings, rs.preprocess)
    hq = stack_slices(data.holdout, rs.max_slices)
    degrade = build_degradation(rs.degradation, data.holdout[0].window)
    metrics = score_state(rs.net, state, hq, degrade, seed=rs.seed, batch_size=rs.batch_size)
    metrics |= {"n_patients": float(len(data.holdout)), "held_out": float(data.disjoint)}
    sent = {k: float(metrics[k]) for k in EVAL_METRICS if k in metrics}
    node_report(settings, state, rs, hq, degrade, sent, run=run)
    return sent


def report_folder(settings: NodeSettings) -> Path | None:
    """Where the node writes its site-local report: ``report_dir``, else beside the package
    (``<package>.node-report``), else nowhere.

    Example:
        >>> report_folder(NodeSettings(name="a", package=Path("/site/pkg"))).as_posix()
        '/site/pkg.node-report'
    """
    if settings.report_dir is not None:
        return Path(settings.report_dir)
    if settings.package is not None:
        package = Path(settings.package)
        return package.parent / f"{package.name}.node-report"
    return None


def node_report(settings: NodeSettings, state: State, rs: EvaluateSettings, hq: torch.Tensor,
                degrade: Degrade, sent: Mapping[str, float], n_show: int = 4,
                run: str | None = None) -> Path | None:
    """Write the node's site-local report of this evaluate round (:mod:`medidd.report.node`):
    before / after crops of ``n_show`` held-out slices (the LQ the scores used), the scores
    sent and the package's audit verdict. Never sent; a report that cannot be written is a
    warning, not a failed round."""
    from medidd.report.node import write_node_report

    folder = report_folder(settings)
    if folder is None:
        return None
    if run is not None:  # one page per Flower run (a distill run and a FedAvg run both score)
        folder = folder / f"run-{run}"
    index = torch.linspace(0, hq.shape[0] - 1, min(n_show, hq.shape[0])).round().long().unique()
    lq = torch.cat([draw_lq(hq[i : i + 1], degrade, rs.seed, "heldout", start=int(i))
                    for i in index])
    model = rs.net.build()
    model.load_state_dict(dict(state))
    package = Path(settings.package) if settings.package is not None else None
    audit_html = (package.parent / f"{package.name}.audit" / "report.html"
                  if package is not None else None)
    try:
        return write_node_report(
            folder, node=settings.name, model=model, hq=hq[index], lq=lq, metrics=sent,
            manifest=package_manifest(settings), audit_html=audit_html,
            labels=[f"held-out slice {int(i)}" for i in index],
            what=(f"{'Flower run ' + run + ': ' if run else ''}net {rs.net.name}, "
                  f"degradation {rs.degradation.get('kind', '?')}"))
    except OSError as exc:
        logger.warning("node %s: report not written to %s: %s", settings.name, folder, exc)
        return None


def train_at_site(settings: NodeSettings, state: State, rs: TrainSettings
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """``train`` (FedAvg): ``rs.local_steps`` steps of ``rs.train`` from ``state`` on the
    node's raw training slices; returns (new weights, number of slices)."""
    data = local_data(settings, rs.preprocess)
    hq = stack_slices(data.train)
    degrade = build_degradation(rs.degradation, data.train[0].window)
    return train_local(rs.train, state, hq, degrade, steps=rs.local_steps, seed=rs.seed)


def audit_at_site(settings: NodeSettings, state: State, rs: AuditSettings) -> dict[str, float]:
    """``query.audit``: the loss attack on ``rs.net`` with weights ``state``, members = the
    node's patients in its package (every patient under ``fedavg`` without a package),
    non-members = its held-out patients; only
    :data:`~medidd.federation.protocol.AUDIT_METRICS`.

    Raises:
        NodeRefusal: no package, no member found, or no held-out patient.
    """
    patients, holdout = site_patients(settings, rs.preprocess)
    members, nonmembers = membership_split(settings.name, patients, holdout,
                                           package_manifest(settings), rs.strategy)
    return node_audit(rs.net, state, members, nonmembers, rs.degradation, seed=rs.seed,
                      n_boot=rs.n_boot, max_slices_per_patient=rs.max_slices_per_patient)
