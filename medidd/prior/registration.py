"""2D affine registration (SimpleITK) used to align slices before averaging them.

Example:
    >>> import torch
    >>> fixed = torch.zeros(32, 32); fixed[8:24, 10:22] = 1.0
    >>> moving = torch.roll(fixed, shifts=(2, -1), dims=(0, 1))
    >>> out = register_affine(moving, fixed)
    >>> float((out - fixed).abs().mean()) < float((moving - fixed).abs().mean())
    True
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def register_affine(
    moving: torch.Tensor, fixed: torch.Tensor, iterations: int = 100
) -> torch.Tensor:
    """Resample ``moving`` (H, W) onto ``fixed`` (H, W) after a 2D affine registration.

    Correlation metric (robust to intensity offsets), centred initialisation by moments,
    regular-step gradient descent. If the optimiser fails, ``moving`` is returned unchanged and
    the failure is logged (never raised: a prior must not stop a run).
    """
    import SimpleITK as sitk  # imported here: only population priors need it

    f = sitk.GetImageFromArray(fixed.detach().cpu().numpy().astype(np.float32))
    m = sitk.GetImageFromArray(moving.detach().cpu().numpy().astype(np.float32))
    try:
        init = sitk.CenteredTransformInitializer(
            f, m, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsCorrelation()
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=iterations
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
        reg.SetInitialTransform(init, inPlace=False)
        reg.SetNumberOfThreads(1)
        tx = reg.Execute(f, m)
        out = sitk.Resample(m, f, tx, sitk.sitkLinear, 0.0)
    except RuntimeError as exc:  # SimpleITK raises RuntimeError on optimiser failures
        logger.warning("affine registration failed, slice used unregistered: %s", exc)
        return moving.clone()
    return torch.from_numpy(sitk.GetArrayFromImage(out)).to(moving.dtype)


def register_deformable(
    moving: torch.Tensor, fixed: torch.Tensor, iterations: int = 50, mesh: int = 4
) -> torch.Tensor:
    """:func:`register_affine`, then a B-spline (``mesh`` x ``mesh`` control grid) refinement
    (SimpleITK, correlation metric, L-BFGS-B); on an optimiser failure the affine result is
    returned and the failure logged.

    Example:
        >>> import torch
        >>> fixed = torch.zeros(32, 32); fixed[8:24, 10:22] = 1.0
        >>> moving = torch.zeros(32, 32); moving[9:23, 9:23] = 1.0
        >>> out = register_deformable(moving, fixed)
        >>> float((out - fixed).abs().mean()) < float((moving - fixed).abs().mean())
        True
    """
    import SimpleITK as sitk

    affine = register_affine(moving, fixed, iterations)
    f = sitk.GetImageFromArray(fixed.detach().cpu().numpy().astype(np.float32))
    m = sitk.GetImageFromArray(affine.detach().cpu().numpy().astype(np.float32))
    try:
        tx = sitk.BSplineTransformInitializer(f, [mesh, mesh])
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsCorrelation()
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5,
                                 numberOfIterations=iterations)
        reg.SetInitialTransform(tx, inPlace=True)
        reg.SetNumberOfThreads(1)
        reg.Execute(f, m)
        out = sitk.Resample(m, f, tx, sitk.sitkLinear, 0.0)
    except RuntimeError as exc:
        logger.warning("deformable registration failed, affine result used: %s", exc)
        return affine
    return torch.from_numpy(sitk.GetArrayFromImage(out)).to(moving.dtype)
