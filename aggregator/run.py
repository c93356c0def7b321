"""Start a federated run on one of Flower's two engines and return its report.

- :func:`train_simulation`: Flower's simulation runtime, through its supported path: a local
  ``flower-superlink --simulation`` (insecure, on 127.0.0.1, in a temporary ``FLWR_HOME``) and
  ``flwr run`` with the number of virtual SuperNodes and the Ray backend's resources as
  ``--federation-config``; the SuperLink and everything it started are stopped afterwards.
  Every node of ``cfg.nodes`` is a virtual SuperNode whose settings (package and patient
  folders) come from the config's node table, by partition id
  (``hospital_node.client_app:simulation_app``).
- :func:`train_deployment`: the deployment engine. Builds a minimal Flower app (a
  ``pyproject.toml`` naming ``aggregator.server_app:app`` and ``hospital_node.client_app:app``,
  which must be installed on the SuperLink's and the SuperNodes' machines) with the run's
  config in ``[tool.flwr.app.config]``, and submits it with ``flwr run`` to a SuperLink given as
  ``HOST:PORT`` (TLS with ``root_certificates``) or as the name of a connection in
  ``$FLWR_HOME/config.toml``.

Flower and Ray log at WARNING and without colour codes unless ``verbose``
(:func:`run_env`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medidd.config import ConfigError
from medidd.federation.config import FederationConfig
from medidd.federation.executables import flower_executable
from medidd.federation.report import RunReport, read_report

logger = logging.getLogger(__name__)

APP_NAME = "medidd-federation"
CONNECTION = "medidd"
SIMULATION_CLIENT_APP = "hospital_node.client_app:simulation_app"


def run_env(env: dict[str, str] | None = None, *, verbose: bool = False) -> dict[str, str]:
    """Environment for Flower's processes: no telemetry; Flower (``FLWR_LOG_LEVEL``) and Ray
    at WARNING unless ``verbose``; no colour codes unless the output is a terminal.

    Example:
        >>> env = run_env({})
        >>> env["FLWR_LOG_LEVEL"], env["RAY_BACKEND_LOG_LEVEL"], env["FLWR_TELEMETRY_ENABLED"]
        ('WARNING', 'warning', '0')
    """
    target = dict(os.environ) if env is None else dict(env)
    target.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    target.setdefault("RAY_DEDUP_LOGS", "0")
    target.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not verbose:
        target["FLWR_LOG_LEVEL"] = "WARNING"
        target["RAY_BACKEND_LOG_LEVEL"] = "warning"
        target.setdefault("RAY_LOG_TO_STDERR", "0")
    bin_dir = str(Path(sys.executable).parent)  # flower-superexec, flwr-simulation, ...
    if bin_dir not in target.get("PATH", "").split(os.pathsep):
        target["PATH"] = os.pathsep.join([bin_dir, target.get("PATH", "")])
    if not sys.stdout.isatty():
        target["NO_COLOR"] = "1"
        target["TERM"] = "dumb"
    return target


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the local SuperLink exited with code {proc.returncode}:\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the local SuperLink did not start within {timeout_s:.0f} s:\n"
                       + log.read_text(errors="replace")[-2000:])


@contextmanager
def local_simulation_superlink(home: Path, env: dict[str, str], *,
                               startup_s: float = 120.0) -> Iterator[str]:
    """A ``flower-superlink --simulation`` on a free port of 127.0.0.1, ended with everything
    it started (by PID, :class:`aggregator.procs.Procs`) when the block exits; yields its
    address. Its log is ``home/logs/superlink.log``."""
    from aggregator.procs import Procs, free_port

    port = free_port()
    cmd = [flower_executable("flower-superlink"), "--insecure", "--simulation",
           "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
           "--port", str(port), "--control-api-address", f"127.0.0.1:{free_port()}"]
    procs = Procs(home / "logs")
    try:
        proc = procs.start("superlink", cmd, env)
        _wait_healthy(port, proc, procs.logs / "superlink.log", startup_s)
        yield f"127.0.0.1:{port}"
    finally:
        procs.stop_all()


def simulation_federation_config(n_nodes: int, cpus: int, verbose: bool) -> list[str]:
    """``flwr run --federation-config`` values: one virtual SuperNode per node, one CPU each,
    Ray on ``cpus`` CPUs and no GPU, its logs at WARNING unless ``verbose``.

    Example:
        >>> simulation_federation_config(2, 4, False)[:2]
        ['num-supernodes=2', 'client-resources-num-cpus=1']
    """
    level = '"INFO"' if verbose else '"WARNING"'
    return [f"num-supernodes={n_nodes}", "client-resources-num-cpus=1",
            "client-resources-num-gpus=0", f"init-args-num-cpus={cpus}",
            "init-args-num-gpus=0", f"init-args-logging-level={level}",
            f"init-args-log-to-driver={'true' if verbose else 'false'}"]


def train_simulation(cfg: FederationConfig, out: Path, *, verbose: bool = False,
                     cpus: int | None = None, client_app: str = SIMULATION_CLIENT_APP,
                     extra_env: dict[str, str] | None = None,
                     timeout_s: float | None = None) -> RunReport:
    """Run ``cfg`` in Flower's simulation runtime and return the report written to ``out``.

    Args:
        cfg: the run; ``cfg.nodes`` are the simulated hospitals.
        out: report folder (on this machine).
        verbose: show Flower's and Ray's logs (default: warnings only, and only when the run
            fails).
        cpus: CPUs for Ray (default: all).
        client_app: the ClientApp the virtual SuperNodes run (``module:attribute``).
        extra_env: more environment for Flower's processes (e.g. ``PYTHONPATH``).
        timeout_s: give up after this long.

    Raises:
        ConfigError: no nodes in ``cfg``.
        RuntimeError: the SuperLink or the run failed (the message carries their log's end).
    """
    simulate(cfg, out, verbose=verbose, cpus=cpus, client_app=client_app,
             extra_env=extra_env, timeout_s=timeout_s)
    return read_report(Path(out).resolve())


def simulate(cfg: FederationConfig, out: Path, *, verbose: bool = False, cpus: int | None = None,
             client_app: str = SIMULATION_CLIENT_APP, server_app: str | None = None,
             extra_env: dict[str, str] | None = None, timeout_s: float | None = None,
             report_file: str = "report.json") -> None:
    """Run one Flower app (``server_app`` / ``client_app``) on ``cfg.nodes`` in the
    simulation runtime; it must write ``out/report_file`` (see :func:`train_simulation`)."""
    if not cfg.nodes:
        raise ConfigError("the simulation needs the hospitals: add 'nodes:' (name, package, "
                          "patients per node) to the federation config")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_cpus = cpus or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="medidd-sim-") as tmp:
        home = Path(tmp) / "flwr-home"
        home.mkdir()
        env = run_env({**os.environ, **(extra_env or {})}, verbose=verbose)
        env["FLWR_HOME"] = str(home)
        with local_simulation_superlink(home, env) as address:
            app_dir = Path(tmp) / "app"
            app_dir.mkdir()
            (app_dir / "pyproject.toml").write_text(
                app_pyproject(cfg, out, client_app, server_app or SERVER_APP))
            (home / "config.toml").write_text(connection_toml(address, None, insecure=True))
            cmd = [flwr_executable(), "run", str(app_dir), CONNECTION, "--stream"]
            for value in simulation_federation_config(len(cfg.nodes), n_cpus, verbose):
                cmd += ["--federation-config", value]
            logger.info("simulating %d hospitals on Flower's simulation runtime",
                        len(cfg.nodes))
            proc = subprocess.run(cmd, env=env, check=False, timeout=timeout_s,
                                  stdout=None if verbose else subprocess.PIPE,
                                  stderr=None if verbose else subprocess.STDOUT)
            if proc.returncode != 0 or not (out / report_file).exists():
                tail = (proc.stdout or b"").decode(errors="replace")[-3000:]
                log = (home / "logs" / "superlink.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the simulation failed (flwr run exited with code "
                                   f"{proc.returncode}, no report in {out}):\n{tail}\n{log}")


CLIENT_APP = "hospital_node.client_app:app"
SERVER_APP = "aggregator.server_app:app"


def app_pyproject(cfg: FederationConfig, out: Path, client_app: str = CLIENT_APP,
                  server_app: str = SERVER_APP) -> str:
    """The ``pyproject.toml`` of the Flower app submitted to a SuperLink (config embedded);
    ``client_app`` / ``server_app`` are the apps the SuperNodes / SuperLink import
    (``module:attribute``)."""
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
serverapp = "{server_app}"
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
    deploy(cfg, out, superlink, root_certificates=root_certificates, insecure=insecure,
           stream=stream, timeout_s=timeout_s, client_app=client_app)
    return read_report(Path(out).resolve())


def deploy(cfg: FederationConfig, out: Path, superlink: str, *,
           root_certificates: Path | None = None, insecure: bool = False, stream: bool = True,
           timeout_s: float | None = None, client_app: str = CLIENT_APP,
           server_app: str = SERVER_APP, report_file: str = "report.json") -> None:
    """Submit one Flower app to a SuperLink and wait for it (see :func:`train_deployment`);
    the ServerApp must write ``out/report_file``."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = run_env(dict(os.environ), verbose=stream)
    with tempfile.TemporaryDirectory(prefix="medidd-flwr-") as tmp:
        app_dir = Path(tmp) / "app"
        app_dir.mkdir()
        (app_dir / "pyproject.toml").write_text(
            app_pyproject(cfg, out, client_app, server_app))
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
    if not (out / report_file).exists():
        raise RuntimeError(f"the run finished but wrote no report to {out}: with a remote "
                           "SuperLink the report is written on the SuperLink's machine")


PRIOR_SERVER_APP = "aggregator.prior:app"
PRIOR_CLIENT_APP = "hospital_node.prior_app:app"
PRIOR_SIMULATION_CLIENT_APP = "hospital_node.prior_app:simulation_app"


def read_prior_report(out: Path) -> dict[str, Any]:
    """The prior round's ``prior-report.json`` in ``out``."""
    from aggregator.prior import REPORT_FILE

    data: dict[str, Any] = json.loads((Path(out) / REPORT_FILE).read_text())
    return data


def prior_simulation(cfg: FederationConfig, out: Path, *, verbose: bool = False,
                     cpus: int | None = None, client_app: str = PRIOR_SIMULATION_CLIENT_APP,
                     extra_env: dict[str, str] | None = None,
                     timeout_s: float | None = None) -> dict[str, Any]:
    """The shared-prior round in the simulation runtime (``cfg.nodes`` are the hospitals);
    returns the round's report (the prior in ``out/prior``)."""
    from aggregator.prior import REPORT_FILE

    simulate(cfg, out, verbose=verbose, cpus=cpus, client_app=client_app,
             server_app=PRIOR_SERVER_APP, extra_env=extra_env, timeout_s=timeout_s,
             report_file=REPORT_FILE)
    return read_prior_report(out)


def prior_deployment(cfg: FederationConfig, out: Path, superlink: str, *,
                     root_certificates: Path | None = None, insecure: bool = False,
                     stream: bool = True, timeout_s: float | None = None,
                     client_app: str = PRIOR_CLIENT_APP) -> dict[str, Any]:
    """The shared-prior round on a SuperLink; returns the round's report."""
    from aggregator.prior import REPORT_FILE

    deploy(cfg, out, superlink, root_certificates=root_certificates, insecure=insecure,
           stream=stream, timeout_s=timeout_s, client_app=client_app,
           server_app=PRIOR_SERVER_APP, report_file=REPORT_FILE)
    return read_prior_report(out)
