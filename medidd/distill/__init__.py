"""Distillation methods behind one interface (:mod:`medidd.distill.base`), chosen by name.

Importing this package registers every method: the SPG family (:mod:`medidd.distill.spg_gm`)
and the baselines (:mod:`medidd.distill.baselines`).
"""

from medidd.distill.base import (
    DistillContext,
    Distilled,
    Method,
    Prior,
    available_methods,
    method_factory,
    register_method,
)
from medidd.distill.config import DistillConfig

__all__ = [
    "DistillConfig",
    "DistillContext",
    "Distilled",
    "Method",
    "Prior",
    "available_methods",
    "method_factory",
    "register_method",
]


def _register_all() -> None:
    import importlib

    for mod in ("medidd.distill.baselines", "medidd.distill.spg_gm"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a module still being written
            if exc.name != mod:
                raise


_register_all()
