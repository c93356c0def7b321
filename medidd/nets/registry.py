"""Build an enhancement net by name, from keyword arguments or a :class:`NetConfig`.

Every net maps a low-quality image (N, C, H, W) in ~[0, 1] to an enhanced image of the same
shape (super-resolution inputs are already resampled onto the high-resolution grid).

Example:
    >>> net = build_net("dncnn", width=32, depth=5)
    >>> count_parameters(net)
    28353
    >>> NetConfig(name="dncnn").build().__class__.__name__
    'DnCNN'
    >>> build_net("dncn")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown network 'dncn': did you mean 'dncnn'? valid: redcnn, ...
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import Field, field_validator, model_validator
from torch import nn

from medidd.config import StrictModel
from medidd.lookup import look_up_option
from medidd.nets.dncnn import DnCNN
from medidd.nets.edsr import EDSR
from medidd.nets.redcnn import RedCNN
from medidd.nets.srcnn import SRCNN
from medidd.nets.unet import UNet

NETS: dict[str, type[nn.Module]] = {
    "redcnn": RedCNN,
    "dncnn": DnCNN,
    "srcnn": SRCNN,
    "edsr": EDSR,
    "unet": UNet,
}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``.

    Example:
        >>> count_parameters(nn.Conv2d(1, 4, 3))
        40
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_net(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the net called ``name`` with its constructor's keyword arguments.

    Args:
        name: one of ``redcnn, dncnn, srcnn, edsr, unet`` (typos get a "did you mean").
        **kwargs: arguments of that net's class (e.g. ``width``, ``depth``); an argument the net
            does not take is an error that lists the ones it does.

    Example:
        >>> build_net("edsr", width=8, depth=1).__class__.__name__
        'EDSR'
    """
    key = look_up_option(name, NETS, what="network")
    _check_arguments(key, kwargs)
    return NETS[key](**kwargs)


def _check_arguments(key: str, kwargs: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(NETS[key].__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"network '{key}' does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )


class NetConfig(StrictModel):
    """Which enhancement net to train, and its size. ``None`` keeps the net's own default.

    ``width``/``depth`` mean: DnCNN channels / conv layers; RED-CNN channels / encoder convs;
    SRCNN first-layer channels / 1x1 mapping layers; EDSR channels / residual blocks; UNet
    top-level channels / levels. ``options`` passes any other constructor argument of the net
    (e.g. ``{"num_res_units": 0}`` for the UNet, ``{"res_scale": 0.1}`` for EDSR).

    Example:
        >>> NetConfig(name="unet", width=8, depth=2).kwargs()
        {'width': 8, 'depth': 2}
    """

    name: str = "dncnn"
    width: int | None = None
    depth: int | None = None
    batch_norm: bool | None = None
    residual: bool | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return look_up_option(value, NETS, what="network")

    @field_validator("width", "depth")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _arguments_exist(self) -> NetConfig:
        _check_arguments(self.name, self.kwargs())
        return self

    def kwargs(self) -> dict[str, Any]:
        """The constructor keyword arguments this config sets (``None`` fields left out)."""
        fields = {"width": self.width, "depth": self.depth}
        fields |= {"batch_norm": self.batch_norm, "residual": self.residual}
        return {k: v for k, v in fields.items() if v is not None} | dict(self.options)

    def build(self) -> nn.Module:
        """The net this config describes (freshly initialised from the global RNG)."""
        return build_net(self.name, **self.kwargs())
