"""``query.collect``, streamed: every node's package, shard by shard, checked and kept on disk.

At most ``collect.max_in_flight`` requests (one shard of one node's package each) wait at
once: the ServerApp pushes them, pulls whatever replies have arrived every
``collect.poll_s`` seconds, hands each reply to the node's
:class:`~medidd.federation.spool.PackageIntake` (which checks the shard, writes it to disk and
says which shard to ask for next) and drops it. So the SuperLink and the ServerApp hold at
most ``max_in_flight`` shards, however many sites and patients there are. A request without a
reply after ``timeouts.collect_s`` marks its node missing (and rejects a package it had begun
to send); an error reply too; a refusal is recorded with its reason.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from aggregator.wire import _record_received, content_bytes, refusal
from medidd.federation import protocol as P
from medidd.federation.config import FederationConfig
from medidd.federation.policy import PackageVerdict
from medidd.federation.report import RunLedger
from medidd.federation.spool import PackageIntake

logger = logging.getLogger(__name__)


def spool_dir(cfg: FederationConfig, out: Path) -> Path:
    """Where the received shards are kept: ``collect.spool_dir`` or ``<out>/.spool``."""
    return Path(cfg.collect.spool_dir) if cfg.collect.spool_dir is not None else out / ".spool"


def package_files(content: RecordDict) -> dict[str, bytes]:
    """A ``query.collect`` reply's files as ``{file name: bytes}`` (the manifest included when
    the reply carries it)."""
    files: dict[str, bytes] = {}
    arrays = content.array_records.get(P.PACKAGE)
    if arrays is not None:
        for name, arr in arrays.items():
            files[name] = arr.numpy().tobytes()
    meta = content.config_records.get(P.META)
    text = meta.get(P.MANIFEST_KEY) if meta is not None else None
    if isinstance(text, str):
        files[P.MANIFEST_KEY] = text.encode("utf-8")
    return files


def _request(node_id: int, index: int) -> Message:
    content = RecordDict({P.SHARD: ConfigRecord({P.SHARD_INDEX: index})})
    return Message(content, dst_node_id=node_id, message_type=P.COLLECT, group_id="collect")


def collect_packages(grid: Grid, nodes: list[int], cfg: FederationConfig, ledger: RunLedger,
                     out: Path) -> dict[int, PackageVerdict]:
    """Every node's package, streamed into the spool; a verdict per node that sent one
    (accepted packages carry ``spooled``)."""
    folder = spool_dir(cfg, out)
    record_to = out / "received" if cfg.record_received else None
    kind = cfg.degradation.get("kind") if cfg.degradation else None
    intakes = {n: PackageIntake(folder / f"node-{n}", cfg.policy, task=cfg.task,
                                degradation_kind=kind) for n in nodes}
    todo: deque[tuple[int, int]] = deque((n, 0) for n in nodes)
    waiting: dict[str, tuple[int, int, float]] = {}  # message id -> node, shard, deadline
    sent: set[int] = set()  # nodes that sent (part of) a package
    logger.info("collect: asking %d nodes for their packages, %d requests at a time",
                len(nodes), cfg.collect.max_in_flight)
    while todo or waiting:
        batch: list[tuple[int, int, Message]] = []
        while todo and len(waiting) + len(batch) < cfg.collect.max_in_flight:
            node_id, index = todo.popleft()
            msg = _request(node_id, index)
            ledger.add_bytes(node_id, down=content_bytes(msg.content))
            batch.append((node_id, index, msg))
        if batch:
            ids = list(grid.push_messages([m for _, _, m in batch]))
            deadline = time.monotonic() + cfg.timeouts.collect_s
            for (node_id, index, _), mid in zip(batch, ids, strict=True):
                if mid:
                    waiting[mid] = (node_id, index, deadline)
                else:
                    _missing(ledger, intakes[node_id], node_id, index, "could not be sent")
        replies = list(grid.pull_messages(list(waiting))) if waiting else []
        for reply in replies:
            found = waiting.pop(reply.metadata.reply_to_message_id, None)
            if found is None:
                continue
            node_id, index, _ = found
            if _take(reply, node_id, index, intakes[node_id], ledger, record_to):
                sent.add(node_id)
            nxt = intakes[node_id].next_shard
            if node_id in sent and nxt is not None:
                todo.append((node_id, nxt))
        now = time.monotonic()
        for mid, (node_id, index, deadline) in list(waiting.items()):
            if now >= deadline:
                del waiting[mid]
                _missing(ledger, intakes[node_id], node_id, index,
                         f"no reply within {cfg.timeouts.collect_s:.0f} s")
        if not replies and waiting:
            time.sleep(cfg.collect.poll_s)
    return {n: intakes[n].verdict for n in nodes if n in sent}


def _missing(ledger: RunLedger, intake: PackageIntake, node_id: int, index: int,
             why: str) -> None:
    ledger.mark_missing(node_id, "collect")
    logger.warning("collect: node %s, shard %d: %s", node_id, index, why)
    if index > 0:
        intake.reject(f"collect: shard {index} {why}; the package is incomplete")


def _take(reply: Message, node_id: int, index: int, intake: PackageIntake, ledger: RunLedger,
          record_to: Path | None) -> bool:
    """Hand one reply to the node's intake; True when it carried (part of) a package."""
    if reply.has_error() or not reply.has_content():
        err = reply.error if reply.has_error() else None
        _missing(ledger, intake, node_id, index,
                 f"error reply ({getattr(err, 'reason', 'no content')})")
        return index > 0
    ledger.add_bytes(node_id, up=content_bytes(reply.content))
    meta = reply.content.config_records.get(P.META)
    name = meta.get(P.NODE_NAME) if meta is not None else None
    if isinstance(name, str):
        ledger.seen(node_id, name)
    if record_to is not None:
        round_name = "collect" if index == 0 else f"collect-shard{index}"
        _record_received(record_to, round_name, node_id, reply.content)
    reason = refusal(reply)
    if reason is not None:
        ledger.set_status(node_id, "refused", [reason])
        intake.reject(f"refused: {reason}")
        return index > 0
    files = package_files(reply.content)
    manifest = files.pop(P.MANIFEST_KEY, None)
    intake.receive(index, files, manifest)
    return True
