"""The ClientApp and the ServerApp's decoding, called with real Flower ``Message`` objects.

The node side runs on the real sample volumes (ingestion + preprocessing + scoring); the
server side decodes the reply exactly as the ServerApp does and validates it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from aggregator.strategies import package_files
from aggregator.wire import refusal
from hospital_node.client_app import build_client_app
from medidd.federation import CollectionPolicy, check_received_package, record_audit_override
from medidd.federation import protocol as P
from medidd.nets import NetConfig
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.train import TrainConfig
from tests.federation.conftest import SPEC, MakePackage

NET = NetConfig(name="dncnn", width=4, depth=3)


def instruction(message_type: str, content: RecordDict | None = None, node_id: int = 7
                ) -> Message:
    """A message as the SuperLink delivers it to a node (metadata set by the link)."""
    meta = Metadata(run_id=1, message_id=f"m-{time.monotonic_ns()}", src_node_id=0,
                    dst_node_id=node_id, reply_to_message_id="", group_id="test",
                    created_at=time.time(), ttl=600.0, message_type=message_type)
    return Message(content=content or RecordDict(), metadata=meta)


def context(node_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def call(message_type: str, node_config: dict[str, Any], content: RecordDict | None = None
         ) -> Message:
    return build_client_app()(instruction(message_type, content), context(node_config))


def test_collect_sends_the_package_files_and_the_server_accepts_them(
    make_package: MakePackage,
) -> None:
    pkg = make_package()
    reply = call(P.COLLECT, {"name": "site-a", "package": str(pkg)})
    assert refusal(reply) is None
    files = package_files(reply.content)
    assert set(files) == {"manifest.json", "hq.safetensors", "lq.safetensors"}
    assert files["hq.safetensors"] == (pkg / "hq.safetensors").read_bytes()  # byte for byte
    verdict = check_received_package(files, CollectionPolicy())
    assert verdict.accepted, verdict.reasons


def test_a_node_refuses_to_serve_a_failed_audit_unless_overridden_and_recorded(
    make_package: MakePackage,
) -> None:
    pkg = make_package("failed")
    reply = call(P.COLLECT, {"name": "site-a", "package": str(pkg)})
    reason = refusal(reply)
    assert reason is not None and "audit status 'failed'" in reason
    assert "node config key 'override-audit'" in reason  # the setting that allows overrides
    assert P.PACKAGE not in reply.content.array_records  # nothing of the package left

    allowed = {"name": "site-a", "package": str(pkg), "override-audit": True}
    assert "no operator override recorded" in (refusal(call(P.COLLECT, allowed)) or "")
    record_audit_override(pkg, by="dr-who", reason="pilot run, approved by the DPO")
    reply = call(P.COLLECT, allowed)
    assert refusal(reply) is None
    verdict = check_received_package(package_files(reply.content), CollectionPolicy())
    assert verdict.accepted and verdict.override == "dr-who: pilot run, approved by the DPO"


def test_node_settings_come_from_the_node_config_only() -> None:
    with pytest.raises(Exception, match="packge"):
        call(P.COLLECT, {"name": "a", "packge": "/x"})


PREPROCESS = PreprocessConfig(size=32, max_slices_per_volume=6)


def _record(settings: P.RoundSettings) -> ConfigRecord:
    return ConfigRecord({P.SETTINGS_JSON: settings.model_dump_json()})


def _settings() -> ConfigRecord:
    return _record(P.EvaluateSettings(net=NET, degradation=SPEC, preprocess=PREPROCESS, seed=3,
                                      batch_size=4, max_slices=6))


def _weights() -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(NET.build().state_dict())


def test_evaluate_returns_only_aggregate_metrics_of_held_out_real_patients(
    patients_dirs: dict[str, Path], tmp_path: Path,
) -> None:
    node = {"name": "site-b", "holdout": str(patients_dirs["b"]),
            "salt-file": str(tmp_path / "salt")}
    reply = call(P.EVALUATE, node, RecordDict({P.MODEL: _weights(), P.SETTINGS: _settings()}))
    assert refusal(reply) is None, refusal(reply)
    assert not reply.content.array_records  # no image, no weights back
    metrics = dict(reply.content.metric_records[P.METRICS])
    assert set(metrics) <= set(P.EVAL_METRICS)
    assert metrics["n_slices"] == 6 and metrics["n_patients"] == 1 and metrics["held_out"] == 1
    assert 10 < metrics["psnr_lq"] < 40 and 0 < metrics["ssim"] <= 1
    assert not (tmp_path / "reports").exists()  # no package, no report-dir: no report


def test_evaluate_writes_the_site_local_report_and_sends_none_of_it(
    patients_dirs: dict[str, Path], tmp_path: Path,
) -> None:
    node = {"name": "site-b", "holdout": str(patients_dirs["b"]),
            "salt-file": str(tmp_path / "salt"), "report-dir": str(tmp_path / "reports")}
    reply = call(P.EVALUATE, node, RecordDict({P.MODEL: _weights(), P.SETTINGS: _settings()}))
    assert refusal(reply) is None, refusal(reply)
    page = (tmp_path / "reports" / "run-1" / "node-report.html").read_text()  # Flower run 1
    assert "keep it at the site" in page and "held-out slice 0" not in page  # in the image
    assert page.count("data:image/png;base64,") == 1
    sent = dict(reply.content.metric_records[P.METRICS])
    assert "no package" in page and f"{sent['psnr']:.4g}" in page  # the scores it sent
    assert not reply.content.array_records and set(sent) <= set(P.EVAL_METRICS)


def test_fedavg_train_returns_weights_and_the_number_of_examples(
    patients_dirs: dict[str, Path], tmp_path: Path,
) -> None:
    node = {"name": "site-b", "patients": str(patients_dirs["b"]),
            "salt-file": str(tmp_path / "salt")}
    train = TrainConfig(net=NET, steps=2, batch_size=2, patch_size=16)
    settings = P.TrainSettings(train=train, degradation=SPEC, preprocess=PREPROCESS, seed=3,
                               local_steps=2)
    content = RecordDict({P.MODEL: _weights(), P.SETTINGS: _record(settings)})
    reply = call(P.TRAIN, node, content)
    assert refusal(reply) is None, refusal(reply)
    new = reply.content.array_records[P.MODEL].to_torch_state_dict()
    old = _weights().to_torch_state_dict()
    assert set(new) == set(old) and any(not torch.equal(new[k], old[k]) for k in old)
    assert reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES] == 6


def test_a_node_without_patients_refuses_evaluate_with_a_reason() -> None:
    reply = call(P.EVALUATE, {"name": "empty"},
                 RecordDict({P.MODEL: _weights(), P.SETTINGS: _settings()}))
    assert "no patients configured" in (refusal(reply) or "")
