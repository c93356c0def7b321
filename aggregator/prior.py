"""Flower ServerApp of the shared-prior round: the nodes' noised sums through SecAgg+, divided
into the prior, written, sent back to the nodes for their audit. A thin driver over
:mod:`medidd.prior.shared`.

Why this is its own Flower app, on the legacy workflow API (measured in flwr 1.41.0; see
docs/prior.md): ``SecAggPlusWorkflow.__call__`` raises ``TypeError`` unless its context is a
``LegacyContext``, draws its instructions from a legacy ``Strategy.configure_fit`` with
``ClientProxy`` objects from a ``ClientManager``, hands the unmasked sum to
``Strategy.aggregate_fit`` as ``FitRes`` and sends every stage as a plain ``train`` message;
``secaggplus_mod`` on the node only acts on plain ``train`` messages and reads the node's
reply as a legacy ``FitRes`` record. None of the Message-API strategies
(``flwr.serverapp.strategy``) speaks it. So the ``@app.main()`` below (Message API: a
``Grid``) builds a ``LegacyContext`` with a one-round summing strategy and runs the workflow on
the grid itself; the node's ClientApp (``hospital_node/prior_app.py``) registers its default
``train`` function with ``secaggplus_mod``, which would collide with the FedAvg ``train`` of
the main ClientApp — hence a separate pair of apps.

The server learns only: the sum over the sites that finished the masking stage (Flower's
unmasking), each site's name and the groups it has no patients of (plain text), and each
site's masked vectors, uniformly random modulo 2^32 (checked here for shape and range: a
reply that cannot be a masked contribution is rejected with the reason and treated as a
dropout). A site that refuses (its own check found non-finite values or a wrong shape before
masking) replies an error whose reason the report shows.

Example (not run: it needs a Flower runtime)::

    report = run_prior_round(grid, FederationConfig(), Path("out/prior-run"))
    report["prior_sha256"]
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    bytes_to_ndarray,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid, ServerApp

from aggregator.wire import content_bytes, wait_for_nodes
from medidd.atomic import atomic_write_text
from medidd.config import config_key
from medidd.federation import protocol as P
from medidd.federation.config import FederationConfig
from medidd.prior.shared import (
    GroupSums,
    expected_shapes,
    prior_files,
    release,
    write_prior_audit,
    write_shared_prior,
)

logger = logging.getLogger(__name__)

CONFIG_KEY = "config-json"
OUT_KEY = "out-dir"
REPORT_FILE = "prior-report.json"
PRIOR_DIR = "prior"
#: SecAgg+'s modulus (Flower's default); masked vectors are integers below it.
MOD_RANGE = 2**32


class PriorRoundError(RuntimeError):
    """The prior round cannot go on; the message says why (and names the config key)."""


def node_reason(reason: str) -> str:
    """A node's refusal from Flower's error reason ``"<class 'X'>:<'message'>"``.

    Example:
        >>> node_reason("<class 'ValueError'>:<'2 non-finite values'>")
        '2 non-finite values'
    """
    match = re.fullmatch(r"<class '[^']*'>:<'(.*)'>", reason, flags=re.S)
    return match.group(1) if match else reason


class PriorSum(Strategy):
    """A one-round legacy strategy for SecAgg+: every given node gets the round's settings;
    ``aggregate_fit`` keeps the unmasked mean (what Flower's workflow computes with weight 1
    per node) and the plain-text metrics of each node."""

    def __init__(self, nodes: Iterable[int], settings_json: str) -> None:
        self.nodes = set(nodes)
        self.settings_json = settings_json
        self.mean: list[np.ndarray] | None = None
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return Parameters(tensors=[], tensor_type="numpy.ndarray")

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        ins = FitIns(parameters, {P.SETTINGS_JSON: self.settings_json})
        return [(p, ins) for p in client_manager.all().values() if p.node_id in self.nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = list(results)
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, server_round: int,
                           results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        return None


def payload_bytes(content: RecordDict) -> int:
    """:func:`aggregator.wire.content_bytes`, also for records flwr 1.41's
    ``ConfigRecord.count_bytes`` cannot count: an empty list (SecAgg+'s unmask stage sends
    one when no node dropped) raises ``IndexError``, a list of bools ``ValueError``."""
    total = 0
    for rec in content.values():
        try:
            total += int(rec.count_bytes())
        except (IndexError, ValueError):
            logger.debug("counting a record by hand: %s", {k: type(v).__name__
                                                           for k, v in rec.items()})
            for key, value in rec.items():
                items = value if isinstance(value, list) else [value]
                total += len(key) + sum(len(v) if isinstance(v, bytes | str) else 8
                                        for v in items)
    return total


class ScreeningGrid(Grid):
    """The run's grid, seen by SecAgg+: counts bytes and replies per stage, keeps node
    errors (refusals), and screens every masked vector (shape, integer dtype, range
    ``[0, 2^32)``); a reply that fails is dropped, with the reason, so SecAgg+ treats the
    node as a dropout. With ``record_to`` it keeps every masked vector received."""

    def __init__(self, inner: Grid, shapes: list[tuple[int, ...]],
                 record_to: Path | None = None) -> None:
        self.inner = inner
        self.shapes = [(1,), *shapes]  # SecAgg+ prepends the node's weight factor
        self.record_to = record_to
        self.replies: dict[str, int] = {}
        self.errors: dict[int, str] = {}
        self.rejected: dict[int, str] = {}
        self.bytes_up = 0
        self.bytes_down = 0

    def set_run(self, run: Any) -> None:  # delegate
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def _problems(self, reply: Message) -> str | None:
        record = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        raw = record.get(Key.MASKED_PARAMETERS) if record is not None else None
        if not isinstance(raw, list) or not all(isinstance(b, bytes) for b in raw):
            return "no masked vector in the reply"
        try:
            arrays = [bytes_to_ndarray(cast(bytes, b)) for b in raw]
        except Exception as exc:  # any undecodable payload is a rejection
            return f"masked vector unreadable ({type(exc).__name__})"
        shapes = [tuple(a.shape) for a in arrays]
        if shapes != self.shapes:
            return f"masked vector of shapes {shapes[1:]}, expected {self.shapes[1:]}"
        for a in arrays:
            if a.dtype.kind not in "iu":
                return f"masked vector of dtype {a.dtype} (SecAgg+ sends integers)"
            if a.size and (int(a.min()) < 0 or int(a.max()) >= MOD_RANGE):
                return "masked vector outside [0, 2^32)"
        if self.record_to is not None:
            folder = self.record_to / f"masked-{reply.metadata.src_node_id}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, a in enumerate(arrays):
                np.save(folder / f"{i:02d}.npy", a, allow_pickle=False)
        return None

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stage = "other"
        if messages and RECORD_KEY_CONFIGS in messages[0].content.config_records:
            stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS].get(
                Key.STAGE, "other"))
        self.bytes_down += sum(payload_bytes(m.content) for m in messages)
        out = []
        for reply in self.inner.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.errors[node] = node_reason(str(reply.error.reason))
                logger.warning("node %s: %s", node, self.errors[node])
                out.append(reply)
                continue
            self.bytes_up += payload_bytes(reply.content)
            if stage == Stage.COLLECT_MASKED_VECTORS:
                problem = self._problems(reply)
                if problem is not None:
                    self.rejected[node] = problem
                    logger.warning("node %s rejected: %s", node, problem)
                    continue
            out.append(reply)
        self.replies[stage] = sum(1 for r in out if not r.has_error())
        return out


def _legacy_context(context: Context, grid: Grid, nodes: list[int], strategy: PriorSum
                    ) -> LegacyContext:
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=1), strategy=strategy)
    for node in nodes:
        legacy.client_manager.register(GridClientProxy(node, grid, grid.run.run_id))
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: 1, WorkflowKey.START_TIME: time.time()})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    return legacy


def _workflow(cfg: FederationConfig) -> SecAggPlusWorkflow:
    r = cfg.prior_round
    try:
        return SecAggPlusWorkflow(r.num_shares, r.reconstruction_threshold, max_weight=1.0,
                                  clipping_range=r.clipping_range,
                                  quantization_range=r.quantization_range,
                                  modulus_range=MOD_RANGE, timeout=r.timeout_s)
    except (TypeError, ValueError) as exc:
        raise PriorRoundError(f"SecAgg+ settings refused by Flower: {exc} "
                              f"({config_key('prior_round')})") from None


def check_sites(cfg: FederationConfig, n_online: int) -> None:
    """Refuse the round, before any data moves, with fewer sites than it needs.

    Example:
        >>> check_sites(FederationConfig(), 2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        aggregator.prior.PriorRoundError: only 2 sites online; the prior round needs 3 ...
    """
    r = cfg.prior_round
    need = max(r.min_sites, r.threshold_for(max(n_online, 1)), 2)
    if n_online < need:
        raise PriorRoundError(
            f"only {n_online} sites online; the prior round needs {need} "
            f"({config_key('prior_round.min_sites')}, SecAgg+ reconstruction threshold "
            f"{r.threshold_for(max(n_online, 1))}): no data was requested")


def secure_sum(grid: Grid, context: Context, cfg: FederationConfig, nodes: list[int],
               report: dict[str, Any], record_to: Path | None
               ) -> tuple[list[np.ndarray], list[tuple[ClientProxy, FitRes]]]:
    """The SecAgg+ round: the sum of every contributing site's arrays, and their FitRes."""
    settings = P.PriorSettings(prior=cfg.prior, preprocess=cfg.preprocess,
                               clipping_range=cfg.prior_round.clipping_range)
    strategy = PriorSum(nodes, settings.model_dump_json())
    screened = ScreeningGrid(grid, expected_shapes(cfg.prior), record_to)
    workflow = _workflow(cfg)
    workflow(screened, _legacy_context(context, grid, nodes, strategy))
    report["stages"] = dict(screened.replies)
    report["bytes_up"] += screened.bytes_up
    report["bytes_down"] += screened.bytes_down
    report["refused"] = {str(k): v for k, v in screened.errors.items()}
    report["rejected"] = {str(k): v for k, v in screened.rejected.items()}
    if strategy.mean is None:
        got = screened.replies.get(Stage.COLLECT_MASKED_VECTORS, 0)
        raise PriorRoundError(
            f"SecAgg+ halted: {got} of {len(nodes)} sites sent masked sums, fewer than the "
            f"reconstruction threshold {cfg.prior_round.threshold_for(len(nodes))} allows "
            f"to unmask ({config_key('prior_round.reconstruction_threshold')}); refused: "
            f"{report['refused'] or 'none'}; rejected: {report['rejected'] or 'none'}")
    n = len(strategy.results)
    return [a * n for a in strategy.mean], strategy.results


def _audit_round(grid: Grid, cfg: FederationConfig, nodes: list[int], folder: Path,
                 names: dict[int, str], report: dict[str, Any]) -> dict[str, Any]:
    files = prior_files(folder)
    arrays = ArrayRecord({n: Array(np.frombuffer(b, dtype=np.uint8).copy())
                          for n, b in files.items()})
    settings = P.PriorSettings(prior=cfg.prior, preprocess=cfg.preprocess,
                               clipping_range=cfg.prior_round.clipping_range)
    msgs = []
    for node in nodes:
        content = RecordDict({P.PRIOR: arrays, P.SETTINGS: ConfigRecord(
            {P.SETTINGS_JSON: settings.model_dump_json()})})
        report["bytes_down"] += content_bytes(content)
        msgs.append(Message(content, dst_node_id=node, message_type=P.PRIOR_AUDIT,
                            group_id="prior-audit"))
    per_node: dict[str, Any] = {}
    for reply in grid.send_and_receive(msgs, timeout=cfg.prior_round.timeout_s):
        node = reply.metadata.src_node_id
        name = names.get(node, str(node))
        if reply.has_error():
            per_node[name] = {"error": node_reason(str(reply.error.reason))}
            continue
        report["bytes_up"] += content_bytes(reply.content)
        meta = reply.content.config_records.get(P.META)
        if meta is not None and P.REFUSED in meta:
            per_node[name] = {"refused": str(meta[P.REFUSED])}
            continue
        metrics = reply.content.metric_records.get(P.METRICS)
        values = {k: float(v) for k, v in (metrics or {}).items()  # type: ignore[arg-type]
                  if k in P.PRIOR_AUDIT_METRICS}
        per_node[name] = values
    checked = [v for v in per_node.values() if "max_nn_ncc" in v]
    lines = [v for v in checked if "ideal_line" in v]
    status = ("passed" if lines and all(v["max_nn_ncc"] < v["ideal_line"] for v in lines)
              else "failed" if lines else "not_run")
    return {"status": status, "nodes": per_node,
            "max_nn_ncc": max((v["max_nn_ncc"] for v in checked), default=None)}


def run_prior_round(grid: Grid, context: Context, cfg: FederationConfig, out: Path
                    ) -> dict[str, Any]:
    """Run the prior round; write ``out/prior`` and ``out/prior-report.json``; return the
    report (``status`` ok or failed, with the error)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"status": "failed", "error": None, "bytes_up": 0,
                              "bytes_down": 0, "nodes": {}, "groups": {}}
    try:
        want = max(cfg.prior_round.min_sites, len(cfg.node_names()))
        nodes = wait_for_nodes(grid, want, cfg.timeouts.wait_for_nodes_s)
        check_sites(cfg, len(nodes))
        record = out / "received" if cfg.record_received else None
        total, results = secure_sum(grid, context, cfg, nodes, report, record)
        names: dict[int, str] = {}
        n_sites = dict.fromkeys(cfg.prior.groups, 0)
        for proxy, res in results:
            name = str(res.metrics.get("node-name", proxy.node_id))
            names[proxy.node_id] = name
            empty = [g for g in str(res.metrics.get("empty", "")).split(",") if g]
            report["nodes"][name] = {"contributed": True, "empty_groups": empty}
            for g in cfg.prior.groups:
                n_sites[g] += g not in empty
        report["dropped"] = sorted(str(n) for n in set(nodes) - set(names))
        sums = {g: GroupSums(total[2 * i], total[2 * i + 1])
                for i, g in enumerate(cfg.prior.groups)}
        extra = {"secure_aggregation": "secagg+", "sites": len(results),
                 "reconstruction_threshold": cfg.prior_round.threshold_for(len(nodes))}
        prior = release(sums, cfg.prior, size=cfg.preprocess.size, n_sites=n_sites,
                        window=cfg.preprocess.ct_window, extra_statement=extra)
        folder = out / PRIOR_DIR
        report["prior_sha256"] = write_shared_prior(prior, folder)
        report["prior_dir"] = str(folder)
        report["statement"] = prior.statement
        report["groups"] = {g: {"released": [bool(b) for b in p.released],
                                "patients_per_bin": [round(float(c), 2) for c in p.patients],
                                "n_sites": p.n_sites} for g, p in prior.groups.items()}
        if cfg.prior_round.audit:
            audit = _audit_round(grid, cfg, sorted(names), folder, names, report)
            write_prior_audit(folder, audit)
            report["audit"] = audit
        report["status"] = "ok"
    except PriorRoundError as exc:
        report["error"] = str(exc)
        logger.error("prior round failed: %s", exc)
    except Exception as exc:  # the report must say what happened, whatever it was
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()[-3000:]
        logger.error("prior round failed:\n%s", report["traceback"])
    report["wall_s"] = round(time.perf_counter() - start, 2)
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=1, default=str))
    return report


def build_prior_server_app(cfg: FederationConfig, out: Path) -> ServerApp:
    """A prior-round ServerApp bound to ``cfg`` and ``out``."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_prior_round(grid, context, cfg, out)

    return server


#: The deployment ServerApp (``aggregator.prior:app``): config from the run config.
app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    cfg = FederationConfig.model_validate_json(str(context.run_config[CONFIG_KEY]))
    run_prior_round(grid, context, cfg, Path(str(context.run_config[OUT_KEY])))
