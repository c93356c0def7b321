"""Packages streamed shard by shard: sharded (format 2) and old (format 1) packages served by
a node, taken in by the aggregator's intake with every check, kept on disk, and trained on
from disk with the same weights as from memory; the collect loop keeps at most
``max_in_flight`` requests waiting and names a node that does not answer."""

from __future__ import annotations

import doctest
import importlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict

from aggregator.collect import collect_packages, package_files
from hospital_node.client_app import build_client_app
from medidd.federation import CollectionPolicy, FederationConfig, NodeRefusal
from medidd.federation import protocol as P
from medidd.federation.node import NodeSettings, shard_to_serve
from medidd.federation.policy import check_received_package
from medidd.federation.report import RunLedger
from medidd.federation.spool import DiskImages, PackageIntake
from medidd.federation.union import train_on_union
from medidd.package import read_package, write_package
from medidd.train import TrainConfig
from tests.federation.conftest import SPEC, real_ct_slices

OLD = Path(__file__).resolve().parents[1] / "package" / "data" / "format_v1"
KEYS = [f"p-{i:08x}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def ct6(real_samples: Path) -> torch.Tensor:
    """12 real CT slices at 32 px: 6 patients x 2 (two real volumes)."""
    return torch.cat([real_ct_slices(real_samples / "ct" / "lung1.nrrd", 6),
                      real_ct_slices(real_samples / "ct" / "lung2.nrrd", 6)])


def _package(root: Path, hq: torch.Tensor, *, shard_bytes: int | None, dtype: str = "float16",
             status: str = "passed") -> Path:
    lq = hq + 0.05 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(0))
    n = hq.shape[0] // 2
    return write_package(root, hq, lq, task="denoise", modality="CT", degradation=dict(SPEC),
                         window=(-1000.0, 1000.0), patients=[(k, 2) for k in KEYS[:n]], ipc=2,
                         method="spg_gm", seed=0, method_config={"ipc": 2},
                         audit={"status": status}, dtype_on_disk=dtype, shard_bytes=shard_bytes)


def _take_all(settings: NodeSettings, intake: PackageIntake) -> int:
    """Serve every shard of the node's package into ``intake``; returns the shards sent."""
    index: int | None = 0
    sent = 0
    while index is not None:
        served = shard_to_serve(settings, index)
        index = intake.receive(index, served.files, served.manifest_bytes)
        sent += 1
    return sent


def test_a_sharded_float16_package_streams_into_the_spool_exactly(
    ct6: torch.Tensor, tmp_path: Path,
) -> None:
    pkg = _package(tmp_path / "pkg", ct6, shard_bytes=4 * 32 * 32 * 2)  # 2 patients a shard
    names = sorted(p.name for p in pkg.iterdir())
    assert names[:3] == ["hq-00000.safetensors", "hq-00001.safetensors", "hq-00002.safetensors"]
    whole = read_package(pkg)
    assert whole.manifest.format_version == 2 and len(whole.manifest.shards()) == 3
    assert [s.start for s in whole.manifest.shards()] == [0, 4, 8]  # whole patients
    intake = PackageIntake(tmp_path / "spool", CollectionPolicy())
    assert _take_all(NodeSettings(name="a", package=pkg), intake) == 3
    assert intake.verdict.accepted and intake.verdict.spooled is not None
    assert all(np.load(f).dtype == np.float16 for f in intake.verdict.spooled.hq)  # as shipped
    hq = DiskImages.of([intake.verdict.spooled], "hq")
    lq = DiskImages.of([intake.verdict.spooled], "lq")
    assert torch.equal(hq.read(list(range(12))), whole.hq)
    assert torch.equal(lq.read([11, 0, 5]), whole.lq[[11, 0, 5]])
    # float16 on disk and on the wire: half the bytes, within float16 rounding of the source
    assert whole.manifest.files["hq-00000.safetensors"].bytes < 4 * 32 * 32 * 4
    assert float((whole.hq - ct6).abs().max()) <= 2.5e-4


def test_an_old_format_1_package_is_read_served_and_taken_in(tmp_path: Path) -> None:
    old = read_package(OLD)  # written by medidd before format 2 existed; kept in the repo
    assert old.manifest.format_version == 1 and old.hq.shape == (4, 1, 32, 32)
    assert old.manifest.shards()[0].hq == "hq.safetensors"
    intake = PackageIntake(tmp_path / "spool", CollectionPolicy())
    assert _take_all(NodeSettings(name="a", package=OLD), intake) == 1
    assert intake.verdict.accepted, intake.verdict.reasons
    spooled = intake.verdict.spooled
    assert spooled is not None
    assert torch.equal(DiskImages.of([spooled], "hq").read(range(4)), old.hq)  # type: ignore[arg-type]


def test_an_unsharded_package_is_still_written_as_format_1(ct6: torch.Tensor,
                                                           tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg", ct6[:4], shard_bytes=1 << 20)
    assert json.loads((pkg / "manifest.json").read_text())["format_version"] == 1
    assert sorted(p.name for p in pkg.iterdir()) == ["hq.safetensors", "lq.safetensors",
                                                      "manifest.json"]


def test_a_tampered_shard_rejects_the_package_and_removes_what_was_kept(
    ct6: torch.Tensor, tmp_path: Path,
) -> None:
    pkg = _package(tmp_path / "pkg", ct6, shard_bytes=4 * 32 * 32 * 2)
    settings = NodeSettings(name="a", package=pkg)
    intake = PackageIntake(tmp_path / "spool", CollectionPolicy())
    for index in (0, 1):
        served = shard_to_serve(settings, index)
        intake.receive(index, served.files, served.manifest_bytes)
    served = shard_to_serve(settings, 2)
    raw = bytearray(served.files["hq-00002.safetensors"])
    raw[-1] ^= 0xFF
    assert intake.receive(2, {**served.files, "hq-00002.safetensors": bytes(raw)}) is None
    assert not intake.verdict.accepted
    assert any("hq-00002.safetensors: sha256" in r for r in intake.verdict.reasons)
    assert not (tmp_path / "spool").exists()
    # out of order, and a node that refuses a shard that does not exist
    other = PackageIntake(tmp_path / "spool2", CollectionPolicy())
    assert other.receive(1, shard_to_serve(settings, 1).files) is None
    assert "shard 1 arrived, but shard 0 was expected" in other.verdict.reasons[0]
    with pytest.raises(NodeRefusal, match="no shard 3"):
        shard_to_serve(settings, 3)


def test_size_and_policy_are_checked_from_the_manifest_before_any_array(
    ct6: torch.Tensor, tmp_path: Path,
) -> None:
    pkg = _package(tmp_path / "pkg", ct6, shard_bytes=4 * 32 * 32 * 2)
    served = shard_to_serve(NodeSettings(name="a", package=pkg), 0)
    small = PackageIntake(tmp_path / "s1", CollectionPolicy(max_bytes=10_000))
    assert small.receive(0, {}, served.manifest_bytes) is None  # no array was needed
    assert "over the limit of 10000" in small.verdict.reasons[0]
    assert not (tmp_path / "s1").exists()
    failed = _package(tmp_path / "failed", ct6[:4], shard_bytes=None, status="failed")
    with pytest.raises(NodeRefusal, match="audit status 'failed'"):
        shard_to_serve(NodeSettings(name="a", package=failed), 0)
    (pkg / "notes.txt").write_text("a note")
    with pytest.raises(NodeRefusal, match=r"notes\.txt: unexpected file"):
        shard_to_serve(NodeSettings(name="a", package=pkg), 1)


@pytest.mark.parametrize("redraw", [True, False])
def test_training_from_disk_gives_the_weights_of_training_in_memory(
    ct6: torch.Tensor, tmp_path: Path, redraw: bool,
) -> None:
    cfg = TrainConfig.model_validate({"net": {"name": "dncnn", "width": 4, "depth": 3},
                                      "steps": 12, "batch_size": 4, "patch_size": 16,
                                      "redraw_lq": redraw})
    memory, disk = [], []
    for i, (hq, shard) in enumerate([(ct6[:8], 4 * 32 * 32 * 2), (ct6[8:], None)]):
        pkg = _package(tmp_path / f"pkg{i}", hq, shard_bytes=shard)
        files = {p.name: p.read_bytes() for p in pkg.iterdir()}
        memory.append(check_received_package(files, CollectionPolicy()))
        intake = PackageIntake(tmp_path / f"spool{i}", CollectionPolicy())
        _take_all(NodeSettings(name=f"n{i}", package=pkg), intake)
        disk.append(intake.verdict)
    a = train_on_union(memory, cfg, SPEC)
    b = train_on_union(disk, cfg, SPEC)
    assert a.n_images == b.n_images == 12 and a.lq_source == b.lq_source
    assert a.result.losses == b.result.losses
    for x, y in zip(a.result.model.state_dict().values(),
                    b.result.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_the_node_serves_the_shard_the_aggregator_names(ct6: torch.Tensor, tmp_path: Path,
                                                        server_task: None) -> None:
    pkg = _package(tmp_path / "pkg", ct6, shard_bytes=4 * 32 * 32 * 2)
    node = {"name": "site-a", "package": str(pkg)}
    first = _call(P.COLLECT, node, RecordDict())  # an aggregator that names no shard: 0
    meta = first.content.config_records[P.META]
    assert meta[P.SHARD_INDEX] == 0 and meta[P.N_SHARDS] == 3 and P.MANIFEST_KEY in meta
    assert set(package_files(first.content)) == {"manifest.json", "hq-00000.safetensors",
                                                 "lq-00000.safetensors"}
    from aggregator.collect import _request

    second = _call(P.COLLECT, node, _request(7, 2).content)
    files = package_files(second.content)
    assert set(files) == {"hq-00002.safetensors", "lq-00002.safetensors"}  # no manifest again
    assert files["hq-00002.safetensors"] == (pkg / "hq-00002.safetensors").read_bytes()


@pytest.fixture()
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a running ServerApp has: a run (messages are created for it)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _call(message_type: str, node_config: dict[str, Any], content: RecordDict) -> Message:
    from tests.federation.test_apps import context, instruction

    return build_client_app()(instruction(message_type, content), context(node_config))


class FakeGrid:
    """push/pull over the real ClientApp, in this process; records the most requests that
    waited at once; nodes in ``silent`` never reply."""

    def __init__(self, nodes: dict[int, dict[str, Any]], silent: Iterable[int] = ()) -> None:
        self.nodes = nodes
        self.silent = set(silent)
        self.waiting: dict[str, Message] = {}
        self.most_waiting = 0
        self.app = build_client_app()

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        from tests.federation.test_apps import instruction

        ids = []
        for m in messages:
            delivered = instruction(m.metadata.message_type, m.content, m.metadata.dst_node_id)
            self.waiting[delivered.metadata.message_id] = delivered
            ids.append(delivered.metadata.message_id)
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        return ids

    def pull_messages(self, ids: Iterable[str]) -> list[Message]:
        from tests.federation.test_apps import context

        out = []
        for mid in list(ids):
            msg = self.waiting.get(mid)
            if msg is None or msg.metadata.dst_node_id in self.silent:
                continue
            del self.waiting[mid]
            out.append(self.app(msg, context(self.nodes[msg.metadata.dst_node_id])))
        return out


def test_collect_keeps_at_most_max_in_flight_requests_and_names_a_silent_node(
    ct6: torch.Tensor, tmp_path: Path, server_task: None,
) -> None:
    nodes = {}
    for n in range(1, 5):  # 4 nodes with 3-shard packages, one more that never answers
        pkg = _package(tmp_path / f"pkg{n}", ct6, shard_bytes=4 * 32 * 32 * 2)
        nodes[n] = {"name": f"site-{n}", "package": str(pkg)}
    nodes[5] = {"name": "site-5", "package": str(tmp_path / "pkg1")}
    cfg = FederationConfig.model_validate({
        "collect": {"max_in_flight": 2, "poll_s": 0.01}, "timeouts": {"collect_s": 2},
        "expected_nodes": [v["name"] for v in nodes.values()]})
    grid = FakeGrid(nodes, silent=[5])
    ledger = RunLedger("distill", "denoise", cfg.node_names())
    t0 = time.monotonic()
    verdicts = collect_packages(grid, list(nodes), cfg, ledger, tmp_path / "out")  # type: ignore[arg-type]
    assert grid.most_waiting <= 2
    assert sorted(verdicts) == [1, 2, 3, 4] and all(v.accepted for v in verdicts.values())
    assert ledger.node(5).missing_in == ["collect"]
    assert time.monotonic() - t0 < 60
    spooled = [v.spooled for v in verdicts.values()]
    assert all(s is not None and len(s.hq) == 3 for s in spooled)


@pytest.mark.parametrize("name", ["spool", "streamed", "node"])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"medidd.federation.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
