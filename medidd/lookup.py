"""String-option lookup with "did you mean" suggestions.

Configs travel between hospitals, so a typo must fail early and say what was meant:

Example:
    >>> look_up_option("denoise", ("denoise", "sr"), what="task")
    'denoise'
    >>> look_up_option("denoize", ("denoise", "sr"), what="task")
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'denoize': did you mean 'denoise'? valid: denoise, sr
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def look_up_option(value: str, valid: Iterable[str], *, what: str = "option") -> str:
    """Return ``value`` if it is one of ``valid``; otherwise raise a ``ValueError`` that suggests
    the closest valid spelling and lists every valid choice."""
    choices = list(valid)
    if value in choices:
        return value
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return lowered[value.lower()]
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    hint = f" did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown {what} '{value}':{hint} valid: {', '.join(choices)}")
