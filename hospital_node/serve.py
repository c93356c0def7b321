"""``medidd-node serve``: start a Flower SuperNode whose ClientApp serves this site's package.

The package is checked *before* the SuperNode starts (valid, audit passed or an override
recorded now), so an operator sees a refusal at once rather than in the aggregator's report.
The node's settings travel to the ClientApp as the SuperNode's ``--node-config``; nothing of
them comes from the aggregator. TLS is on by default (``--root-certificates``: the CA that
signed the SuperLink's certificate); with SuperNode authentication the SuperLink admits the
node only if its public key was registered (``flwr supernode register``).

Example:
    >>> cmd = supernode_command("10.0.0.5:8000", {"name": "site-a", "package": "/p"},
    ...                         root_certificates=Path("ca.crt"), port=9095)
    >>> cmd[1:4], cmd[-2:]
    (['--superlink', '10.0.0.5:8000', '--node-config'], ['--port', '9095'])
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medidd.federation.executables import flower_executable
from medidd.federation.local import default_salt_file
from medidd.federation.node import NodeSettings, package_to_serve, record_audit_override

logger = logging.getLogger(__name__)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if "'" not in text:
        return f"'{text}'"  # TOML literal string: no escapes
    if '"' in text or "\\" in text:
        raise ValueError(f"node config value {text!r} holds both quote characters; rename it")
    return f'"{text}"'


def node_config_string(config: Mapping[str, Any]) -> str:
    """``key='value' key2=true`` as ``flower-supernode --node-config`` parses it.

    Example:
        >>> node_config_string({"name": "a", "override-audit": True})
        "name='a' override-audit=true"
    """
    return " ".join(f"{k}={_toml_value(v)}" for k, v in config.items() if v is not None)


def supernode_executable() -> str:
    """``flower-supernode`` next to this Python, or on PATH."""
    return flower_executable("flower-supernode")


def supernode_command(
    superlink: str,
    node_config: Mapping[str, Any],
    *,
    root_certificates: Path | None = None,
    auth_private_key: Path | None = None,
    insecure: bool = False,
    port: int = 9094,
    max_retries: int | None = None,
) -> list[str]:
    """The ``flower-supernode`` command line for this node."""
    cmd = [supernode_executable(), "--superlink", superlink, "--node-config",
           node_config_string(node_config)]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates is not None:
        cmd += ["--root-certificates", str(Path(root_certificates).resolve())]
    if auth_private_key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(auth_private_key).resolve())]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    cmd += ["--port", str(port)]
    return cmd


def node_settings(
    package: Path | None,
    *,
    name: str,
    patients: Path | None = None,
    holdout: Path | None = None,
    salt_file: Path | None = None,
    cache_dir: Path | None = None,
    override_audit: bool = False,
    region: str | None = None,
    prior_dir: Path | None = None,
    report_dir: Path | None = None,
) -> NodeSettings:
    """The node's settings with absolute paths (the ClientApp runs in another process); the
    salt defaults to the site's (``$MEDIDD_HOME/salt``, as the other medidd-node commands) and
    the preprocessing cache to ``$MEDIDD_HOME/cache`` (every round re-reads the patients).

    Raises:
        medidd.config.ConfigError: a setting is invalid (e.g. the name); the message names
            its node config key.
    """
    def absolute(p: Path | None) -> Path | None:
        return Path(p).resolve() if p is not None else None

    return NodeSettings.from_node_config({
        "name": name, "package": absolute(package), "patients": absolute(patients),
        "holdout": absolute(holdout), "salt-file": absolute(salt_file or default_salt_file()),
        "cache-dir": absolute(cache_dir or default_salt_file().parent / "cache"),
        "override-audit": override_audit, "region": region,
        "prior-dir": absolute(prior_dir), "report-dir": absolute(report_dir)})


def serve(
    superlink: str,
    settings: NodeSettings,
    *,
    root_certificates: Path | None = None,
    auth_private_key: Path | None = None,
    insecure: bool = False,
    port: int = 9094,
    override_by: str | None = None,
    override_reason: str | None = None,
) -> int:
    """Check the package (when the node has one), then run a SuperNode until it stops;
    returns its exit code. A node without a package takes part in shared-prior rounds
    (``medidd-aggregate prior``) and refuses ``collect``.

    ``override_by`` + ``override_reason`` record an operator's override of a failed or
    missing audit in the package manifest (and turn ``override_audit`` on).

    Raises:
        medidd.federation.NodeRefusal: the package may not be served (the message says why).
    """
    if (override_by is None) != (override_reason is None):
        raise ValueError("an audit override needs both who (--override-audit-by) and why "
                         "(--override-audit-reason)")
    if override_by is not None and override_reason is not None and settings.package is not None:
        record_audit_override(settings.package, override_by, override_reason)
        settings = settings.model_copy(update={"override_audit": True})
    if settings.package is not None:
        served = package_to_serve(settings)
        logger.info("package ok: %d images, %d bytes%s", served.manifest.n_images,
                    served.n_bytes, f" (audit override: {served.override})"
                    if served.override else "")
    else:  # before distillation: shared-prior rounds (and evaluation) only
        logger.info("no package: this node takes part in shared-prior rounds and refuses "
                    "collect")
    config = {k.replace("_", "-"): (str(v) if isinstance(v, Path) else v)
              for k, v in settings.model_dump().items() if v is not None}
    cmd = supernode_command(superlink, config, root_certificates=root_certificates,
                            auth_private_key=auth_private_key, insecure=insecure, port=port)
    logger.info("starting the SuperNode for %s (SuperLink %s)", settings.name, superlink)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
