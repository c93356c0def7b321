"""The audit gate: one rule, one answer shape, for the node, the aggregator and the CLI."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import medidd.config
import medidd.package.gate
from medidd.package import Gate, audit_gate
from medidd.package.manifest import example_manifest

OVERRIDE = {"by": "dr-who", "reason": "pilot run, approved by the DPO"}
KEY = "config key 'policy.accept_override'"

#: (case, audit recorded in the manifest, accept_override, ok, override, words in the reason)
CASES: list[tuple[str, dict[str, Any] | None, bool, bool, str | None, tuple[str, ...]]] = [
    ("passed", {"status": "passed"}, False, True, None, ("audit passed",)),
    ("passed, overrides accepted", {"status": "passed"}, True, True, None, ("audit passed",)),
    ("failed", {"status": "failed"}, True, False, None,
     ("audit status 'failed'", "no operator override recorded")),
    ("not run", {"status": "not_run"}, True, False, None, ("audit status 'not_run'",)),
    ("no audit", None, True, False, None, ("no privacy audit recorded", "medidd-node audit")),
    ("override accepted", {"status": "failed", "override": OVERRIDE}, True, True,
     "dr-who: pilot run, approved by the DPO", ("override", "dr-who")),
    ("override refused", {"status": "failed", "override": OVERRIDE}, False, False, None,
     ("not accepted here", KEY)),
    ("failed, overrides off", {"status": "not_run"}, False, False, None, ("allow it", KEY)),
]


@pytest.mark.parametrize(("case", "audit", "accept", "ok", "override", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_the_gate_decides_and_says_why(case: str, audit: dict[str, Any] | None, accept: bool,
                                       ok: bool, override: str | None,
                                       words: tuple[str, ...]) -> None:
    gate = audit_gate(example_manifest(audit=audit), accept_override=accept, override_key=KEY)
    assert isinstance(gate, Gate)
    assert (gate.ok, gate.override) == (ok, override)
    assert all(w in gate.reason for w in words), gate.reason
    assert "\n" not in gate.reason  # one line, safe to send


def test_an_invalid_package_never_passes(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    gate = audit_gate(tmp_path, accept_override=True)
    assert not gate.ok and gate.override is None
    assert gate.reason.startswith("package invalid (")
    assert not audit_gate(tmp_path / "missing", accept_override=True).ok


def test_a_gate_is_immutable() -> None:
    gate = audit_gate(example_manifest(audit={"status": "passed"}), accept_override=True)
    with pytest.raises(AttributeError):
        gate.ok = False  # type: ignore[misc]


def test_importing_the_privacy_audit_does_not_import_the_federation() -> None:
    code = ("import sys, medidd.privacy.audit; "
            "print(sorted(m for m in sys.modules if m.startswith('medidd.federation')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    assert out.strip() == "[]"


def test_config_keys_are_mapped_to_options_per_scope() -> None:
    text = ("refused (node config key 'override-audit'); limit "
            f"{medidd.config.config_key('policy.max_bytes')}")
    node = medidd.config.with_flags(text, {"override-audit": "--override-audit-by WHO"},
                                    scope="node config")
    assert node == "refused (--override-audit-by WHO); limit config key 'policy.max_bytes'"
    run = medidd.config.with_flags(text, {}, fallback=lambda k: f"--set {k}=...")
    assert run == "refused (node config key 'override-audit'); limit --set policy.max_bytes=..."
    with pytest.raises(ValueError, match="scope"):
        medidd.config.config_key("x", "site config")


@pytest.mark.parametrize("module", [medidd.package.gate, medidd.config])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
