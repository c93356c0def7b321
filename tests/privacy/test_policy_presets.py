"""The shipped audit policies load, and the memorising preset attacks what its control proves."""

from __future__ import annotations

from pathlib import Path

import pytest

from medidd.config import load_config
from medidd.privacy.policy import AuditPolicy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["audit.yaml", "demo_audit.yaml", "audit_memorising.yaml"])
def test_shipped_policies_load(name: str) -> None:
    policy = load_config(AuditPolicy, CONFIGS / name)
    assert policy.min_control_auc >= 0.5


def test_memorising_preset_trains_target_and_control_alike() -> None:
    policy = load_config(AuditPolicy, CONFIGS / "audit_memorising.yaml")
    assert policy.target == policy.control, "the package model must get the control's recipe"
    assert policy.control.net.name == "unet" and not policy.control.redraw_lq
    assert policy.control.patch_size is None  # whole slices: the unit that is memorised
    assert policy.gate_attacks == ["loss"] and policy.n_reference_models == 0
    # everything else stays the default policy's
    default = AuditPolicy()
    assert policy.max_mia_auc == default.max_mia_auc
    assert policy.near_copy_ncc == default.near_copy_ncc
