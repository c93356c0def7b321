"""Flower ServerApp of the aggregator: a thin driver over ``medidd.federation``.

``strategy: distill``: ``query.collect`` -> validate every package (rejections recorded with
their reasons and the node) -> train the downstream net on the union -> ``evaluate`` on every
node's held-out real patients -> report. ``strategy: fedavg``: FedAvg on the nodes' raw slices
with the same net, then the same ``evaluate`` round. With ``audit.enabled``, a last
``query.audit`` round asks every node whose data trained the model to attack it with its own
members / non-members (aggregates only, checked against an allow-list). Nodes that do not
reply in time are reported missing and the run goes on with the others. The report (HTML +
JSON) is written atomically into the output folder, also when the run fails; the trained
weights (``model.safetensors``) with their ``metadata.json`` (:mod:`medidd.model`: network,
task, modality, window, degradation) before the ``evaluate`` round.

The deployment app (``aggregator.server_app:app``) reads its configuration from the run
config (``config-json``: the :class:`~medidd.federation.FederationConfig` as JSON;
``out-dir``: where to write the report, on the SuperLink's machine), which
``medidd-aggregate train --superlink`` fills in. The simulation builds its own app with
:func:`build_server_app`.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aggregator.strategies import (
    FederationError,
    audit_round,
    collect_and_train,
    evaluate_round,
    fedavg_rounds,
)
from aggregator.wire import wait_for_nodes
from medidd.config import config_key
from medidd.federation.config import FederationConfig
from medidd.federation.model_card import run_model_card
from medidd.federation.report import RunLedger, RunReport, write_report
from medidd.model import save_model

logger = logging.getLogger(__name__)

CONFIG_KEY = "config-json"
OUT_KEY = "out-dir"


def run_federation(grid: Grid, cfg: FederationConfig, out: Path) -> RunReport:
    """Run one federated training + evaluation and write the report into ``out``."""
    out = Path(out)
    start = time.perf_counter()
    ledger = RunLedger(cfg.strategy, cfg.task, cfg.node_names())
    ledger.extra["net"] = cfg.train.net.model_dump(mode="json")
    ledger.config_sha256 = hashlib.sha256(cfg.model_dump_json().encode("utf-8")).hexdigest()
    error = None
    try:
        want = max(cfg.min_nodes, len(cfg.node_names()))
        nodes = wait_for_nodes(grid, want, cfg.timeouts.wait_for_nodes_s)
        logger.info("%d nodes online", len(nodes))
        if len(nodes) < cfg.min_nodes:
            raise FederationError(f"only {len(nodes)} nodes online after "
                                  f"{cfg.timeouts.wait_for_nodes_s:.0f} s; the run needs "
                                  f"{cfg.min_nodes} ({config_key('min_nodes')})")
        if cfg.strategy == "distill":
            state, spec = collect_and_train(grid, nodes, cfg, ledger, out)
        else:
            state, spec = fedavg_rounds(grid, nodes, cfg, ledger, out)
        ledger.extra["degradation"] = spec
        manifest = ledger.extra.pop("manifest", None)
        save_model(state, run_model_card(cfg, spec, manifest), out)
        evaluate_round(grid, nodes, cfg, ledger, state, spec, out)
        if cfg.audit.enabled:
            audit_round(grid, nodes, cfg, ledger, state, spec, out)
    except FederationError as exc:
        error = str(exc)
        logger.error("run failed: %s", exc)
    except Exception as exc:  # the report must say what happened, whatever it was
        error = f"{type(exc).__name__}: {exc}"
        logger.error("run failed:\n%s", traceback.format_exc())
    report = ledger.finish(time.perf_counter() - start, error=error)
    write_report(report, out)
    return report


def build_server_app(cfg: FederationConfig, out: Path) -> ServerApp:
    """A ServerApp bound to ``cfg`` and ``out`` (the in-process simulation's)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, out)

    return server


#: The deployment ServerApp (``aggregator.server_app:app``): config from the run config.
app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    cfg = FederationConfig.model_validate_json(str(context.run_config[CONFIG_KEY]))
    run_federation(grid, cfg, Path(str(context.run_config[OUT_KEY])))
