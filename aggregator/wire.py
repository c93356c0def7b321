"""Send one round of messages to the nodes and collect the replies, robustly.

:func:`exchange` counts the payload bytes in each direction per node, marks a node that does
not reply in time (or replies with an error) as missing for that round, and, when asked,
keeps a copy of every payload the server received (``received/`` in the report folder: one
``.npy`` per array and one JSON per config/metric record) for a privacy review of what crossed
the wire.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from medidd.atomic import atomic_write_bytes, atomic_write_text
from medidd.federation import protocol as P
from medidd.federation.report import RunLedger

logger = logging.getLogger(__name__)


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message's records (arrays, configs, metrics)."""
    return sum(int(rec.count_bytes()) for rec in content.values())


def wait_for_nodes(grid: Grid, want: int, timeout_s: float, poll_s: float = 1.0) -> list[int]:
    """Node ids online once ``want`` are connected, or whatever is there after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() >= deadline:
            return nodes
        time.sleep(poll_s)


def _record_received(folder: Path, round_name: str, node_id: int, content: RecordDict) -> None:
    base = folder / f"{round_name}-{node_id}"
    for key, rec in content.items():
        if isinstance(rec, ArrayRecord):
            for name, arr in rec.items():
                buf = _npy_bytes(arr.numpy())
                atomic_write_bytes(base / key / f"{name}.npy", buf)
        elif isinstance(rec, ConfigRecord | MetricRecord):
            data = {k: (v if not isinstance(v, bytes) else f"<{len(v)} bytes>")
                    for k, v in rec.items()}
            atomic_write_text(base / f"{key}.json", json.dumps(data, default=str, indent=1))


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def exchange(
    grid: Grid,
    ledger: RunLedger,
    nodes: Iterable[int],
    message_type: str,
    content_for: Callable[[int], RecordDict],
    *,
    timeout_s: float,
    round_name: str,
    record_to: Path | None = None,
) -> dict[int, Message]:
    """One round: a message to every node, replies by node id (missing ones are left out and
    marked in the ledger; error replies too)."""
    messages = []
    for node_id in nodes:
        content = content_for(node_id)
        ledger.add_bytes(node_id, down=content_bytes(content))
        messages.append(Message(content, dst_node_id=node_id, message_type=message_type,
                                group_id=round_name))
    sent = {m.metadata.dst_node_id for m in messages}
    logger.info("%s: sending %s to %d nodes", round_name, message_type, len(messages))
    replies = grid.send_and_receive(messages, timeout=timeout_s)
    out: dict[int, Message] = {}
    for reply in replies:
        node_id = reply.metadata.src_node_id
        if reply.has_error() or not reply.has_content():
            err = reply.error if reply.has_error() else None
            logger.warning("%s: node %s replied with an error (%s)", round_name, node_id,
                           getattr(err, "reason", "no content"))
            continue
        ledger.add_bytes(node_id, up=content_bytes(reply.content))
        if P.META in reply.content.config_records:
            name = reply.content.config_records[P.META].get(P.NODE_NAME)
            if isinstance(name, str):
                ledger.seen(node_id, name)
        if record_to is not None:
            _record_received(record_to, round_name, node_id, reply.content)
        out[node_id] = reply
    for node_id in sorted(sent - set(out)):
        ledger.mark_missing(node_id, round_name)
        logger.warning("%s: no reply from node %s within %.0f s", round_name, node_id,
                       timeout_s)
    return out


def refusal(reply: Message) -> str | None:
    """The node's refusal reason, if its reply is one."""
    meta = reply.content.config_records.get(P.META)
    if meta is None:
        return None
    reason = meta.get(P.REFUSED)
    return str(reason) if reason is not None else None
