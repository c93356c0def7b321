"""A trained enhancement model on disk: ``model.safetensors`` plus ``metadata.json`` beside it.

The metadata is a MONAI-bundle-like JSON (:class:`ModelCard`): which network and its
parameters (:class:`~medidd.nets.NetConfig`), the task and modality, the intensity window the
model expects (HU for CT), the degradation it was trained to undo, the preprocessing that made
its training slices (image size, crop), the software versions and the sha256 of the weights.
It holds everything :mod:`medidd.enhance` needs to apply the model to a new scan, and nothing
about any patient.

:func:`save_model` writes both files atomically; :func:`load_model` checks them (the weights'
hash, the card's schema, that the network builds and takes the weights exactly) and refuses a
model trained for another task or modality with a :class:`ModelError` that says what to do.

Example:
    >>> import tempfile, pathlib
    >>> from medidd.nets import NetConfig
    >>> net = NetConfig(name="dncnn", width=4, depth=2)
    >>> card = ModelCard.describe(net, task="denoise", modality="CT",
    ...                           degradation={"kind": "ct_lowdose", "dose": 0.25})
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> path = save_model(net.build().state_dict(), card, d)
    >>> sorted(p.name for p in d.iterdir())
    ['metadata.json', 'model.safetensors']
    >>> model, loaded = load_model(path, task="denoise", modality="CT")
    >>> loaded.network.name, loaded.window
    ('dncnn', (-1000.0, 1000.0))
    >>> load_model(path, modality="MR")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medidd.model.ModelError: ... was trained on CT, not MR: ...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

import medidd
from medidd.atomic import atomic_write_bytes, atomic_write_text
from medidd.config import StrictModel
from medidd.lookup import look_up_option
from medidd.nets import NetConfig
from medidd.preprocess.pipeline import PreprocessConfig

MODEL_FILE = "model.safetensors"
CARD_FILE = "metadata.json"
FORMAT: Literal["medidd-model/1"] = "medidd-model/1"
TASKS: tuple[str, ...] = ("denoise", "sr")
MODALITIES: tuple[str, ...] = ("CT", "MR")

#: Degradation kinds that only exist for one modality (the others, gaussian and rician noise,
#: fit both).
_KIND_MODALITY = {"ct_lowdose": "CT", "ct_sr": "CT", "kspace_sr": "MR"}


class ModelError(ValueError):
    """A model file that cannot be applied here; the message names the file and the fix."""


def modality_of_degradation(spec: Mapping[str, Any]) -> str | None:
    """The modality a degradation spec implies (``None`` for generic noise).

    Example:
        >>> modality_of_degradation({"kind": "kspace_sr", "scale": 2})
        'MR'
        >>> modality_of_degradation({"kind": "gaussian"}) is None
        True
    """
    return _KIND_MODALITY.get(str(spec.get("kind")))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``.

    Example:
        >>> sha256_bytes(b"")[:12]
        'e3b0c44298fc'
    """
    return hashlib.sha256(data).hexdigest()


class ModelCard(StrictModel):
    """What applying a trained model needs, MONAI-bundle style (``metadata.json``).

    Attributes:
        format: always ``"medidd-model/1"``.
        task: ``denoise`` or ``sr``.
        modality: ``CT`` or ``MR``; ``None`` when the run never learnt it (FedAvg with generic
            noise): the model is then applied to whatever modality the user asks for.
        network: the network and its size (:class:`~medidd.nets.NetConfig`).
        window: (low, high) native intensities mapped to [0, 1]: HU for CT; ``None`` for MR,
            whose window is taken per volume from ``preprocess.mr_percentiles``.
        preprocess: how training slices were made (``size`` px, crop margin, body threshold).
        degradation: the degradation spec the model was trained to undo.
        image_size: side of the training slices in pixels (``preprocess.size``).
        strategy: how it was trained (``distill``, ``fedavg`` or ``None``).
        software_version / pytorch_version: versions that wrote the file.
        weights_sha256: SHA-256 of ``model.safetensors``.
        network_data_format: MONAI's description of the input and output tensors.
        description: one line for people.
    """

    format: Literal["medidd-model/1"] = FORMAT
    task: Literal["denoise", "sr"]
    modality: Literal["CT", "MR"] | None
    network: NetConfig
    window: tuple[float, float] | None
    preprocess: PreprocessConfig
    degradation: dict[str, Any]
    image_size: int = Field(ge=16, le=1024)
    strategy: str | None = None
    software_version: str = medidd.__version__
    pytorch_version: str = torch.__version__
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    network_data_format: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, value: Any) -> Any:
        return look_up_option(value, TASKS, what="task") if isinstance(value, str) else value

    @field_validator("modality", mode="before")
    @classmethod
    def _modality(cls, value: Any) -> Any:
        if isinstance(value, str):
            return look_up_option(value.upper(), MODALITIES, what="modality")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.image_size != self.preprocess.size:
            raise ValueError(f"image_size {self.image_size} differs from preprocess.size "
                             f"{self.preprocess.size}")
        if self.modality == "CT" and self.window is None:
            raise ValueError("a CT model needs its HU window")
        if not isinstance(self.degradation.get("kind"), str):
            raise ValueError("degradation needs a 'kind', e.g. 'ct_lowdose'")
        return self

    @classmethod
    def describe(cls, network: NetConfig, *, task: str, modality: str | None,
                 degradation: Mapping[str, Any], preprocess: PreprocessConfig | None = None,
                 window: tuple[float, float] | None = None, image_size: int | None = None,
                 strategy: str | None = None) -> ModelCard:
        """A card for a freshly trained model (weights hash filled in by :func:`save_model`).

        ``window`` and ``image_size`` (from the packages' manifests) override those of
        ``preprocess`` (the run's); a CT window defaults to ``preprocess.ct_window``.

        Example:
            >>> c = ModelCard.describe(NetConfig(), task="sr", modality="MR",
            ...                        degradation={"kind": "kspace_sr", "scale": 2})
            >>> c.window is None, c.image_size, c.network_data_format["inputs"]["image"]["modality"]
            (True, 128, 'MR')
        """
        pre = preprocess or PreprocessConfig()
        updates: dict[str, Any] = {}
        if image_size is not None:
            updates["size"] = int(image_size)
        if window is not None and modality == "CT":
            updates["ct_window"] = (float(window[0]), float(window[1]))
        pre = pre.model_copy(update=updates) if updates else pre
        win = pre.ct_window if modality == "CT" else None
        kind = str(degradation.get("kind"))
        data_format = {
            "inputs": {"image": {
                "type": "image", "modality": modality or "CT or MR", "num_channels": 1,
                "spatial_shape": [pre.size, pre.size], "dtype": "float32",
                "value_range": [0, 1], "is_patch_data": False,
                "format": "HU window" if modality == "CT" else "percentile-clipped",
                "channel_def": {"0": f"{task} input ({kind})"}}},
            "outputs": {"pred": {
                "type": "image", "num_channels": 1, "spatial_shape": [pre.size, pre.size],
                "dtype": "float32", "value_range": [0, 1], "channel_def": {"0": "enhanced"}}},
        }
        return cls(task=task, modality=modality, network=network, window=win, preprocess=pre,
                   degradation=dict(degradation), image_size=pre.size, strategy=strategy,
                   network_data_format=data_format,
                   description=f"MediDD {task} model ({network.name}) for {modality or 'any'} "
                               f"trained on {kind}")

    def to_json(self) -> str:
        """The card as written to ``metadata.json`` (sorted keys)."""
        data = self.model_dump(mode="json")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def save_model(state: Mapping[str, torch.Tensor], card: ModelCard, folder: Path) -> Path:
    """Write ``model.safetensors`` and ``metadata.json`` into ``folder`` (each atomically).

    The weights are written first and the card, which holds their sha256, last: a card never
    describes weights that are not there. Returns the weights' path.
    """
    from safetensors.torch import save

    folder = Path(folder)
    blob = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    atomic_write_bytes(folder / MODEL_FILE, blob)
    final = card.model_copy(update={"weights_sha256": sha256_bytes(blob)})
    atomic_write_text(folder / CARD_FILE, final.to_json())
    return folder / MODEL_FILE


def _paths(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    weights = path / MODEL_FILE if path.is_dir() else path
    return weights, weights.with_name(CARD_FILE)


def read_card(path: Path) -> ModelCard:
    """The :class:`ModelCard` beside ``path`` (the weights file or its folder), validated.

    Raises:
        ModelError: no ``metadata.json``, not JSON, or a field that does not validate.
    """
    weights, card_path = _paths(path)
    if not card_path.is_file():
        raise ModelError(f"{weights}: no {CARD_FILE} beside it, so MediDD does not know the "
                         "network, window and task it was trained for; use the model folder "
                         "the aggregator wrote (model.safetensors + metadata.json)")
    try:
        return ModelCard.model_validate_json(card_path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = ".".join(map(str, first["loc"])) if first else "encoding"
        what = first["msg"] if first else str(exc)
        raise ModelError(f"{card_path}: not a MediDD model card ({where}: {what}); "
                         "it is damaged or from another tool") from None


def load_model(path: Path, *, task: str | None = None, modality: str | None = None,
               map_location: str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a saved model and its card, checking everything before returning.

    Args:
        path: ``model.safetensors`` or the folder holding it.
        task: refuse a model trained for another task (``None``: any).
        modality: refuse a model trained for another modality (``None``: any).
        map_location: device for the weights.

    Raises:
        ModelError: missing or damaged files, weights whose sha256 differs from the card,
            weights that do not fit the card's network, or another task / modality.
    """
    weights, _ = _paths(path)
    if not weights.is_file():
        raise ModelError(f"{weights}: no such model file; pass the model.safetensors the "
                         "aggregator wrote (or its folder)")
    card = read_card(weights)
    if task is not None:
        want = look_up_option(task, TASKS, what="task")
        if card.task != want:
            raise ModelError(f"{weights} was trained for {card.task}, not {want}: use a "
                             f"{want} model")
    if modality is not None and card.modality is not None:
        want = look_up_option(modality.upper(), MODALITIES, what="modality")
        if card.modality != want:
            raise ModelError(f"{weights} was trained on {card.modality}, not {want}: use a "
                             f"{want} model, or pass {card.modality} patients")
    blob = weights.read_bytes()
    if card.weights_sha256 is not None and sha256_bytes(blob) != card.weights_sha256:
        raise ModelError(f"{weights}: sha256 differs from {CARD_FILE} (the file was changed "
                         "or damaged after it was written); copy the model folder again")
    from safetensors.torch import load

    try:
        state = load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{weights}: not a readable safetensors file ({type(exc).__name__}); "
                         "it is damaged or truncated") from None
    model = card.network.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{weights}: the weights do not fit the network of {CARD_FILE} "
                         f"({card.network.name}): {first}") from None
    model.to(map_location).eval()
    return model, card
