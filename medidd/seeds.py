"""One way to derive seeds: :func:`derive` ``(seed, *tags) -> int``.

Every random draw in MediDD that is not the user's seed itself comes from ``derive``: a
patient's distillation seed (``derive(run_seed, patient_key)``), the LQ partner of image ``i``
in draw ``d`` (``derive(seed, d, i)``), a baseline's initialisation (``derive(seed, "init")``).
It hashes the decimal seed and the tags' ``str`` with SHA-256, so it is stable across runs,
machines, Python versions and patient order, and distinct tags give independent streams. The
result fits in 31 bits, so it seeds ``torch``, ``numpy`` and ``random`` alike.

Never write seed arithmetic such as ``seed * 1000 + 17``: two such formulas collide
(``seed=1, i=1000`` and ``seed=2, i=0``) and nobody can tell which draw a number belongs to.

Example:
    >>> derive(0, "p-00ab") == derive(0, "p-00ab") != derive(1, "p-00ab")
    True
    >>> derive(0, 1, 2) != derive(0, 12) and derive(0, "lq") != derive(0, "init")
    True
    >>> 0 <= derive(2**40, "x") < 2**31
    True
"""

from __future__ import annotations

import hashlib
import operator

__all__ = ["derive"]


def derive(seed: int, *tags: object) -> int:
    """A 31-bit seed for the stream named by ``tags`` under ``seed`` (see the module doc).

    Args:
        seed: the run's (or a parent stream's) integer seed.
        tags: names and indices of the stream (``str()`` of each is hashed); ``1`` and ``"1"``
            name the same stream.

    Example:
        >>> derive(0, "p-00ab")  # the per-patient seed of distillation (stable forever)
        649669379
    """
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    text = ":".join([str(operator.index(seed)), *(str(t) for t in tags)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") >> 1
