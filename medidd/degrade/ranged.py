"""Training over a range of one degradation parameter (a denoiser that is not tied to one dose).

A downstream denoiser is most sensitive to the noise level it is trained at (measured with the
texture probe, docs/benchmarks/texture_probe.md): trained at exactly the site's 25 % dose, it
makes a patient of another body size or scanner, whose noise level differs, *worse* than the
low-dose input. :class:`DegradationRange` (``train.lq_range`` in the aggregator's config) draws
every training image's LQ at one of ``levels`` values of ``field`` spaced log-uniformly between
``low`` and ``high``, so the model learns the mapping over the range. The value of image ``i``
depends only on its own seed, so the LQ does not depend on batching.

Example:
    >>> import torch
    >>> from medidd.degrade.spec import DegradationSpec, build_degradation
    >>> base = build_degradation(DegradationSpec(kind="gaussian", noise_sigma=0.05))
    >>> op = RangedDegradation(base, DegradationRange(field="noise_sigma", low=0.01, high=0.1))
    >>> [round(v, 4) for v in op.values][:3]
    [0.01, 0.0139, 0.0193]
    >>> hq = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> from medidd.degrade._random import PerImageSeeds
    >>> both = op(hq, PerImageSeeds((5, 6, 7)))
    >>> bool(torch.equal(both[1:2], op(hq[1:2], 6)))
    True
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from medidd.config import StrictModel
from medidd.degrade._random import PerImageSeeds, Seed
from medidd.degrade.draw import Degrade
from medidd.degrade.spec import Degradation
from medidd.seeds import derive

#: the parameters a range can vary, and the degradation kinds each one applies to
RANGE_FIELDS: dict[str, tuple[str, ...]] = {
    "dose": ("ct_lowdose",),
    "noise_sigma": ("gaussian", "rician", "kspace_sr", "ct_sr"),
}


def range_problem(field: str, kind: str) -> str | None:
    """Why ``train.lq_range`` over ``field`` cannot train a ``kind`` degradation, or None.

    Checked when the run's config is loaded (the degradation it names) and again when the
    packages' degradation is known, so a wrong field fails before any work.

    Example:
        >>> range_problem("dose", "ct_lowdose") is None
        True
        >>> range_problem("dose", "kspace_sr").endswith("set lq_range.field to 'noise_sigma'")
        True
    """
    if kind in RANGE_FIELDS.get(field, ()):
        return None
    fits = " or ".join(f"'{f}'" for f, k in RANGE_FIELDS.items() if kind in k)
    fix = f"set lq_range.field to {fits}" if fits else "remove train.lq_range"
    return (f"train.lq_range varies '{field}', which a '{kind}' degradation does not use; "
            f"for {kind} {fix}")


class DegradationRange(StrictModel):
    """Train at ``levels`` values of ``field`` from ``low`` to ``high`` (log-spaced, both ends
    included; with ``relative``, factors of the package's value; values above 1 are clamped to
    1) instead of the package's single value.

    Example:
        >>> DegradationRange(field="dose", low=0.1, high=0.5).levels
        8
        >>> from medidd.degrade.spec import DegradationSpec, build_degradation
        >>> base = build_degradation(DegradationSpec(kind="ct_lowdose", dose=0.25), (-1e3, 1e3))
        >>> rel = DegradationRange(field="dose", low=0.5, high=2.0, levels=3, relative=True)
        >>> [round(v, 3) for v in RangedDegradation(base, rel).values]
        [0.125, 0.25, 0.5]
        >>> DegradationRange(field="dose", low=0.5, high=0.1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: ...low must be below high...
    """

    field: Literal["dose", "noise_sigma"]
    low: float = Field(gt=0.0)
    high: float = Field(gt=0.0)
    levels: int = Field(8, ge=2, le=64)
    relative: bool = Field(False, description="low and high are factors of the package's "
                           "value (0.5 and 2 around a 25 % dose: 12.5 % to 50 %)")

    @model_validator(mode="after")
    def _ordered(self) -> DegradationRange:
        if self.low >= self.high:
            raise ValueError(f"lq_range: low must be below high (got {self.low} and {self.high})")
        return self

    def values(self) -> list[float]:
        """The ``levels`` values, log-spaced from ``low`` to ``high``."""
        a, b = math.log(self.low), math.log(self.high)
        return [math.exp(a + (b - a) * i / (self.levels - 1)) for i in range(self.levels)]


class RangedDegradation(Degradation):
    """``base`` with ``rng.field`` drawn per image from ``rng``'s levels (see the module doc).

    The level of an image is ``derive(seed, "level") % levels``; its noise is then exactly what
    ``base`` at that level draws from the same seed.
    """

    def __init__(self, base: Degradation, rng: DegradationRange) -> None:
        super().__init__(base.spec, base.window)
        problem = range_problem(rng.field, base.spec.kind)
        if problem:
            raise ValueError(problem)
        self.range = rng
        centre = float(getattr(self.spec, rng.field))
        if rng.relative and centre <= 0:
            raise ValueError(f"train.lq_range is relative to the package's {rng.field}, which "
                             f"is {centre}; give absolute low and high (relative: false)")
        scale = centre if rng.relative else 1.0
        self.values = [min(v * scale, 1.0) for v in rng.values()]
        self.ops = torch.nn.ModuleList(
            Degradation(self.spec.model_copy(update={rng.field: v}), self.window)
            for v in self.values
        )

    def level(self, seed: int) -> int:
        """The level index image seed ``seed`` trains at."""
        return derive(seed, "level") % len(self.values)

    def extra_repr(self) -> str:
        r = self.range
        return f"{super().extra_repr()}, {r.field} in [{r.low:g}, {r.high:g}]"

    def forward(self, hq: torch.Tensor, seed: Seed) -> torch.Tensor:
        if isinstance(seed, torch.Generator):
            raise TypeError("a ranged degradation needs integer seeds (one per image)")
        seeds = tuple(seed) if isinstance(seed, PerImageSeeds) else (int(seed),) * hq.shape[0]
        levels = [self.level(s) for s in seeds]
        out = torch.empty_like(hq)
        for lv in sorted(set(levels)):
            idx = [i for i, x in enumerate(levels) if x == lv]
            sub = PerImageSeeds(tuple(seeds[i] for i in idx))
            if not isinstance(seed, PerImageSeeds):
                out[idx] = self.ops[lv](hq[idx], int(seed))
            else:
                out[idx] = self.ops[lv](hq[idx], sub)
        return out


def ranged(degrade: Degrade | None, rng: DegradationRange | None) -> Degrade | None:
    """``degrade`` varied over ``rng`` when both are given and ``degrade`` is a
    :class:`Degradation`; otherwise ``degrade`` unchanged (fixed pairs, custom callables).

    Example:
        >>> ranged(None, DegradationRange(field="dose", low=0.1, high=0.5)) is None
        True
    """
    if rng is None or not isinstance(degrade, Degradation):
        return degrade
    if isinstance(degrade, RangedDegradation):
        return degrade
    return RangedDegradation(degrade, rng)
