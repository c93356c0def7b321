"""Flower ClientApp of a hospital node: serve the audited package, score models on held-out
patients, and (FedAvg baseline) train locally. A thin translator over ``medidd.federation``.

Node settings (package, patients, override) come from the node's own config
(``flower-supernode --node-config 'package="..." patients="..."'``: ``app``) or, in the
simulation, from the node table of the run's federation config (``simulation_app``, by
partition id); never from the server's messages.

Message types (see :mod:`medidd.federation.protocol`):

- ``query.collect`` -> the shard of the package the aggregator names (shard 0 with the
  manifest; a package with one file per array is one shard), or a refusal with one line
  of reason;
- ``evaluate`` (model weights + settings) -> aggregate PSNR/SSIM on held-out real slices;
- ``train`` (weights + settings) -> locally trained weights + number of examples;
- ``query.audit`` (weights + settings) -> aggregates of a membership attack on the model with
  the node's members (its package's patients) and non-members (held-out patients), or a
  refusal saying why the node cannot audit.

Each handler parses the round's settings once (:func:`medidd.federation.protocol.parse_settings`;
bad settings are refused with every bad field named), calls one function of
:mod:`medidd.federation.site` and wraps its result in a reply.

Run it with ``flower-supernode`` (``medidd-node serve`` does that) and ``flwr run``, or in the
simulation (``medidd-aggregate train``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medidd.federation import protocol as P
from medidd.federation.node import NodeRefusal, NodeSettings, shard_to_serve
from medidd.federation.site import audit_at_site, score_at_site, train_at_site

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=P.RoundSettings)

#: Errors of a round's computation: the node replies with their type only (details in its log).
FAILURES = (ValueError, KeyError, RuntimeError, ImportError, FloatingPointError)


def _settings(context: Context, simulated: Sequence[NodeSettings] | None) -> NodeSettings:
    if simulated is not None:
        return simulated[int(context.node_config["partition-id"])]
    return NodeSettings.from_node_config(dict(context.node_config))


def _refusal(msg: Message, name: str, reason: str) -> Message:
    meta = ConfigRecord({P.NODE_NAME: name, P.REFUSED: reason})
    return Message(RecordDict({P.META: meta}), reply_to=msg)


def _round_settings(msg: Message, model: type[S]) -> S:
    record = msg.content.config_records.get(P.SETTINGS)
    return P.parse_settings(model, record.get(P.SETTINGS_JSON) if record is not None else None)


def _weights(msg: Message) -> dict[str, torch.Tensor]:
    return msg.content.array_records[P.MODEL].to_torch_state_dict()


def _metrics_reply(msg: Message, name: str, metrics: dict[str, float]) -> Message:
    return Message(RecordDict({P.METRICS: MetricRecord(dict(metrics.items())),
                               P.META: ConfigRecord({P.NODE_NAME: name})}), reply_to=msg)


def _shard_index(msg: Message) -> int:
    record = msg.content.config_records.get(P.SHARD)
    value = record.get(P.SHARD_INDEX, 0) if record is not None else 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise NodeRefusal(f"bad shard request: {P.SHARD_INDEX} must be an integer")
    return value


def collect(msg: Message, settings: NodeSettings) -> Message:
    """Reply with the requested shard of the package (shard 0 with the manifest; a package
    with one file per array is one shard), or refuse (failed audit, invalid package)."""
    try:
        served = shard_to_serve(settings, _shard_index(msg))
    except NodeRefusal as exc:
        logger.warning("refusing to serve the package: %s", exc)
        return _refusal(msg, settings.name, str(exc))
    arrays = ArrayRecord()
    for name, data in served.files.items():
        arrays[name] = Array(np.frombuffer(data, dtype=np.uint8).copy())
    meta = ConfigRecord({P.NODE_NAME: settings.name, P.SHARD_INDEX: served.index,
                         P.N_SHARDS: served.n_shards})
    if served.manifest_bytes is not None:
        meta[P.MANIFEST_KEY] = served.manifest_bytes.decode("ascii")
    logger.info("serving shard %d of %d of the package (%d bytes)", served.index + 1,
                served.n_shards, served.n_bytes)
    return Message(RecordDict({P.PACKAGE: arrays, P.META: meta}), reply_to=msg)


def evaluate(msg: Message, settings: NodeSettings) -> Message:
    """Score the received model on the node's held-out real slices; aggregates only."""
    try:
        metrics = score_at_site(settings, _weights(msg),
                                _round_settings(msg, P.EvaluateSettings),
                                run=str(msg.metadata.run_id))
    except (NodeRefusal, P.SettingsError) as exc:
        logger.warning("not evaluating: %s", exc)
        return _refusal(msg, settings.name, str(exc))
    except FAILURES as exc:
        logger.exception("evaluation failed")
        return _refusal(msg, settings.name, f"evaluation failed ({type(exc).__name__}); see "
                        "the node's log")
    return _metrics_reply(msg, settings.name, metrics)


def train(msg: Message, settings: NodeSettings) -> Message:
    """FedAvg baseline: train the received weights on the node's raw slices for the round's
    local steps; reply with the new weights and the number of examples."""
    try:
        new, n = train_at_site(settings, _weights(msg), _round_settings(msg, P.TrainSettings))
    except (NodeRefusal, P.SettingsError) as exc:
        logger.warning("not training: %s", exc)
        return _refusal(msg, settings.name, str(exc))
    except FAILURES as exc:
        logger.exception("local training failed")
        return _refusal(msg, settings.name, f"local training failed ({type(exc).__name__}); "
                        "see the node's log")
    content = RecordDict({
        P.MODEL: ArrayRecord(new),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: n}),
        P.META: ConfigRecord({P.NODE_NAME: settings.name}),
    })
    return Message(content, reply_to=msg)


def audit(msg: Message, settings: NodeSettings) -> Message:
    """Membership attack on the received model with the node's own members / non-members;
    replies the aggregates of :data:`~medidd.federation.protocol.AUDIT_METRICS` only."""
    try:
        metrics = audit_at_site(settings, _weights(msg), _round_settings(msg, P.AuditSettings))
    except (NodeRefusal, P.SettingsError) as exc:
        logger.warning("not auditing: %s", exc)
        return _refusal(msg, settings.name, str(exc))
    except FAILURES as exc:
        logger.exception("membership audit failed")
        return _refusal(msg, settings.name, f"membership audit failed ({type(exc).__name__}); "
                        "see the node's log")
    return _metrics_reply(msg, settings.name, metrics)


def _client_app(settings_of: Callable[[Context], NodeSettings]) -> ClientApp:
    client = ClientApp()

    @client.query("collect")
    def _collect(msg: Message, context: Context) -> Message:
        return collect(msg, settings_of(context))

    @client.query("audit")
    def _audit(msg: Message, context: Context) -> Message:
        return audit(msg, settings_of(context))

    @client.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, settings_of(context))

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, settings_of(context))

    return client


def build_client_app(simulated: Sequence[NodeSettings] | None = None) -> ClientApp:
    """The ClientApp; ``simulated`` maps partition ids to node settings (``None``: read them
    from each SuperNode's ``--node-config``)."""
    table = list(simulated) if simulated is not None else None
    return _client_app(lambda context: _settings(context, table))


#: The deployment ClientApp (``hospital_node.client_app:app``).
app = build_client_app()

#: The run-config key of the federation config (as JSON), shared with ``aggregator.run``.
SIMULATION_CONFIG_KEY = "config-json"


def simulated_settings(context: Context) -> NodeSettings:
    """A virtual SuperNode's settings: ``nodes[partition-id]`` of the run's federation config
    (the simulation only: one machine plays every hospital)."""
    from medidd.federation.config import FederationConfig

    cfg = FederationConfig.model_validate_json(str(context.run_config[SIMULATION_CONFIG_KEY]))
    return cfg.nodes[int(context.node_config["partition-id"])]


def build_simulation_app() -> ClientApp:
    """The ClientApp of Flower's simulation runtime (``flwr run`` on a SuperLink started with
    ``--simulation``), settings from :func:`simulated_settings`. Never used by a real
    SuperNode, whose settings come only from its own ``--node-config``."""
    return _client_app(simulated_settings)


#: The simulation ClientApp (``hospital_node.client_app:simulation_app``).
simulation_app = build_simulation_app()
