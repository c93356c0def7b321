"""Flower ClientApp of a hospital node for the shared-prior round: a thin translator over
:mod:`medidd.prior.contribution`.

- ``train`` (the SecAgg+ stages, through Flower's ``secaggplus_mod``): at the masking stage
  the mod calls :func:`contribute`, which reads the node's patients (node settings, never the
  server's), computes its noised sums per group, checks them (shape, finite, within the
  secure aggregation's range: a node refuses, with the reason, rather than send a
  contribution that would corrupt the sum) and replies them as a legacy ``FitRes`` with
  weight 1; the mod masks them before they leave. In plain text the reply carries only the
  node's name and the groups it has no patients of.
- ``query.prior_audit``: the released prior (its files); the node checks its hash, keeps it
  under ``prior-dir`` when configured, audits it against its own real slices and replies
  :data:`~medidd.federation.protocol.PRIOR_AUDIT_METRICS` only.

Why a ClientApp of its own: ``secaggplus_mod`` handles plain ``train`` messages, which the
main ClientApp (``hospital_node/client_app.py``) answers with FedAvg (docs/prior.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from medidd.federation import protocol as P
from medidd.federation.local import load_patients
from medidd.federation.node import NodeRefusal, NodeSettings, node_key
from medidd.preprocess.slices import SliceSet
from medidd.prior.contribution import audit_at_site, site_contribution
from medidd.prior.shared import contribution_problems, parse_shared_prior, write_shared_prior

logger = logging.getLogger(__name__)


class ContributionRefused(ValueError):
    """The node will not contribute; the one-line message reaches the server."""


def _settings(context: Context, simulated: Sequence[NodeSettings] | None) -> NodeSettings:
    if simulated is not None:
        return simulated[int(context.node_config["partition-id"])]
    return NodeSettings.from_node_config(dict(context.node_config))


def _cohort(settings: NodeSettings, rs: P.PriorSettings) -> list[SliceSet]:
    if settings.patients is None:
        raise NodeRefusal(f"node {settings.name} has no patients configured: set "
                          f"{node_key('patients')}")
    return load_patients(settings.patients, rs.preprocess, settings)


def contribution_arrays(settings: NodeSettings, rs: P.PriorSettings
                        ) -> tuple[list[np.ndarray], list[str]]:
    """The node's noised sums (checked) and the groups it has no patients of."""
    c = site_contribution(_cohort(settings, rs), rs.prior, site_region=settings.region)
    for name in c.empty:
        logger.info("no %s patients at %s: contributing nothing to that group", name,
                    settings.name)
    arrays = c.arrays()
    problems = contribution_problems(arrays, rs.prior, bound=rs.clipping_range)
    if problems:
        raise ContributionRefused("contribution refused by the node: " + "; ".join(problems))
    return arrays, c.empty


def fit_reply(msg: Message, name: str, arrays: list[np.ndarray], empty: list[str]) -> Message:
    """A legacy FitRes reply with weight 1 (what ``secaggplus_mod`` masks)."""
    res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), num_examples=1,
                 metrics={"node-name": name, "empty": ",".join(empty)})
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def contribute(msg: Message, settings: NodeSettings) -> Message:
    """The masking stage's payload: raises :class:`ContributionRefused` (or
    :class:`NodeRefusal`) with the reason when the node cannot contribute."""
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    try:
        rs = P.parse_settings(P.PriorSettings, ins.config.get(P.SETTINGS_JSON))
    except P.SettingsError as exc:
        raise ContributionRefused(str(exc)) from None
    arrays, empty = contribution_arrays(settings, rs)
    return fit_reply(msg, settings.name, arrays, empty)


def audit_prior(msg: Message, settings: NodeSettings) -> Message:
    """Check, keep and audit the released prior; reply aggregates only."""
    meta = ConfigRecord({P.NODE_NAME: settings.name})
    try:
        record = msg.content.config_records.get(P.SETTINGS)
        rs = P.parse_settings(P.PriorSettings, record.get(P.SETTINGS_JSON)
                              if record is not None else None)
        files = {n: a.numpy().tobytes() for n, a in msg.content.array_records[P.PRIOR].items()}
        prior = parse_shared_prior(files, "received prior")
        if settings.prior_dir is not None:
            write_shared_prior(prior, Path(settings.prior_dir) / str(prior.sha256))
        result = audit_at_site(prior, _cohort(settings, rs), site_region=settings.region)
    except (NodeRefusal, P.SettingsError, ValueError, KeyError) as exc:
        logger.warning("not auditing the prior: %s", exc)
        meta[P.REFUSED] = str(exc).splitlines()[0][:300]
        return Message(RecordDict({P.META: meta}), reply_to=msg)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        k: float(result[k]) for k in P.PRIOR_AUDIT_METRICS if result[k] is not None}
    return Message(RecordDict({P.METRICS: MetricRecord(metrics), P.META: meta}), reply_to=msg)


def _client_app(settings_of: Callable[[Context], NodeSettings]) -> ClientApp:
    client = ClientApp()

    @client.train(mods=[secaggplus_mod])
    def _train(msg: Message, context: Context) -> Message:
        return contribute(msg, settings_of(context))

    @client.query("prior_audit")
    def _audit(msg: Message, context: Context) -> Message:
        return audit_prior(msg, settings_of(context))

    return client


def build_prior_client_app(simulated: Sequence[NodeSettings] | None = None) -> ClientApp:
    """The prior ClientApp; ``simulated`` maps partition ids to node settings (``None``: each
    SuperNode's ``--node-config``)."""
    table = list(simulated) if simulated is not None else None
    return _client_app(lambda context: _settings(context, table))


def simulated_settings(context: Context) -> NodeSettings:
    """A virtual SuperNode's settings: ``nodes[partition-id]`` of the run's config."""
    from medidd.federation.config import FederationConfig

    cfg = FederationConfig.model_validate_json(str(context.run_config["config-json"]))
    return cfg.nodes[int(context.node_config["partition-id"])]


#: The deployment ClientApp (``hospital_node.prior_app:app``).
app = build_prior_client_app()
#: The simulation ClientApp (``hospital_node.prior_app:simulation_app``).
simulation_app = _client_app(simulated_settings)
