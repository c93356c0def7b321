"""The model card of a federated run's trained model (:class:`medidd.model.ModelCard`).

``strategy: distill`` takes modality, window and image size from the accepted packages'
manifests (what the training images really were); ``strategy: fedavg`` from the run's
preprocessing settings, with the modality implied by the degradation spec (``None`` for
generic noise, which the nodes may have applied to either modality).

Example:
    >>> from medidd.federation.config import FederationConfig
    >>> cfg = FederationConfig.model_validate({"strategy": "fedavg"})
    >>> card = run_model_card(cfg, {"kind": "ct_lowdose", "dose": 0.25}, None)
    >>> card.modality, card.window, card.strategy
    ('CT', (-1000.0, 1000.0), 'fedavg')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medidd.federation.config import FederationConfig
from medidd.model import ModelCard, modality_of_degradation
from medidd.package.manifest import Manifest


def run_model_card(cfg: FederationConfig, spec: Mapping[str, Any],
                   manifest: Manifest | None) -> ModelCard:
    """The card for the model a run trained (``manifest``: one accepted package's, or None).

    Example:
        >>> from medidd.package.manifest import example_manifest
        >>> manifest = example_manifest().model_copy(update={"image_size": 64})
        >>> card = run_model_card(FederationConfig(), {"kind": "ct_lowdose"}, manifest)
        >>> card.modality, card.image_size, card.preprocess.size
        ('CT', 64, 64)
    """
    if manifest is not None:
        return ModelCard.describe(
            cfg.train.net, task=cfg.task, modality=manifest.modality, degradation=spec,
            preprocess=cfg.preprocess, window=(manifest.window[0], manifest.window[1]),
            image_size=manifest.image_size, strategy=cfg.strategy)
    return ModelCard.describe(cfg.train.net, task=cfg.task,
                              modality=modality_of_degradation(spec), degradation=spec,
                              preprocess=cfg.preprocess, strategy=cfg.strategy)
