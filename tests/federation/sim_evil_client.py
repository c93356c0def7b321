"""A ClientApp for the simulation tests: the honest simulated node, except that partition 2
tampers with its package after the node's own checks (as a compromised site would). The
simulation runtime imports it as ``tests.federation.sim_evil_client:app``."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from hospital_node import client_app as honest
from tests.deployment.evil_client import _tamper

app = ClientApp()


@app.query("collect")
def collect(msg: Message, context: Context) -> Message:
    reply = honest.collect(msg, honest.simulated_settings(context))
    return _tamper(reply) if int(context.node_config["partition-id"]) == 2 else reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return honest.evaluate(msg, honest.simulated_settings(context))
