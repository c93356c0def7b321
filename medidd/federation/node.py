"""A hospital node's side of the federation: its settings and the package it may serve.

Node settings are set *at the site* (``flower-supernode --node-config``, or the simulation's
node table) and never by the aggregator: where the package and the patients are, and whether
the operator allows serving a package whose audit did not pass. The node serves a package only
when it reads back valid and its audit passed, or when an override is both allowed by the node
config and recorded in the manifest (who and why), so the aggregator's report shows it.

Example:
    >>> s = NodeSettings.from_node_config({"name": "site-a", "package": "/data/pkg",
    ...                                    "override-audit": False, "partition-id": 0})
    >>> s.name, str(s.package)
    ('site-a', '/data/pkg')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from medidd.config import ConfigError, StrictModel
from medidd.package import AuditInfo, Manifest, update_manifest
from medidd.package._source import load_files
from medidd.package.validate import check_contents

logger = logging.getLogger(__name__)

#: Keys Flower's simulation engine puts into every node config; not ours, ignored.
FLOWER_KEYS: frozenset[str] = frozenset({"partition-id", "num-partitions"})


class NodeSettings(StrictModel):
    """One node's local settings. Paths are on the node's machine.

    ``package``: the distilled package folder (or .zip) to serve; ``patients``: the site's
    patients folder (FedAvg trains on it; held-out patients are those not in the package);
    ``holdout``: an explicit folder of held-out patients for evaluation; ``override_audit``:
    serve a package whose audit did not pass *if* its manifest records an override;
    ``salt_file`` / ``cache_dir``: pseudonymisation salt and preprocessing cache of the site;
    ``max_package_bytes``: the node refuses to send a larger package."""

    name: str = Field("node", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    package: Path | None = None
    patients: Path | None = None
    holdout: Path | None = None
    override_audit: bool = False
    salt_file: Path | None = None
    cache_dir: Path | None = None
    max_package_bytes: int | None = Field(None, ge=1)

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any]) -> NodeSettings:
        """Build from a flat Flower node config (``override-audit`` or ``override_audit``).

        Flower's own keys (``partition-id``, ``num-partitions``) are ignored; any other
        unknown key is a :class:`~medidd.config.ConfigError` listing the valid ones.
        """
        data = {k.replace("-", "_"): v for k, v in config.items() if k not in FLOWER_KEYS}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            valid = ", ".join(k.replace("_", "-") for k in cls.model_fields)
            raise ConfigError("invalid node config: " + "; ".join(lines) +
                              f" (valid keys: {valid})") from exc

    def resolve_paths(self, base: Path) -> NodeSettings:
        """A copy with relative paths taken relative to ``base``."""
        updates = {}
        for key in ("package", "patients", "holdout", "salt_file", "cache_dir"):
            value = getattr(self, key)
            if value is not None and not Path(value).is_absolute():
                updates[key] = (Path(base) / value).resolve()
        return self.model_copy(update=updates)


class NodeRefusal(Exception):
    """The node will not serve its package; the message is one line, safe to send."""


@dataclass(frozen=True)
class ServedPackage:
    """What a node sends on ``query.collect``: the package files as written, and the manifest.

    ``override`` is ``"by: reason"`` when an audit override made the package servable."""

    files: dict[str, bytes]
    manifest: Manifest
    override: str | None = None

    @property
    def n_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())


def package_to_serve(settings: NodeSettings) -> ServedPackage:
    """Read, validate and gate the node's package; :class:`NodeRefusal` says why not.

    Example:
        >>> package_to_serve(NodeSettings(name="a"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        medidd.federation.node.NodeRefusal: node a has no package configured (node config ...
    """
    if settings.package is None:
        raise NodeRefusal(f"node {settings.name} has no package configured (node config key "
                          "'package')")
    files, problems = load_files(Path(settings.package), settings.max_package_bytes)
    if files is None:
        raise NodeRefusal(f"node {settings.name}: package unreadable: {'; '.join(problems)}")
    checked = check_contents(files)
    problems += checked.problems
    if problems or checked.manifest is None:
        raise NodeRefusal(f"node {settings.name}: package invalid ({len(problems)} problems): "
                          + "; ".join(problems[:5]))
    manifest = checked.manifest
    audit = manifest.audit
    if audit is not None and audit.status == "passed":
        return ServedPackage(files=files, manifest=manifest)
    status = "no audit" if audit is None else f"audit status '{audit.status}'"
    if audit is not None and audit.override is not None and settings.override_audit:
        override = f"{audit.override.by}: {audit.override.reason}"
        logger.warning("serving a package with %s under the recorded override", status)
        return ServedPackage(files=files, manifest=manifest, override=override)
    if settings.override_audit:
        raise NodeRefusal(f"node {settings.name}: package has {status} and no override recorded "
                          "in its manifest; record one (medidd-node serve --override-audit-by "
                          "... --override-audit-reason ...) or run the audit")
    raise NodeRefusal(f"node {settings.name}: package has {status}; run medidd-node audit, or "
                      "record an override and set the node config override-audit=true")


def record_audit_override(package: Path, by: str, reason: str) -> Manifest:
    """Record an operator's override of a failed / missing audit in the package's manifest.

    The audit status is kept as it is (``failed`` / ``not_run``); only ``audit.override`` is
    set, so every reader (and the aggregator's report) sees who served it anyway and why.
    """
    files, problems = load_files(Path(package))
    checked = check_contents(files or {})
    if files is None or checked.manifest is None:
        raise NodeRefusal(f"cannot record an override: {'; '.join(problems + checked.problems)}")
    current = checked.manifest.audit or AuditInfo.model_validate({"status": "not_run"})
    raw = current.model_dump(mode="json") | {"override": {"by": by, "reason": reason}}
    return update_manifest(Path(package), audit=AuditInfo.model_validate(raw))
