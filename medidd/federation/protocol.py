"""Names of the messages and records that cross the wire between aggregator and nodes.

Only these travel (Flower ``Message`` types and ``RecordDict`` keys); the apps translate them
to library calls. What a node sends is, by construction, one of:

- ``query.collect`` reply: the package files (``PACKAGE``: one uint8 array per file, the bytes
  of ``hq.*`` / ``lq.*`` exactly as written at the site, so the aggregator checks the
  manifest's sha256 end to end) and ``META``: ``manifest.json`` text and the node's name;
- ``evaluate`` reply: ``METRICS``, aggregate scores over the node's held-out slices only;
- ``train`` reply (FedAvg baseline): ``MODEL`` weights and ``METRICS`` ``num-examples``;
- ``query.audit`` reply: ``METRICS``, aggregates of a membership attack on the trained model
  with the node's own members / non-members (:data:`AUDIT_METRICS` only);
- a refusal: ``META`` with ``refused`` (one line, no patient data).

Example:
    >>> COLLECT, EVALUATE, TRAIN, AUDIT
    ('query.collect', 'evaluate', 'train', 'query.audit')
"""

from __future__ import annotations

#: Message types (Flower "<category>.<action>"; no action = the default one).
COLLECT = "query.collect"
EVALUATE = "evaluate"
TRAIN = "train"
AUDIT = "query.audit"

#: RecordDict keys.
PACKAGE = "package"  # ArrayRecord: file name -> uint8 bytes of that file
META = "meta"  # ConfigRecord: manifest.json text, node name, refusal reason
MODEL = "model"  # ArrayRecord: state dict of the enhancement net
SETTINGS = "settings"  # ConfigRecord: JSON of the round's settings (net, degradation, ...)
METRICS = "metrics"  # MetricRecord: aggregate numbers only

#: ConfigRecord / MetricRecord keys.
MANIFEST_KEY = "manifest.json"
NODE_NAME = "node-name"
REFUSED = "refused"
SETTINGS_JSON = "json"
NUM_EXAMPLES = "num-examples"

#: The only metric names a node may report after ``evaluate`` (aggregates, no per-slice data).
EVAL_METRICS: tuple[str, ...] = (
    "psnr", "ssim", "psnr_lq", "ssim_lq", "n_slices", "n_patients", "held_out",
)

#: The only metric names a node may report after ``query.audit``: the loss attack's AUC and
#: its bootstrap interval, TPR at 1% / 0.1% FPR, the FPR floor (1 / non-member slices) and the
#: slice and patient counts of each group.
AUDIT_METRICS: tuple[str, ...] = (
    "auc", "auc_low", "auc_high", "tpr_at_1fpr", "tpr_at_0_1fpr", "fpr_floor",
    "n_members", "n_nonmembers", "n_member_patients", "n_nonmember_patients",
)
