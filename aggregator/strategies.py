"""The two ways the aggregator gets a model: ``distill`` (collect packages, validate, train on
the union) and ``fedavg`` (raw-data FedAvg baseline), then one federated ``evaluate`` round.

Each function drives Flower messages through :mod:`aggregator.wire` and leaves every decision
and computation to ``medidd.federation``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from aggregator.collect import collect_packages, spool_dir
from aggregator.collect import package_files as package_files  # where tests read replies
from aggregator.wire import exchange, refusal
from medidd.config import config_key
from medidd.federation import protocol as P
from medidd.federation.audit import check_audit_metrics
from medidd.federation.config import FederationConfig
from medidd.federation.fedavg import fedavg, state_problems
from medidd.federation.policy import PackageVerdict
from medidd.federation.report import RunLedger, pooled_metrics
from medidd.federation.union import reconcile_degradation, train_on_union
from medidd.seeds import derive

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


class FederationError(RuntimeError):
    """The run cannot go on (no package accepted, too few nodes); the report says why."""


def _settings_record(settings: P.RoundSettings) -> ConfigRecord:
    """The round's settings as they cross the wire: their JSON in one ConfigRecord."""
    return ConfigRecord({P.SETTINGS_JSON: settings.model_dump_json()})


def _received_dir(cfg: FederationConfig, out: Path) -> Path | None:
    return out / "received" if cfg.record_received else None


def collect_and_train(grid: Grid, nodes: list[int], cfg: FederationConfig, ledger: RunLedger,
                      out: Path) -> tuple[State, dict[str, Any]]:
    """``query.collect`` (streamed shard by shard into the spool, each shard validated:
    :mod:`aggregator.collect`) -> train on the union, read from disk -> the spool removed.
    Returns the trained weights and the degradation spec used."""
    try:
        return _collect_and_train(grid, nodes, cfg, ledger, out)
    finally:
        shutil.rmtree(spool_dir(cfg, out), ignore_errors=True)


def _collect_and_train(grid: Grid, nodes: list[int], cfg: FederationConfig, ledger: RunLedger,
                       out: Path) -> tuple[State, dict[str, Any]]:
    verdicts = collect_packages(grid, nodes, cfg, ledger, out)
    spec = reconcile_degradation(list(verdicts.values()), cfg.degradation)
    for node_id, v in verdicts.items():
        node = ledger.node(node_id)
        node.package_bytes = v.n_bytes
        node.override = v.override
        if v.manifest is not None:
            node.package_audit = v.manifest.audit.status if v.manifest.audit else "not_run"
        if v.manifest is not None:
            node.n_images = v.manifest.n_images
        ledger.set_status(node_id, "used" if v.accepted else "rejected", v.reasons)
        if v.accepted:
            pairs = _first_pairs(v)
            if pairs is not None:
                ledger.add_gallery(node.name or str(node_id), *pairs)
    ledger.rounds = 1
    if spec is None or not any(v.accepted for v in verdicts.values()):
        raise FederationError("no package was accepted; nothing to train on")
    t0 = time.perf_counter()
    union = train_on_union(list(verdicts.values()), cfg.train, spec)
    ledger.train_s = time.perf_counter() - t0
    ledger.set_losses(union.result.losses)
    ledger.n_train_images = union.n_images
    ledger.lq_source = union.lq_source
    state = {k: v.detach().cpu() for k, v in union.result.model.state_dict().items()}
    # what the training images were (modality, window, size), for the model card; the server
    # app takes it out of the ledger before the report is written
    ledger.extra["manifest"] = next(v.manifest for v in verdicts.values()
                                    if v.accepted and v.manifest is not None)
    return state, spec


def _first_pairs(v: PackageVerdict, keep: int = 3) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``keep`` (HQ, LQ) pairs of an accepted package, in memory or spooled."""
    if v.hq is not None and v.lq is not None:
        return torch.from_numpy(v.hq[:keep]), torch.from_numpy(v.lq[:keep])
    if v.spooled is not None:
        from medidd.federation.spool import DiskImages

        hq, lq = DiskImages(v.spooled.hq), DiskImages(v.spooled.lq)
        idx = list(range(min(keep, len(hq))))
        return hq.read(idx), lq.read(idx)
    return None


def _same(content: RecordDict) -> Callable[[int], RecordDict]:
    """The same content for every node."""
    return lambda _: content


def _initial_state(cfg: FederationConfig) -> State:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = cfg.train.net.build()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def fedavg_rounds(grid: Grid, nodes: list[int], cfg: FederationConfig, ledger: RunLedger,
                  out: Path) -> tuple[State, dict[str, Any]]:
    """FedAvg on the nodes' raw slices for ``cfg.fedavg.rounds`` rounds; a node that misses a
    round is dropped from the later ones (and reported missing)."""
    if cfg.degradation is None:
        raise FederationError("strategy fedavg needs the run's degradation spec "
                              f"({config_key('degradation')}, e.g. {{kind: gaussian, "
                              "noise_sigma: 0.05})")
    state = _initial_state(cfg)
    active = list(nodes)
    t0 = time.perf_counter()
    for rnd in range(1, cfg.fedavg.rounds + 1):
        settings = _settings_record(P.TrainSettings(
            train=cfg.train, degradation=cfg.degradation, preprocess=cfg.preprocess,
            local_steps=cfg.fedavg.local_steps, seed=derive(cfg.train.seed, "fedavg", rnd)))
        content = RecordDict({P.MODEL: ArrayRecord(state), P.SETTINGS: settings})
        replies = exchange(
            grid, ledger, active, P.TRAIN, _same(content),
            timeout_s=cfg.timeouts.train_s, round_name=f"train-{rnd}",
            record_to=_received_dir(cfg, out))
        states, weights = [], []
        for node_id, reply in replies.items():
            reason = refusal(reply)
            if reason is not None:
                ledger.set_status(node_id, "refused", [reason])
                continue
            new = reply.content.array_records[P.MODEL].to_torch_state_dict()
            problems = state_problems(new, state)
            n = float(reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES])  # type: ignore[arg-type]
            if problems or n <= 0:
                ledger.set_status(node_id, "rejected", problems or ["num-examples <= 0"])
                continue
            ledger.set_status(node_id, "trained")
            states.append(new)
            weights.append(n)
        active = [n for n in active if n in replies and ledger.node(n).status == "trained"]
        if not states:
            raise FederationError(f"FedAvg round {rnd}: no node returned usable weights")
        state = fedavg(states, weights)
        ledger.rounds = rnd
        logger.info("FedAvg round %d/%d: averaged %d nodes", rnd, cfg.fedavg.rounds, len(states))
        every = cfg.fedavg.evaluate_every
        if every and rnd % every == 0 and rnd < cfg.fedavg.rounds:  # the last: evaluate_round
            scores = score_nodes(grid, active, cfg, ledger, state, cfg.degradation, out,
                                 f"evaluate-{rnd}")
            ledger.add_round_metrics({"round": float(rnd),
                                      **pooled_metrics(list(scores.values()))})
    ledger.train_s = time.perf_counter() - t0
    return state, cfg.degradation


def score_nodes(grid: Grid, nodes: list[int], cfg: FederationConfig, ledger: RunLedger,
                state: State, spec: dict[str, Any], out: Path, round_name: str
                ) -> dict[int, dict[str, float]]:
    """One ``evaluate`` exchange: every node scores ``state`` on its held-out real slices;
    returns the allowed aggregates per node (a refusal is noted on the node, and skipped)."""
    settings = _settings_record(P.EvaluateSettings(
        net=cfg.train.net, degradation=spec, preprocess=cfg.preprocess, seed=cfg.eval.seed,
        batch_size=cfg.eval.batch_size, max_slices=cfg.eval.max_slices))
    model = ArrayRecord(state)
    replies = exchange(grid, ledger, nodes, P.EVALUATE,
                       lambda _: RecordDict({P.MODEL: model, P.SETTINGS: settings}),
                       timeout_s=cfg.timeouts.evaluate_s, round_name=round_name,
                       record_to=_received_dir(cfg, out))
    scores = {}
    for node_id, reply in replies.items():
        reason = refusal(reply)
        if reason is not None:
            ledger.node(node_id).reasons.append(f"{round_name}: {reason}")
            continue
        metrics = reply.content.metric_records.get(P.METRICS)
        if metrics is None:
            continue
        scores[node_id] = {k: float(v) for k, v in metrics.items()  # type: ignore[arg-type]
                           if k in P.EVAL_METRICS}
    return scores


def evaluate_round(grid: Grid, nodes: list[int], cfg: FederationConfig, ledger: RunLedger,
                   state: State, spec: dict[str, Any], out: Path) -> None:
    """Every node scores the model on its held-out real slices; aggregates go to the ledger
    (and, after FedAvg, the pooled scores close the report's PSNR per round)."""
    scores = score_nodes(grid, nodes, cfg, ledger, state, spec, out, "evaluate")
    for node_id, allowed in scores.items():
        ledger.set_metrics(node_id, allowed)
    if cfg.strategy == "fedavg" and cfg.fedavg.evaluate_every and scores:
        ledger.add_round_metrics({"round": float(ledger.rounds),
                                  **pooled_metrics(list(scores.values()))})


def audit_round(grid: Grid, nodes: list[int], cfg: FederationConfig, ledger: RunLedger,
                state: dict[str, torch.Tensor], spec: dict[str, Any], out: Path) -> None:
    """``query.audit``: the nodes whose data trained the model attack it with their own members
    and non-members; only allowed, in-range aggregates reach the ledger."""
    trained = [n for n in nodes if ledger.node(n).status in ("used", "trained")]
    for node_id in sorted(set(nodes) - set(trained)):
        ledger.set_audit(node_id, note="not audited: its data did not train the model")
    if not trained:
        return
    settings = _settings_record(P.AuditSettings(
        strategy=cfg.strategy, net=cfg.train.net, degradation=spec, preprocess=cfg.preprocess,
        seed=cfg.audit.seed, n_boot=cfg.audit.n_boot,
        max_slices_per_patient=cfg.audit.max_slices_per_patient))
    model = ArrayRecord(state)
    replies = exchange(grid, ledger, trained, P.AUDIT,
                       lambda _: RecordDict({P.MODEL: model, P.SETTINGS: settings}),
                       timeout_s=cfg.timeouts.audit_s, round_name="audit",
                       record_to=_received_dir(cfg, out))
    for node_id in trained:
        reply = replies.get(node_id)
        reason = refusal(reply) if reply is not None else "no reply"
        metrics = reply.content.metric_records.get(P.METRICS) if reply is not None else None
        if reason is not None or metrics is None:
            ledger.set_audit(node_id, note=reason or "no metrics in the reply")
            continue
        clean, problems = check_audit_metrics(dict(metrics))
        if problems:
            logger.warning("audit reply of node %s dropped: %s", node_id, "; ".join(problems))
            ledger.set_audit(node_id, note="reply dropped: " + "; ".join(problems))
        else:
            ledger.set_audit(node_id, clean)
