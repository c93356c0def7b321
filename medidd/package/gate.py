"""The audit gate: may this package leave the site (node) or be used (aggregator)?

One rule, applied by the node before it serves a package
(:func:`medidd.federation.node.package_to_serve`), by the aggregator on every package it
receives (:func:`medidd.federation.policy.policy_problems`) and by ``medidd-node audit`` after
it records a verdict:

- a package whose recorded audit ``passed`` may go;
- a package whose audit did not pass (``failed``, ``not_run``) or was never run may go only
  when its manifest records an operator's override (who and why) *and* the place where the
  gate runs accepts overrides (``accept_override``); the override is then reported;
- a package that does not read back valid never goes.

The answer is always a :class:`Gate` (``ok``, one line of ``reason``, the ``override`` text);
a refusal says how to fix it and names the config key that allows overrides where the gate
runs (``override_key``, see :func:`medidd.config.config_key`).

Example:
    >>> from medidd.package.manifest import example_manifest
    >>> audit_gate(example_manifest(audit={"status": "passed"}), accept_override=False)
    Gate(ok=True, reason='audit passed', override=None)
    >>> print(audit_gate(example_manifest(), accept_override=False).reason)
    ... # doctest: +NORMALIZE_WHITESPACE
    no privacy audit recorded; run medidd-node audit on the package first, or record an
    operator override (who and why)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medidd.package.io import PackageError, read_package
from medidd.package.manifest import Manifest


@dataclass(frozen=True)
class Gate:
    """The gate's answer: ``ok`` when the package may go; ``reason`` one line, safe to send
    (no patient data: statuses and the operator's own override text); ``override`` is
    ``"by: reason"`` when a recorded override opened the gate, else None."""

    ok: bool
    reason: str
    override: str | None = None


def audit_gate(package: Manifest | Path, *, accept_override: bool,
               override_key: str | None = None) -> Gate:
    """Apply the audit gate (see the module docstring) to a manifest, or to the package
    folder / .zip at a path (read and validated first; an invalid package is refused).

    Args:
        package: the package's manifest (already validated), or its path.
        accept_override: whether a recorded operator override opens the gate here.
        override_key: the setting that turns ``accept_override`` on where the gate runs,
            named in refusals (e.g. ``config key 'policy.accept_override'``).

    Example:
        >>> from medidd.package.manifest import example_manifest
        >>> m = example_manifest(audit={"status": "failed",
        ...     "override": {"by": "dpo", "reason": "pilot"}})
        >>> gate = audit_gate(m, accept_override=True)
        >>> gate.ok, gate.override
        (True, 'dpo: pilot')
        >>> print(audit_gate(m, accept_override=False,
        ...                  override_key="config key 'policy.accept_override'").reason)
        ... # doctest: +NORMALIZE_WHITESPACE
        audit status 'failed' with an operator override recorded (dpo: pilot), but overrides
        are not accepted here (config key 'policy.accept_override')
        >>> audit_gate(Path("/nonexistent/pkg"), accept_override=True).ok
        False
    """
    if isinstance(package, Path):
        try:
            manifest = read_package(package).manifest
        except PackageError as exc:
            shown = "; ".join(exc.problems[:5])
            return Gate(False, f"package invalid ({len(exc.problems)} problems): {shown}")
    else:
        manifest = package
    audit = manifest.audit
    if audit is not None and audit.status == "passed":
        return Gate(True, "audit passed")
    allow = f" and allow it ({override_key})" if override_key and not accept_override else ""
    if audit is None:
        return Gate(False, "no privacy audit recorded; run medidd-node audit on the package "
                           f"first, or record an operator override (who and why){allow}")
    status = f"audit status '{audit.status}'"
    if audit.override is None:
        return Gate(False, f"{status} and no operator override recorded; the package may not "
                           "leave the site until medidd-node audit passes, or an operator "
                           f"records an override (who and why){allow}")
    text = f"{audit.override.by}: {audit.override.reason}"
    if accept_override:
        return Gate(True, f"{status}; allowed under the operator override recorded in the "
                          f"manifest ({text})", override=text)
    where = f" ({override_key})" if override_key else ""
    return Gate(False, f"{status} with an operator override recorded ({text}), but overrides "
                       f"are not accepted here{where}")
