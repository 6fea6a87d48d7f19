"""Learning-rate schedules shared by every training loop in diffinv.

Kept apart from any one loop so that the DIFF-token encoder (`diff_encoder`) and the shapes world's
stages (`shapes.loops`) train on the same schedule without either importing the other.
"""

from __future__ import annotations

import math

import torch


def cosine_lr(optimizer: torch.optim.Optimizer, step: int, total: int, base: float, warmup: int = 100) -> None:
    """Set every parameter group's learning rate for `step` of `total`: a linear warm-up over `warmup`
    steps, then a cosine decay from `base`, never below 2 % of `base` (the last steps still learn)."""
    scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    for group in optimizer.param_groups:
        group["lr"] = base * max(scale, 0.02)
