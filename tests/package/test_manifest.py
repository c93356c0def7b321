"""The manifest schema: PHI allow-list, JSON schema export, hashes, parse errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from medidd.package import DPInfo, Manifest, config_hash, manifest_problems, parse_manifest
from medidd.package.manifest import example_manifest


def _defs_forbid_extra(schema: dict[str, Any]) -> list[str]:
    models = {"Manifest": schema, **schema.get("$defs", {})}
    return [name for name, s in models.items() if s.get("additionalProperties") is not False]


def test_json_schema_is_closed_everywhere() -> None:
    schema = Manifest.model_json_schema()
    assert _defs_forbid_extra(schema) == []
    assert set(schema["$defs"]) >= {"PatientEntry", "DPInfo", "AuditInfo", "FileEntry"}
    assert schema["$defs"]["PatientEntry"]["properties"]["key"]["pattern"] == (
        "^p-[0-9a-f]{8,64}$")
    json.dumps(schema)  # exportable for the docs


def test_example_round_trips_through_json() -> None:
    m = example_manifest(method_config={"a": 1})
    m2, problems = parse_manifest(json.dumps(m.model_dump(mode="json")).encode())
    assert m2 == m and problems == ["manifest.json: method_config_hash: does not match sha256 "
                                    "of the canonical JSON of method_config; recompute it with "
                                    "medidd.package.config_hash"]


def test_config_hash_is_canonical() -> None:
    a = {"spg": {"lr": 0.01, "steps": 5}, "prior": "mean"}
    b = {"prior": "mean", "spg": {"steps": 5, "lr": 0.01}}
    assert config_hash(a) == config_hash(b) != config_hash({**a, "prior": "atlas"})


@pytest.mark.parametrize(("text", "expected"), [
    (b'{"a": 1, "a": 2}', "appears twice"),
    (b'{"format_version": NaN}', "NaN is not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"{}", "manifest.json: format_version: required field is missing"),
])
def test_parse_errors_name_the_file(text: bytes, expected: str) -> None:
    manifest, problems = parse_manifest(text)
    assert manifest is None and any(expected in p for p in problems), problems
    assert all(p.startswith("manifest.json:") for p in problems)


def test_every_patient_holds_ipc_images() -> None:
    m = example_manifest(ipc=3)
    assert next(p for p in manifest_problems(m) if "ipc is 3" in p).startswith(
        "manifest.json: patients[0].n_images")


def test_gap_and_duplicate_key_are_reported() -> None:
    m = example_manifest(patients=[
        {"key": "p-0123abcd", "n_images": 2, "start": 2, "stop": 4},
        {"key": "p-0123abcd", "n_images": 2, "start": 0, "stop": 2}])
    assert manifest_problems(m) == ["manifest.json: patients[1].key: the same patient key "
                                    "appears twice"]
    m = example_manifest(patients=[
        {"key": "p-0123abcd", "n_images": 2, "start": 0, "stop": 2},
        {"key": "p-4567cdef", "n_images": 2, "start": 3, "stop": 5}])
    problems = manifest_problems(m)
    assert any("patients[1].start" in p and "leaves images 2..2" in p for p in problems)


class _Case(BaseModel):
    changes: dict[str, Any]
    loc: tuple[Any, ...]


BAD = [
    _Case(changes={"dp": {"enabled": True, "epsilon": 4.0}}, loc=("dp",)),
    _Case(changes={"window": [100.0, -100.0]}, loc=("window",)),
    _Case(changes={"degradation": {"dose": 0.25}}, loc=("degradation",)),
    _Case(changes={"degradation": {"kind": "x", "nested": {"a": 1}}},
          loc=("degradation", "nested")),
    _Case(changes={"method_config": {"a": {"b": {"c": 1}}}}, loc=("method_config", "a")),
    _Case(changes={"audit": {"status": "passed", "summary": {"auc": "high"}}},
          loc=("audit", "summary", "auc")),
    _Case(changes={"software_version": "0.1.0 built on hospital-pc-17 by J. Doe"},
          loc=("software_version",)),
    _Case(changes={"seed": 1.5}, loc=("seed",)),
]


@pytest.mark.parametrize("case", BAD, ids=[str(c.loc) for c in BAD])
def test_ill_cases(case: _Case) -> None:
    with pytest.raises(ValidationError) as err:
        example_manifest(**case.changes)
    assert tuple(err.value.errors()[0]["loc"]) == case.loc


def test_dp_complete_when_enabled() -> None:
    dp = DPInfo(enabled=True, epsilon=4.0, delta=1e-5, noise_multiplier=1.1, max_grad_norm=1.0,
                steps=200, sample_rate=0.1, accountant="RDP", covers=["gradient_matching"],
                not_covered=["prior"])
    assert dp.accountant == "rdp"
    assert example_manifest(dp=dp.model_dump()).dp == dp
    assert DPInfo(enabled=False).epsilon is None
