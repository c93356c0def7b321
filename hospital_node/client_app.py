"""Flower ClientApp of a hospital node: serve the audited package, score models on held-out
patients, and (FedAvg baseline) train locally. A thin translator over ``medidd.federation``.

Node settings (package, patients, override) come from the node's own config
(``flower-supernode --node-config 'package="..." patients="..."'``) or, in the simulation, from
the node table the simulation was started with; never from the server's messages.

Message types (see :mod:`medidd.federation.protocol`):

- ``query.collect`` -> the package files + manifest, or a refusal with one line of reason;
- ``evaluate`` (model weights + settings) -> aggregate PSNR/SSIM on held-out real slices;
- ``train`` (weights + settings) -> locally trained weights + number of examples;
- ``query.audit`` (weights + settings) -> aggregates of a membership attack on the model with
  the node's members (its package's patients) and non-members (held-out patients), or a
  refusal saying why the node cannot audit.

Run it with ``flower-supernode`` (``medidd-node serve`` does that) and ``flwr run``, or in the
simulation (``medidd-aggregate train``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medidd.federation import protocol as P
from medidd.federation.audit import membership_split, node_audit
from medidd.federation.local import (
    degradation_fn,
    load_patients,
    score_state,
    split_local,
    stack_slices,
    train_local,
)
from medidd.federation.node import NodeRefusal, NodeSettings, package_to_serve
from medidd.nets import NetConfig
from medidd.package import Manifest
from medidd.package._source import load_files
from medidd.package.validate import parse_manifest
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.train import TrainConfig

logger = logging.getLogger(__name__)


def _settings(context: Context, simulated: Sequence[NodeSettings] | None) -> NodeSettings:
    if simulated is not None:
        return simulated[int(context.node_config["partition-id"])]
    return NodeSettings.from_node_config(dict(context.node_config))


def _refusal(msg: Message, name: str, reason: str) -> Message:
    meta = ConfigRecord({P.NODE_NAME: name, P.REFUSED: reason})
    return Message(RecordDict({P.META: meta}), reply_to=msg)


def _round_settings(msg: Message) -> dict[str, Any]:
    return dict(json.loads(str(msg.content[P.SETTINGS][P.SETTINGS_JSON])))


def _package_manifest(settings: NodeSettings) -> Manifest | None:
    if settings.package is None:
        return None
    files, _ = load_files(Path(settings.package), settings.max_package_bytes)
    if not files or P.MANIFEST_KEY not in files:
        return None
    manifest, _ = parse_manifest(files[P.MANIFEST_KEY])
    return manifest


def _patients(settings: NodeSettings, preprocess: PreprocessConfig) -> tuple[Any, Any]:
    if settings.patients is None and settings.holdout is None:
        raise NodeRefusal(f"node {settings.name} has no patients configured (node config keys "
                          "'patients' / 'holdout')")
    patients = load_patients(settings.patients, preprocess, settings) if settings.patients \
        else []
    holdout = load_patients(settings.holdout, preprocess, settings) if settings.holdout \
        else None
    return patients, holdout


def _local_data(settings: NodeSettings, preprocess: PreprocessConfig) -> Any:
    # the package's patients are members: held-out = the others
    manifest = _package_manifest(settings)
    patients, holdout = _patients(settings, preprocess)
    return split_local(patients, holdout, manifest)


def collect(msg: Message, settings: NodeSettings) -> Message:
    """Reply with the package files and manifest, or refuse (failed audit, invalid package)."""
    try:
        served = package_to_serve(settings)
    except NodeRefusal as exc:
        logger.warning("refusing to serve the package: %s", exc)
        return _refusal(msg, settings.name, str(exc))
    arrays = ArrayRecord()
    for name, data in served.files.items():
        if name != P.MANIFEST_KEY:
            arrays[name] = Array(np.frombuffer(data, dtype=np.uint8).copy())
    meta = ConfigRecord({P.NODE_NAME: settings.name,
                         P.MANIFEST_KEY: served.files[P.MANIFEST_KEY].decode("ascii")})
    logger.info("serving a package of %d images (%d bytes)", served.manifest.n_images,
                served.n_bytes)
    return Message(RecordDict({P.PACKAGE: arrays, P.META: meta}), reply_to=msg)


def evaluate(msg: Message, settings: NodeSettings) -> Message:
    """Score the received model on the node's held-out real slices; aggregates only."""
    try:
        rs = _round_settings(msg)
        preprocess = PreprocessConfig.model_validate(rs["preprocess"])
        data = _local_data(settings, preprocess)
        hq = stack_slices(data.holdout, rs.get("max_slices"))
        degrade = degradation_fn(rs["degradation"], data.holdout[0].window)
        state = msg.content.array_records[P.MODEL].to_torch_state_dict()
        metrics = score_state(NetConfig.model_validate(rs["net"]), state, hq, degrade,
                              seed=int(rs["seed"]), batch_size=int(rs["batch_size"]))
    except NodeRefusal as exc:
        return _refusal(msg, settings.name, str(exc))
    except (ValueError, KeyError, RuntimeError, ImportError) as exc:
        logger.exception("evaluation failed")
        return _refusal(msg, settings.name, f"evaluation failed ({type(exc).__name__}); see "
                        "the node's log")
    metrics |= {"n_patients": float(len(data.holdout)), "held_out": float(data.disjoint)}
    record = MetricRecord({k: float(metrics[k]) for k in P.EVAL_METRICS if k in metrics})
    meta = ConfigRecord({P.NODE_NAME: settings.name})
    return Message(RecordDict({P.METRICS: record, P.META: meta}), reply_to=msg)


def train(msg: Message, settings: NodeSettings) -> Message:
    """FedAvg baseline: train the received weights on the node's raw slices for the round's
    local steps; reply with the new weights and the number of examples."""
    try:
        rs = _round_settings(msg)
        preprocess = PreprocessConfig.model_validate(rs["preprocess"])
        data = _local_data(settings, preprocess)
        hq = stack_slices(data.train)
        degrade = degradation_fn(rs["degradation"], data.train[0].window)
        cfg = TrainConfig.model_validate(rs["train"])
        state = msg.content.array_records[P.MODEL].to_torch_state_dict()
        new, n = train_local(cfg, state, hq, degrade, steps=int(rs["local_steps"]),
                             seed=int(rs["seed"]))
    except NodeRefusal as exc:
        return _refusal(msg, settings.name, str(exc))
    except (ValueError, KeyError, RuntimeError, ImportError, FloatingPointError) as exc:
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
        rs = _round_settings(msg)
        preprocess = PreprocessConfig.model_validate(rs["preprocess"])
        patients, holdout = _patients(settings, preprocess)
        members, nonmembers = membership_split(settings.name, patients, holdout,
                                               _package_manifest(settings), rs["strategy"])
        state = msg.content.array_records[P.MODEL].to_torch_state_dict()
        metrics = node_audit(NetConfig.model_validate(rs["net"]), state, members, nonmembers,
                             rs["degradation"], seed=int(rs["seed"]), n_boot=int(rs["n_boot"]),
                             max_slices_per_patient=rs.get("max_slices_per_patient"))
    except NodeRefusal as exc:
        logger.warning("not auditing: %s", exc)
        return _refusal(msg, settings.name, str(exc))
    except (ValueError, KeyError, RuntimeError, ImportError) as exc:
        logger.exception("membership audit failed")
        return _refusal(msg, settings.name, f"membership audit failed ({type(exc).__name__}); "
                        "see the node's log")
    record = MetricRecord({k: float(metrics[k]) for k in P.AUDIT_METRICS if k in metrics})
    meta = ConfigRecord({P.NODE_NAME: settings.name})
    return Message(RecordDict({P.METRICS: record, P.META: meta}), reply_to=msg)


def build_client_app(simulated: Sequence[NodeSettings] | None = None) -> ClientApp:
    """The ClientApp; ``simulated`` maps the simulation's partition ids to node settings
    (``None``: read them from each SuperNode's ``--node-config``)."""
    client = ClientApp()
    table = list(simulated) if simulated is not None else None

    @client.query("collect")
    def _collect(msg: Message, context: Context) -> Message:
        return collect(msg, _settings(context, table))

    @client.query("audit")
    def _audit(msg: Message, context: Context) -> Message:
        return audit(msg, _settings(context, table))

    @client.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, _settings(context, table))

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, _settings(context, table))

    return client


#: The deployment ClientApp (``hospital_node.client_app:app``).
app = build_client_app()
