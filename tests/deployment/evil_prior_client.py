"""The prior round's ClientApp for the deployment tests: the honest node code, except that a
node whose config says

- ``evil="drop"`` dies (its ClientApp process exits) when asked for its masked sums, after it
  has shared its keys: a node lost mid-round;
- ``evil="shape"`` sends sums of a wrong shape through SecAgg+ (masked, so only the server's
  screening of the masked vector can see it);
- ``evil="nan"`` has a NaN in its sums, which the node's own check refuses, with the reason.
"""

from __future__ import annotations

import os

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from hospital_node import prior_app as honest
from medidd.federation.node import NodeSettings

app = ClientApp()


def _split(context: Context) -> tuple[NodeSettings, str | None]:
    config = dict(context.node_config)
    evil = config.pop("evil", None)
    return NodeSettings.from_node_config(config), None if evil is None else str(evil)


@app.train(mods=[secaggplus_mod])
def train(msg: Message, context: Context) -> Message:
    settings, evil = _split(context)
    if evil == "drop":
        os._exit(17)  # the node is gone: no reply, no key shares for the unmasking
    if evil in ("shape", "nan"):
        ins = honest.compat.recorddict_to_fitins(msg.content, keep_input=True)
        rs = honest.P.parse_settings(honest.P.PriorSettings, ins.config.get("json"))
        arrays, empty = honest.contribution_arrays(settings, rs)
        if evil == "shape":
            arrays[0] = np.zeros((arrays[0].shape[0], 3, 3))
            return honest.fit_reply(msg, settings.name, arrays, empty)
        arrays[0][0, 0, 0] = np.nan
        problems = honest.contribution_problems(arrays, rs.prior, bound=rs.clipping_range)
        raise honest.ContributionRefused("contribution refused by the node: "
                                         + "; ".join(problems))
    assert RECORD_KEY_CONFIGS in msg.content.config_records
    return honest.contribute(msg, settings)


@app.query("prior_audit")
def prior_audit(msg: Message, context: Context) -> Message:
    return honest.audit_prior(msg, _split(context)[0])
