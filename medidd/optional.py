"""Optional heavy dependencies fail only when used, and name the extra that provides them.

Example:
    >>> math = optional_import("math", extra="dev")
    >>> math.sqrt(4.0)
    2.0
"""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` saying ``pip install medidd[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"'{module}' is needed for this feature but is not installed: "
            f"pip install 'medidd[{extra}]'"
        ) from exc
