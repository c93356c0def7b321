"""A ClientApp for the deployment tests: the honest node code, except that a node whose
config says ``evil="nan"`` tampers with its package *after* the node's own checks (a NaN in
``hq`` and a manifest re-hashed to match), as a compromised site would."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from hospital_node import client_app as honest
from medidd.federation import protocol as P
from medidd.federation.node import NodeSettings
from medidd.package._codec import decode_array, encode_array

app = ClientApp()


def _split(context: Context) -> tuple[NodeSettings, str | None]:
    config = dict(context.node_config)
    evil = config.pop("evil", None)
    return NodeSettings.from_node_config(config), None if evil is None else str(evil)


def _tamper(reply: Message) -> Message:
    arrays = reply.content.array_records[P.PACKAGE]
    meta = reply.content.config_records[P.META]
    hq = np.array(decode_array(arrays["hq.safetensors"].numpy().tobytes(), "hq", "safetensors"))
    hq[0, 0, 5, 5] = np.nan
    blob = encode_array("hq", hq, "safetensors")
    arrays["hq.safetensors"] = Array(np.frombuffer(blob, dtype=np.uint8).copy())
    manifest = json.loads(str(meta[P.MANIFEST_KEY]))
    manifest["files"]["hq.safetensors"].update(sha256=hashlib.sha256(blob).hexdigest(),
                                               bytes=len(blob))
    meta[P.MANIFEST_KEY] = json.dumps(manifest)
    return reply


@app.query("collect")
def collect(msg: Message, context: Context) -> Message:
    settings, evil = _split(context)
    reply = honest.collect(msg, settings)
    return _tamper(reply) if evil == "nan" and P.PACKAGE in reply.content.array_records \
        else reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return honest.evaluate(msg, _split(context)[0])
