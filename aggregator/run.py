"""Start a federated run on one of Flower's two engines and return its report.

- :func:`train_simulation`: the in-process simulation engine (``flwr.simulation``, Ray
  backend); every node of ``cfg.nodes`` is a virtual SuperNode whose settings (package and
  patient folders) come from the config's node table, mapped by partition id.
- :func:`train_deployment`: the deployment engine. Builds a minimal Flower app (a
  ``pyproject.toml`` naming ``aggregator.server_app:app`` and ``hospital_node.client_app:app``,
  which must be installed on the SuperLink's and the SuperNodes' machines) with the run's
  config in ``[tool.flwr.app.config]``, and submits it with ``flwr run`` to a SuperLink given as
  ``HOST:PORT`` (TLS with ``root_certificates``) or as the name of a connection in
  ``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from medidd.config import ConfigError
from medidd.federation.config import FederationConfig
from medidd.federation.executables import flower_executable
from medidd.federation.report import RunReport, read_report

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

logger = logging.getLogger(__name__)

APP_NAME = "medidd-federation"
CONNECTION = "medidd"


def _quiet_flower(env: dict[str, str] | None = None) -> dict[str, str]:
    target = os.environ if env is None else env
    target.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    target.setdefault("RAY_DEDUP_LOGS", "0")
    target.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return dict(target)


def train_simulation(cfg: FederationConfig, out: Path, *, verbose: bool = False,
                     cpus: int | None = None, client_app: ClientApp | None = None) -> RunReport:
    """Run ``cfg`` in Flower's in-process simulation and return the report in ``out``.

    ``client_app`` replaces the nodes' ClientApp (default: MediDD's, with the settings of
    ``cfg.nodes`` by partition id)."""
    if not cfg.nodes:
        raise ConfigError("the simulation needs the hospitals: add 'nodes:' (name, package, "
                          "patients per node) to the federation config")
    _quiet_flower()
    from flwr.simulation import run_simulation

    from aggregator.server_app import build_server_app
    from hospital_node.client_app import build_client_app

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_cpus = cpus or os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": n_cpus, "num_gpus": 0, "include_dashboard": False},
    }
    run_simulation(server_app=build_server_app(cfg, out),
                   client_app=client_app or build_client_app(cfg.nodes),
                   num_supernodes=len(cfg.nodes), backend_config=backend,  # type: ignore[arg-type]
                   verbose_logging=verbose)
    return read_report(out)


CLIENT_APP = "hospital_node.client_app:app"
SERVER_APP = "aggregator.server_app:app"


def app_pyproject(cfg: FederationConfig, out: Path, client_app: str = CLIENT_APP) -> str:
    """The ``pyproject.toml`` of the Flower app submitted to a SuperLink (config embedded);
    ``client_app`` is the ClientApp the SuperNodes import (``module:attribute``)."""
    config_json = json.dumps(cfg.model_dump_json())  # a JSON string is a TOML basic string
    out_dir = json.dumps(str(Path(out).resolve()))
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "0.1.0"
description = "MediDD federated run (ServerApp and ClientApp are installed with medidd)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "medidd"

[tool.flwr.app.components]
serverapp = "{SERVER_APP}"
clientapp = "{client_app}"

[tool.flwr.app.config]
config-json = {config_json}
out-dir = {out_dir}
"""


def connection_toml(address: str, root_certificates: Path | None, insecure: bool) -> str:
    """A ``$FLWR_HOME/config.toml`` with one SuperLink connection named ``medidd``."""
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f"address = {json.dumps(address)}"]
    if insecure:
        lines.append("insecure = true")
    elif root_certificates is not None:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}")
    return "\n".join(lines) + "\n"


def flwr_executable() -> str:
    """The ``flwr`` CLI next to this Python, or on PATH."""
    try:
        return flower_executable("flwr")
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None


def train_deployment(cfg: FederationConfig, out: Path, superlink: str, *,
                     root_certificates: Path | None = None, insecure: bool = False,
                     stream: bool = True, timeout_s: float | None = None,
                     client_app: str = CLIENT_APP) -> RunReport:
    """Submit the run to a SuperLink (``HOST:PORT`` or a named connection) and wait for it."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = _quiet_flower(dict(os.environ))
    with tempfile.TemporaryDirectory(prefix="medidd-flwr-") as tmp:
        app_dir = Path(tmp) / "app"
        app_dir.mkdir()
        (app_dir / "pyproject.toml").write_text(app_pyproject(cfg, out, client_app))
        if ":" in superlink:
            if root_certificates is None and not insecure:
                raise ConfigError("--superlink HOST:PORT needs --root-certificates CA.crt (the "
                                  "CA that signed the SuperLink's certificate) or --insecure")
            home = Path(tmp) / "flwr-home"
            home.mkdir()
            (home / "config.toml").write_text(
                connection_toml(superlink, root_certificates, insecure))
            env["FLWR_HOME"] = str(home)
            connection = CONNECTION
        else:
            connection = superlink
        # --stream also makes `flwr run` wait for the run to end (without it, it returns once
        # the run is submitted); quiet runs discard the streamed logs.
        cmd = [flwr_executable(), "run", str(app_dir), connection, "--stream"]
        logger.info("submitting the run to SuperLink %s", superlink)
        proc = subprocess.run(cmd, env=env, check=False, timeout=timeout_s,
                              stdout=None if stream else subprocess.DEVNULL,
                              stderr=None if stream else subprocess.PIPE)
        if proc.returncode != 0:
            tail = (proc.stderr or b"").decode(errors="replace")[-2000:]
            raise RuntimeError(f"flwr run exited with code {proc.returncode}"
                               + (f":\n{tail}" if tail else "; see its output above"))
    report_file = out / "report.json"
    if not report_file.exists():
        raise RuntimeError(f"the run finished but wrote no report to {out}: with a remote "
                           "SuperLink the report is written on the SuperLink's machine")
    return read_report(out)
