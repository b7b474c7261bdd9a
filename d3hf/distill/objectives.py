"""The two D3 objective terms: trajectory matching (MTT) and per-class MMD."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..nn.networks import unflatten

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def _inner_loss(student: nn.Module, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = functional_call(student, unflatten(student, theta), (images,))
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, labels)


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def compiled_inner_step(student: nn.Module) -> StepFn:
    """One differentiable SGD step of ``student``, ``(theta, images, labels, step_size) ->
    theta - step_size * grad``, compiled with ``torch.compile``.

    The gradient is taken with ``torch.func.grad`` inside the compiled function, so the graph
    compiled is first-order (the step, gradient included) and the outer backward pass is its
    ordinary backward: ``torch.compile`` does not support the double backward that
    ``autograd.grad(create_graph=True)`` would need. The same loss and gradients as the eager
    step, to float tolerance (tested). On CPU it was measured slower (1.27 against 1.18 s per
    10-step unroll of ConvNet-3 width 32 at 28x28 on a 2-thread AMD EPYC, plus about 40 s of
    compilation), so it is off by default; it is meant for GPUs.
    """
    def step(theta, images, labels, step_size):
        return theta - step_size * torch.func.grad(_inner_loss, argnums=1)(student, theta, images, labels)

    return torch.compile(step, dynamic=False)


def unroll_student(
    student: nn.Module,
    theta0: torch.Tensor,
    make_batch: BatchFn,
    step_size: torch.Tensor,
    syn_steps: int,
    checkpoint_steps: bool = False,
    batch_inputs: Sequence[torch.Tensor] = (),
    step_fn: StepFn | None = None,
) -> torch.Tensor:
    """``syn_steps`` differentiable SGD steps of ``student`` from flat parameters ``theta0``.

    ``make_batch(step)`` returns ``(images, labels)`` for a step. With ``checkpoint_steps``
    only the student's parameters of each step are kept and every step is recomputed in the
    backward pass, so memory no longer grows with the step's graph; then ``make_batch`` must
    be deterministic in ``step`` and ``batch_inputs`` must list the tensors it depends on
    differentiably (priors, decoder weights): gradients reach exactly those. ``step_fn``
    (e.g. ``compiled_inner_step(student)``) replaces the eager step; not with ``checkpoint_steps``.
    """
    if checkpoint_steps:
        if not batch_inputs:
            raise ValueError("checkpoint_steps needs batch_inputs: the tensors make_batch differentiates through")
        return _RecomputedUnroll.apply(theta0, step_size, (student, make_batch, syn_steps), *batch_inputs)
    theta = theta0 if theta0.requires_grad else theta0.requires_grad_(True)
    for step in range(syn_steps):
        images, labels = make_batch(step)
        if step_fn is not None:
            theta = step_fn(theta, images, labels, step_size)
            continue
        (grad,) = torch.autograd.grad(_inner_loss(student, theta, images, labels), theta, create_graph=True)
        theta = theta - step_size * grad
    return theta


def student_endpoint(student: nn.Module, theta0: torch.Tensor, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     step_size: torch.Tensor) -> torch.Tensor:
    """Where SGD steps of ``student`` from ``theta0``, one per ``(images, labels)`` batch, end: the
    unroll's forward pass without a graph to anything (reference points, not training)."""
    theta = theta0.detach()
    for images, labels in batches:
        with torch.enable_grad():
            theta = theta.requires_grad_(True)
            (grad,) = torch.autograd.grad(_inner_loss(student, theta, images.detach(), labels), theta)
        theta = (theta - step_size.detach() * grad).detach()
    return theta


class _RecomputedUnroll(torch.autograd.Function):
    """The unroll as one autograd node that stores theta_0..theta_{N-1} and nothing else.

    With theta_{k+1} = theta_k - a g_k and v = dL/dtheta_{k+1}, the backward pass recomputes
    step k and applies dL/dtheta_k = v - a H_k v, dL/da -= <g_k, v> and
    dL/dphi -= a d<g_k, v>/dphi. torch.utils.checkpoint was measured not to bound memory here:
    the double-backward graph built by ``autograd.grad(create_graph=True)`` escapes its hooks.
    """

    @staticmethod
    def forward(ctx, theta0, step_size, run, *batch_inputs):
        student, make_batch, syn_steps = run
        device_type = theta0.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        thetas = [theta0.detach()]
        for step in range(syn_steps):
            images, labels = make_batch(step)  # forward runs without grad: no graph to the batch inputs
            with torch.enable_grad():
                theta = thetas[-1].detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(_inner_loss(student, theta, images, labels), theta)
            thetas.append(thetas[-1] - step_size.detach() * grad)
        ctx.run = run
        ctx.save_for_backward(step_size, *thetas[:-1])
        ctx.num_inputs = len(batch_inputs)
        ctx.batch_inputs = batch_inputs  # leaves/params of the caller; saved by reference
        return thetas[-1]

    @staticmethod
    def backward(ctx, grad_out):
        student, make_batch, _ = ctx.run
        step_size, *thetas = ctx.saved_tensors
        inputs = ctx.batch_inputs
        wanted = [i for i, x in enumerate(inputs) if ctx.needs_input_grad[3 + i]]
        input_grads = [None] * len(inputs)
        step_grad = torch.zeros_like(step_size)
        a = step_size.detach()
        v = grad_out
        device_type, enabled, dtype = ctx.autocast
        for step in reversed(range(len(thetas))):
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                theta = thetas[step].detach().requires_grad_(True)
                images, labels = make_batch(step)
                loss = _inner_loss(student, theta, images, labels)
                (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
                dot = (grad * v).sum()
                grads = torch.autograd.grad(dot, [theta] + [inputs[i] for i in wanted], allow_unused=True)
            step_grad = step_grad - dot.detach()
            for i, g in zip(wanted, grads[1:]):
                if g is not None:
                    input_grads[i] = -a * g if input_grads[i] is None else input_grads[i] - a * g
            v = v - a * grads[0]
        return (v if ctx.needs_input_grad[0] else None, step_grad if ctx.needs_input_grad[1] else None, None,
                *input_grads)


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
