"""What the aggregator accepts: validate a received package and apply the consortium's policy.

A node sends its package's *files* (``manifest.json`` and the ``hq``/``lq`` array files, as
bytes), so the aggregator runs exactly the checks a hospital runs before it ships
(:func:`medidd.package.validate.check_contents`: schema = PHI allow-list, shapes, dtype, finite
values, value range, sha256 and size of every file against the manifest), plus:

- a size limit checked *before* anything is decoded (``max_bytes``);
- the audit gate (:func:`medidd.package.audit_gate`, the rule the node applies before it
  serves): ``audit.status == "passed"``, or an operator's override recorded in the manifest
  (accepted only when ``accept_override``); the override is reported;
- differential privacy when the consortium demands it (``require_dp``, ``max_epsilon``);
- consistency with the run: task, modality, image size, CT window, degradation kind.

Every failed check is a reason; a package is used only when there is none.

Example:
    >>> verdict = check_received_package({"manifest.json": b"{}"}, CollectionPolicy())
    >>> verdict.accepted, verdict.reasons[0].startswith("manifest.json:")
    (False, True)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from medidd.config import StrictModel, config_key
from medidd.package import Manifest, audit_gate
from medidd.package.validate import check_contents

if TYPE_CHECKING:
    from medidd.federation.spool import SpooledPackage

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class CollectionPolicy(StrictModel):
    """The consortium's rules for packages (all checked at the aggregator).

    ``expected_modality`` / ``expected_image_size`` / ``expected_window`` are None when the run
    does not fix them; ``max_images`` caps the images per package."""

    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1)
    max_images: int | None = Field(None, ge=1)
    require_audit: bool = True
    accept_override: bool = True
    require_dp: bool = False
    max_epsilon: float | None = Field(None, gt=0)
    expected_modality: str | None = None
    expected_image_size: int | None = Field(None, ge=1)
    expected_window: tuple[float, float] | None = None


@dataclass
class PackageVerdict:
    """The aggregator's decision on one package: ``accepted`` when ``reasons`` is empty.

    ``override`` is ``"by: reason"`` when an audit override made the package acceptable;
    ``hq`` / ``lq`` hold the decoded float32 arrays (only for accepted packages), or, for a
    package streamed shard by shard (:class:`~medidd.federation.spool.PackageIntake`),
    ``spooled`` says where its arrays are kept on disk."""

    reasons: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    hq: npt.NDArray[np.float32] | None = None
    lq: npt.NDArray[np.float32] | None = None
    n_bytes: int = 0
    override: str | None = None
    spooled: SpooledPackage | None = None

    @property
    def accepted(self) -> bool:
        return not self.reasons and self.manifest is not None


def policy_problems(manifest: Manifest, policy: CollectionPolicy, *, task: str,
                    degradation_kind: str | None = None) -> tuple[list[str], str | None]:
    """Policy reasons to refuse ``manifest`` (``[]`` if none) and the override text, if any;
    each reason starts with the field it is about and names the config key that sets the rule.

    Example:
        >>> from medidd.package.manifest import example_manifest
        >>> problems_, override = policy_problems(example_manifest(), CollectionPolicy(),
        ...                                       task="denoise")
        >>> problems_[0].startswith("audit: no privacy audit recorded"), override
        (True, None)
    """
    out: list[str] = []
    override = None
    if policy.require_audit:
        gate = audit_gate(manifest, accept_override=policy.accept_override,
                          override_key=config_key("policy.accept_override"))
        if not gate.ok:
            out.append(f"audit: {gate.reason}")
        override = gate.override
    if policy.require_dp:
        dp = manifest.dp
        if dp is None or not dp.enabled:
            out.append("dp: the run requires differentially private distillation "
                       f"({config_key('policy.require_dp')}) but the package has none")
        elif policy.max_epsilon is not None and dp.epsilon is not None and \
                dp.epsilon > policy.max_epsilon:
            out.append(f"dp: epsilon {dp.epsilon:g} is above the run's limit "
                       f"{policy.max_epsilon:g} ({config_key('policy.max_epsilon')})")
    if manifest.task != task:
        out.append(f"task: the package is for '{manifest.task}' but this run trains '{task}' "
                   f"({config_key('task')})")
    if policy.expected_modality and manifest.modality != policy.expected_modality:
        out.append(f"modality: {manifest.modality} but the run expects "
                   f"{policy.expected_modality} ({config_key('policy.expected_modality')})")
    if policy.expected_image_size and manifest.image_size != policy.expected_image_size:
        out.append(f"image_size: {manifest.image_size} px but the run expects "
                   f"{policy.expected_image_size} px "
                   f"({config_key('policy.expected_image_size')})")
    if policy.expected_window and manifest.modality == "CT" and \
            tuple(manifest.window) != tuple(policy.expected_window):
        out.append(f"window: {list(manifest.window)} but the run uses "
                   f"{list(policy.expected_window)} (CT HU window, "
                   f"{config_key('policy.expected_window')})")
    if policy.max_images is not None and manifest.n_images > policy.max_images:
        out.append(f"n_images: {manifest.n_images} images, over the run's limit "
                   f"{policy.max_images} ({config_key('policy.max_images')})")
    kind = manifest.degradation.get("kind")
    if degradation_kind is not None and kind != degradation_kind:
        out.append(f"degradation: kind '{kind}' but the run uses '{degradation_kind}' "
                   f"({config_key('degradation')})")
    return out, override


def check_received_package(
    files: Mapping[str, bytes],
    policy: CollectionPolicy,
    *,
    task: str = "denoise",
    degradation_kind: str | None = None,
) -> PackageVerdict:
    """Validate a package received as ``{file name: bytes}`` and apply ``policy``.

    The size limit is checked first (nothing is decoded past it); then every check of
    :func:`~medidd.package.validate.check_contents`; then the policy (audit, DP, run
    consistency). All reasons are collected.

    Example: see the module docstring.
    """
    n_bytes = sum(len(b) for b in files.values())
    verdict = PackageVerdict(n_bytes=n_bytes)
    if n_bytes > policy.max_bytes:
        verdict.reasons.append(f"size: {n_bytes} bytes, over the limit of {policy.max_bytes} "
                               f"({config_key('policy.max_bytes')}); not decoded")
        return verdict
    checked = check_contents(files)
    verdict.reasons += checked.problems
    verdict.manifest = checked.manifest
    if checked.manifest is not None:
        found, verdict.override = policy_problems(
            checked.manifest, policy, task=task, degradation_kind=degradation_kind)
        verdict.reasons += found
    if verdict.reasons:
        logger.info("package refused: %d reasons", len(verdict.reasons))
        return verdict
    verdict.hq, verdict.lq = checked.arrays["hq"], checked.arrays["lq"]
    return verdict


def majority_degradation(manifests: list[Manifest]) -> dict[str, Any] | None:
    """The degradation spec most packages share (ties: the first seen); None for no package.

    Example:
        >>> from medidd.package.manifest import example_manifest
        >>> majority_degradation([example_manifest()])
        {'kind': 'ct_lowdose', 'dose': 0.25}
    """
    counts: dict[str, tuple[int, dict[str, Any]]] = {}
    for m in manifests:
        key = repr(sorted(m.degradation.items()))
        n, _ = counts.get(key, (0, dict(m.degradation)))
        counts[key] = (n + 1, dict(m.degradation))
    if not counts:
        return None
    return max(counts.values(), key=lambda item: item[0])[1]
