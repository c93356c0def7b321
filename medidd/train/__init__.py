"""Downstream training and evaluation of enhancement nets (PSNR/SSIM on held-out real slices).

Example:
    >>> import torch
    >>> hq = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> cfg = TrainConfig(net={"name": "dncnn", "width": 4, "depth": 3}, steps=2, patch_size=12)
    >>> result = train_enhancer(hq, hq.clone(), cfg)
    >>> evaluate_enhancer(result.model, hq, hq).n
    2
"""

from medidd.train.evaluate import EvalResult, enhance, evaluate_enhancer
from medidd.train.losses import LOSSES, build_loss
from medidd.train.metrics import psnr, ssim
from medidd.train.score import (
    Scored,
    gain_retained,
    heldout_lq,
    score_model,
    stack_images,
    train_and_score,
)
from medidd.train.step import STEP_RULES, StepOutput, StepRule, build_step_rule
from medidd.train.trainer import TrainConfig, TrainResult, train_enhancer

__all__ = [
    "LOSSES",
    "STEP_RULES",
    "EvalResult",
    "Scored",
    "StepOutput",
    "StepRule",
    "TrainConfig",
    "TrainResult",
    "build_loss",
    "build_step_rule",
    "enhance",
    "evaluate_enhancer",
    "gain_retained",
    "heldout_lq",
    "psnr",
    "score_model",
    "ssim",
    "stack_images",
    "train_and_score",
    "train_enhancer",
]

from medidd.train import gradprom as _gradprom  # noqa: F401  (registers sum, gradprom)
