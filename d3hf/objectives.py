"""The two D3 objective terms: trajectory matching (MTT) and per-class MMD."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .networks import unflatten


def unroll_student(
    student: nn.Module,
    theta0: torch.Tensor,
    make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    step_size: torch.Tensor,
    syn_steps: int,
    checkpoint_steps: bool = False,
) -> torch.Tensor:
    """``syn_steps`` differentiable SGD steps of ``student`` from flat parameters ``theta0``.

    ``make_batch(step)`` returns ``(images, labels)`` for a step and must be deterministic in
    ``step`` (it is called again during the backward pass when ``checkpoint_steps`` is on,
    which keeps only each step's parameters instead of its whole graph).
    """

    def one_step(theta: torch.Tensor, step: int) -> torch.Tensor:
        images, labels = make_batch(step)
        logits = functional_call(student, unflatten(student, theta), (images,))
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        loss = F.cross_entropy(logits, labels)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        return theta - step_size * grad

    theta = theta0.requires_grad_(True) if not theta0.requires_grad else theta0
    for step in range(syn_steps):
        if checkpoint_steps:
            theta = checkpoint(one_step, theta, step, use_reentrant=False)
        else:
            theta = one_step(theta, step)
    return theta


def trajectory_matching_loss(theta_n: torch.Tensor, theta_start: torch.Tensor, theta_target: torch.Tensor) -> torch.Tensor:
    """||theta_N - target||^2 / ||theta_0 - target||^2."""
    return (theta_n - theta_target).pow(2).sum() / (theta_start - theta_target).pow(2).sum().clamp_min(1e-12)


def rbf_kernel_sum(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float], scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """sum_s exp(-||x - y||^2 / (2 s^2 scale))."""
    d = torch.cdist(x, y).pow(2)
    return sum(torch.exp(-d / (2.0 * s * s * scale)) for s in bandwidths)


def median_sq_distance(x: torch.Tensor) -> torch.Tensor:
    """Median squared pairwise distance within ``x`` (detached): a data-driven kernel scale."""
    d = torch.cdist(x.detach(), x.detach()).pow(2)
    off = d[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    return off.median().clamp_min(1e-12)


def mmd2_unbiased(
    x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = (1, 2, 4, 8, 16), scale: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Unbiased MMD^2 between samples ``x`` (n, d) and ``y`` (m, d), n, m >= 2, with the kernel
    sum_s exp(-||a - b||^2 / (2 s^2 scale)).

    Also returns the mean kernel values (divided by the number of bandwidths, so in [0, 1])
    within x, within y and across, to show saturation (all near 0 or all near 1).
    """
    n, m = x.shape[0], y.shape[0]
    kxx = rbf_kernel_sum(x, x, bandwidths, scale)
    kyy = rbf_kernel_sum(y, y, bandwidths, scale)
    kxy = rbf_kernel_sum(x, y, bandwidths, scale)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    sxy = kxy.mean()
    k = float(len(bandwidths))
    stats = {"kxx": float(sxx.detach()) / k, "kyy": float(syy.detach()) / k, "kxy": float(sxy.detach()) / k}
    return sxx + syy - 2 * sxy, stats
