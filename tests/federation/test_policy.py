"""What the aggregator accepts: real packages, and packages a broken or malicious node sends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medidd.federation import CollectionPolicy, check_received_package, reconcile_degradation
from medidd.package import load_files
from medidd.package._codec import encode_array
from tests.federation.conftest import SPEC, MakePackage


def _files(path: Path) -> dict[str, bytes]:
    files, problems = load_files(path)
    assert files is not None and not problems
    return files


def _tamper(files: dict[str, bytes], array: np.ndarray, *, rehash: bool) -> dict[str, bytes]:
    """Replace hq.safetensors; with ``rehash`` the manifest is updated to match (a malicious
    node that knows the format), without it the manifest still lists the old sha256."""
    blob = encode_array("hq", array.astype(np.float32), "safetensors")
    out = dict(files, **{"hq.safetensors": blob})
    if rehash:
        manifest = json.loads(files["manifest.json"])
        entry = manifest["files"]["hq.safetensors"]
        entry.update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob),
                     shape=list(array.shape))
        out["manifest.json"] = json.dumps(manifest).encode()
    return out


def _hq(files: dict[str, bytes]) -> np.ndarray:
    from medidd.package._codec import decode_array

    return np.array(decode_array(files["hq.safetensors"], "hq", "safetensors"))


def test_a_valid_audited_package_is_accepted(make_package: MakePackage) -> None:
    verdict = check_received_package(_files(make_package()), CollectionPolicy())
    assert verdict.accepted, verdict.reasons
    assert verdict.hq is not None and verdict.hq.shape == (4, 1, 32, 32)
    assert verdict.override is None


def _nan(files: dict[str, bytes]) -> dict[str, bytes]:
    hq = _hq(files)
    hq[0, 0, 3, 3] = np.nan
    return _tamper(files, hq, rehash=True)


def _inf(files: dict[str, bytes]) -> dict[str, bytes]:
    hq = _hq(files)
    hq[1, 0, 0, 0] = np.inf
    return _tamper(files, hq, rehash=True)


def _shape(files: dict[str, bytes]) -> dict[str, bytes]:
    return _tamper(files, np.zeros((4, 2, 32, 32), np.float32), rehash=True)


def _range(files: dict[str, bytes]) -> dict[str, bytes]:
    return _tamper(files, _hq(files) * 40.0, rehash=True)


def _hash(files: dict[str, bytes]) -> dict[str, bytes]:
    hq = _hq(files)
    hq[0, 0, 0, 0] = 0.5 if hq[0, 0, 0, 0] != 0.5 else 0.25
    return _tamper(files, hq, rehash=False)


def _schema(files: dict[str, bytes]) -> dict[str, bytes]:
    manifest = json.loads(files["manifest.json"])
    manifest["PatientName"] = "DOE^JANE"
    return dict(files, **{"manifest.json": json.dumps(manifest).encode()})


def _dicom(files: dict[str, bytes]) -> dict[str, bytes]:
    return dict(files, **{"slice.dcm": b"\0" * 128 + b"DICM"})


BAD_PACKAGES = [
    ("nan", _nan, "non-finite"),
    ("inf", _inf, "non-finite"),
    ("wrong shape", _shape, "shape"),
    ("out of range", _range, "outside [0, 1]"),
    ("bad hash", _hash, "sha256"),
    ("schema / PHI field", _schema, "PatientName"),
    ("stray DICOM", _dicom, "DICOM"),
]


@pytest.mark.parametrize(("case", "tamper", "reason"), BAD_PACKAGES,
                         ids=[c[0] for c in BAD_PACKAGES])
def test_corrupt_or_malicious_packages_are_rejected_with_the_reason(
    make_package: MakePackage, case: str, tamper: Any, reason: str
) -> None:
    verdict = check_received_package(tamper(_files(make_package())), CollectionPolicy())
    assert not verdict.accepted
    assert any(reason in r for r in verdict.reasons), verdict.reasons
    assert verdict.hq is None  # nothing of a refused package is kept for training


def test_oversize_is_refused_before_decoding(make_package: MakePackage) -> None:
    files = _files(make_package())
    limit = sum(len(b) for b in files.values()) - 1
    verdict = check_received_package(files, CollectionPolicy(max_bytes=limit))
    assert not verdict.accepted and verdict.manifest is None
    assert verdict.reasons[0].startswith("size:")


@pytest.mark.parametrize("status", ["failed", "not_run", None])
def test_a_package_without_a_passing_audit_is_rejected(make_package: MakePackage,
                                                       status: str | None) -> None:
    verdict = check_received_package(_files(make_package(status)), CollectionPolicy())
    assert not verdict.accepted
    assert any(r.startswith("audit:") for r in verdict.reasons), verdict.reasons


def test_a_recorded_override_is_accepted_and_reported_unless_the_run_forbids_it(
    make_package: MakePackage,
) -> None:
    audit = {"status": "failed", "override": {"by": "dr-who", "reason": "site pilot, IRB 12"}}
    files = _files(make_package(None, audit=audit))
    verdict = check_received_package(files, CollectionPolicy())
    assert verdict.accepted and verdict.override == "dr-who: site pilot, IRB 12"
    strict = check_received_package(files, CollectionPolicy(accept_override=False))
    assert not strict.accepted and "accept_override" in strict.reasons[0]


def test_dp_and_run_consistency_are_enforced(make_package: MakePackage) -> None:
    files = _files(make_package())
    verdict = check_received_package(
        files, CollectionPolicy(require_dp=True, expected_image_size=64), task="sr")
    text = " | ".join(verdict.reasons)
    assert "dp:" in text and "image_size" in text and "task" in text


def test_packages_with_another_degradation_than_the_run_are_rejected(
    make_package: MakePackage,
) -> None:
    same = check_received_package(_files(make_package()), CollectionPolicy())
    other = check_received_package(
        _files(make_package(degradation={"kind": "gaussian", "noise_sigma": 0.2})),
        CollectionPolicy())
    spec = reconcile_degradation([same, other], SPEC)
    assert spec == SPEC and same.accepted and not other.accepted
    assert other.reasons[0].startswith("degradation:")
