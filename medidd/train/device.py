"""Device choice and scoped determinism for training and evaluation.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from medidd.lookup import look_up_option

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error.

    Example:
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
    """
    if isinstance(name, torch.device):
        return name
    if name.startswith("cuda:") and name[5:].isdigit():
        if not torch.cuda.is_available():
            raise RuntimeError(f"device '{name}' was asked for but no CUDA GPU is visible; "
                               "use 'auto'")
        return torch.device(name)
    key = look_up_option(name, DEVICES, what="device")
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is visible; use 'auto'")
    return torch.device(key)


@contextlib.contextmanager
def scoped_determinism(enabled: bool = True) -> Iterator[None]:
    """Turn on deterministic algorithms (warn-only) and cuDNN determinism inside the block, and
    restore the previous global settings afterwards, whatever happens.

    Example:
        >>> before = torch.are_deterministic_algorithms_enabled()
        >>> with scoped_determinism():
        ...     torch.are_deterministic_algorithms_enabled()
        True
        >>> torch.are_deterministic_algorithms_enabled() == before
        True
    """
    if not enabled:
        yield
        return
    algos = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det = torch.backends.cudnn.deterministic
    cudnn_bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(algos, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_det
        torch.backends.cudnn.benchmark = cudnn_bench
